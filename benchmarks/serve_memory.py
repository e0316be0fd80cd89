"""Peak memory of the served CNN's server under large and concurrent requests, and whether it still answers.

Builds the CNN at params.yaml's size (`train_cnn.model`, `augment.eval_size`) with freshly initialised
weights (memory does not depend on what the weights learned), logs it as the served pyfunc model in a
temp SQLite store, and for each load starts its own `mlflow models serve --env-manager local` on
127.0.0.1, sends one small warm-up request, the load, then one small request to check it still answers:

- `rows at the cap`: one request of `MAX_PHOTOS` rows, each a 1x1 PNG (base64 in `dataframe_records`);
- `64 MiB of photos`: one request of 63 noise PNGs of 1 MiB each, just under `MAX_REQUEST_BYTES`;
- `20 x 1 MiB at once`: 20 concurrent requests, each one noise PNG in a 1 MiB body;
- `64 MiB of 1x1 PNGs`: one 64 MiB body of 1x1 PNG rows (~630,000), refused as over the row cap.

Memory is the resident set of one process of the server, the largest (the uvicorn worker that holds
the model), sampled by psutil every 5 ms from the server's start: `start-up peak` until it has
answered the warm-up, `idle` just after it, `peak during the load` from the load's first request to
its last answer; `kernel peak` is the maximum resident set size the kernel recorded for any of the
server's processes over its whole life (`os.wait4`'s `ru_maxrss`, read when it exits after the load),
which a 5 ms sample can miss.

    python benchmarks/serve_memory.py
    PYTHONPATH=OLD_CHECKOUT python benchmarks/serve_memory.py --baseline   # the code of another checkout

`--baseline` leaves out the last load: code that decodes every row before it refuses any would hold
~630,000 decoded photos (~31 GB at 128 px).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import torch
import yaml
from PIL import Image

import primer.limits

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_PHOTOS = getattr(primer.limits, "MAX_PHOTOS", 1_000)  # a checkout from before the row cap: the same rows
MiB = 2**20
# Starts the server and waits for it, printing its pid, then the largest resident set (KiB) the kernel
# recorded for it or any process it reaped. A process started by this one, which imported torch and
# holds the loads, would carry this one's resident set as its own maximum from its fork until its exec.
LAUNCHER = """import os, subprocess, sys
server = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(server.pid, flush=True)
print(os.wait4(server.pid, 0)[2].ru_maxrss, flush=True)
"""


def png(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def noise_png(side: int, seed: int) -> str:
    """A PNG of random pixels: incompressible, so its file is as big as its pixels (side * side * 3 bytes)."""
    return png(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def body(images: list[str]) -> bytes:
    return json.dumps({"dataframe_records": [{"image": i} for i in images]}).encode()


def loads(baseline: bool) -> dict[str, list[bytes]]:
    tiny = png(np.zeros((1, 1, 3), np.uint8))
    one_mib_body = noise_png(510, 99)  # 780 KB of PNG: 1 MiB of JSON once base64-encoded
    tiny_rows = (64 * MiB) // len(json.dumps({"image": tiny}) + ", ")
    out = {f"{MAX_PHOTOS:,} rows at the cap": [body([tiny] * MAX_PHOTOS)],
           "64 MiB of photos (63 x 1 MiB)": [body([noise_png(591, seed) for seed in range(63)])],
           "20 x 1 MiB at once": [body([one_mib_body])] * 20}
    if not baseline:
        out[f"64 MiB of 1x1 PNGs ({tiny_rows:,} rows)"] = [body([tiny] * tiny_rows)]
    return out


def log_model(folder: Path) -> str:
    from primer.models.cnn import build_cnn
    from primer.serving.served_models import PhotoClassifier, log_served_model

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    args, aug = params["train_cnn"]["model"], params["augment"]
    torch.manual_seed(0)
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"],
                "history": []}, folder / "cnn.pt")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench", artifact_location=(folder / "art").as_uri()))
    config = {"eval_size": aug["eval_size"], "draft_oversample": aug["draft_oversample"],
              "max_image_pixels": params["verify"]["max_image_pixels"]}
    example = pd.DataFrame({"image": [base64.b64decode(png(np.zeros((8, 8, 3), np.uint8)))]})
    with mlflow.start_run():
        return log_served_model(folder / "cnn.pt", PhotoClassifier(), example, config).model_uri


def post(url: str, data: bytes, timeout: float = 600) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


class Server:
    """`mlflow models serve` on 127.0.0.1, the resident set of each of its processes sampled every 5 ms
    from its start; `peaks[phase]` is the largest any one of them reached while `phase` was set."""

    def __init__(self, model_uri: str, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        self.phase, self.peaks = "start-up", {}
        self.launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(BIN / "mlflow"), "models", "serve", "-m",
                                          model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                         cwd=folder, env=env, stdout=subprocess.PIPE, text=True)
        self.process = psutil.Process(int(self.launcher.stdout.readline()))  # the `mlflow models serve` CLI
        self.url = f"http://127.0.0.1:{port}/invocations"
        threading.Thread(target=self.sample, daemon=True).start()
        deadline = time.monotonic() + 180
        while not self.answers_ping(port):
            if time.monotonic() > deadline or self.launcher.poll() is not None:
                raise SystemExit("mlflow models serve did not start within 180 s")
            time.sleep(0.5)
        tree = self.process.children(recursive=True)
        self.worker = max(tree, key=lambda p: p.memory_info().rss)  # the process that loaded the model

    @staticmethod
    def answers_ping(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return True
        except OSError:
            return False

    def rss(self) -> int:
        return self.worker.memory_info().rss

    def sample(self) -> None:
        while True:
            try:
                tree = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), process.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.005)

    def stop(self) -> int:
        """Stop it; the kernel's peak resident set over its processes' lives, in bytes."""
        self.phase = "stop"
        self.worker.send_signal(signal.SIGTERM)  # the CLI reaps its worker, so wait4 below counts both
        try:
            self.worker.wait(60)
        except psutil.TimeoutExpired:
            self.worker.kill()
        self.process.send_signal(signal.SIGTERM)
        kernel_peak = int(self.launcher.stdout.readline()) * 1024  # KiB on Linux
        self.launcher.wait(60)
        return kernel_peak


def measure(model_uri: str, folder: Path, requests: list[bytes], small: bytes) -> dict:
    server = Server(model_uri, folder)
    try:
        server.phase = "warm-up"
        assert post(server.url, small) == 200
        time.sleep(0.1)
        idle, server.phase = server.rss(), "load"
        start = time.perf_counter()
        with ThreadPoolExecutor(len(requests)) as pool:
            statuses = list(pool.map(lambda data: post(server.url, data), requests))
        seconds = time.perf_counter() - start
        server.phase = "after"
        after = post(server.url, small)
    finally:
        kernel_peak = server.stop()
    return {"idle": idle, "start": max(server.peaks.get("start-up", 0), server.peaks.get("warm-up", 0)),
            "sampled": server.peaks["load"], "kernel": kernel_peak, "statuses": statuses, "seconds": seconds,
            "after": after, "body": sum(map(len, requests)) / len(requests), "phases": dict(server.peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="leave out the load old code cannot survive")
    args = parser.parse_args()
    import primer

    print(f"primer from {Path(primer.__file__).parent}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    small = body([png(np.zeros((4, 4, 3), np.uint8))])
    with tempfile.TemporaryDirectory() as tmp:
        model_uri = log_model(Path(tmp))
        rows = [(name, measure(model_uri, Path(tmp), requests, small))
                for name, requests in loads(args.baseline).items()]
    print("\n| load | body | answers | time | start-up peak | idle | peak during the load | kernel peak "
          "| answers after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        statuses = ", ".join(f"{n} x {s}" if n > 1 else str(s) for s, n in
                             sorted({s: r["statuses"].count(s) for s in r["statuses"]}.items()))
        print(f"| {name} | {r['body'] / MiB:.1f} MiB | {statuses} | {r['seconds']:.1f} s | {r['start'] / MiB:,.0f} MiB "
              f"| {r['idle'] / MiB:,.0f} MiB | {r['sampled'] / MiB:,.0f} MiB | {r['kernel'] / MiB:,.0f} MiB "
              f"| {r['after']} |")
    print("\nThe largest process's peak in each phase, MiB:")
    for name, r in rows:
        print(f"  {name}: " + ", ".join(f"{phase} {peak / MiB:,.0f}" for phase, peak in r["phases"].items()))


if __name__ == "__main__":
    main()
