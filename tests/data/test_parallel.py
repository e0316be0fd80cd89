"""parallel_map: results in order on real worker processes; a worker that dies (SIGKILL, as the
out-of-memory killer sends) or an initializer that fails is one sentence within seconds, not a hang.

Each map runs in its own Python process and process group, bounded in time: a map that hangs fails the
test, and the group (the map's workers too) is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from primer.data.parallel import parallel_map

MAP_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from primer.data.parallel import parallel_map
    from primer.errors import PrimerError

    def double_or_die(i):
        if i == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does to a worker
        return 2 * i

    def refuse(what):
        raise PrimerError(f"{what} cannot be opened.")

    initializer = refuse if sys.argv[2] == "refuse" else None
    try:
        out = list(parallel_map(double_or_die, list(range(400)), 2, "demo", initializer, ("the job file",)))
    except PrimerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    assert out == [2 * i for i in range(400)], out
    print("done")
""")


def run_map(tmp_path, kill_at: int, initializer: str = "none", timeout: float = 30):
    """(exit status, stdout, stderr, seconds) of MAP_SCRIPT; exit status None when it ran past `timeout`."""
    script = tmp_path / "map.py"
    script.write_text(MAP_SCRIPT)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), str(kill_at), initializer], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every worker it left
        out, err = proc.communicate()
        return None, out, err, time.monotonic() - started
    return proc.returncode, out, err, time.monotonic() - started


def test_results_come_back_in_order_from_two_worker_processes():
    assert list(parallel_map(abs, [-3, 1, -2, 5, -8, 0, 7], 2, "demo")) == [3, 1, 2, 5, 8, 0, 7]


def test_worker_killed_mid_map_is_one_sentence_naming_the_map_and_the_key_within_seconds(tmp_path):
    status, out, err, seconds = run_map(tmp_path, kill_at=150)
    assert status == 1, f"exit {status} after {seconds:.0f} s: {out}{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: a worker process died while running demo, with "), lines[0]
    assert "of 400 img done (killed, most often by the out-of-memory killer, or crashed)" in lines[0], lines[0]
    assert lines[0].endswith("; set num_workers below 2 or free memory, then rerun."), lines[0]


def test_map_without_a_death_returns_every_result(tmp_path):
    status, out, err, _ = run_map(tmp_path, kill_at=-1)
    assert status == 0 and out.strip() == "done", out + err


def test_initializer_error_reaches_the_caller_as_itself(tmp_path):
    status, out, err, seconds = run_map(tmp_path, kill_at=-1, initializer="refuse")
    assert status == 1, f"exit {status} after {seconds:.0f} s: {out}{err[-2000:]}"
    assert err.strip() == "error: the job file cannot be opened.", err
