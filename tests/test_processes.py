"""primer/processes.py: whether the process that left something behind still runs, through psutil."""

from __future__ import annotations

import os
import subprocess
import sys

from primer.processes import parent_pid, process_alive, process_start


def test_a_process_that_ended_is_not_alive_and_a_reused_pid_is_not_the_same_process():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(done.stdout)
    assert not process_alive(gone) and process_start(gone) == "" and parent_pid(gone) is None
    me, started = os.getpid(), process_start(os.getpid())
    assert started and process_alive(me) and process_alive(me, started)
    assert not process_alive(me, f"{float(started) - 5:.2f}")  # another process that had this pid before
    assert parent_pid(me) == os.getppid()
