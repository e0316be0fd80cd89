"""Serving latency and `primer classify` time, on this machine, with models of the default size.

Builds the CNN and the Transformer at params.yaml's sizes (the Transformer's vocabularies from the
real fra-eng pairs), with freshly initialised weights: latency does not depend on what the weights
learned, except that an untrained Transformer writes every sentence to its full `num_steps`, the
slowest case. Logs them as the served pyfunc models, registers them as champions in a temp SQLite
store, starts `mlflow models serve -m models:/NAME@champion --env-manager local` on 127.0.0.1, and
times `--requests` POSTs of one real photo and one sentence after a warm-up. Then times `primer
classify` over `--photos` real photos, reading models/cnn.pt from a folder laid out like the repo.

    python benchmarks/serving_latency.py [--requests 30] [--photos 200]

Needs ../shared/datasets (the 2,002 cat/dog photos and fra-eng.zip).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_models(folder: Path, params: dict) -> None:
    from primer.models.cnn import build_cnn
    from primer.models.transformer import Seq2SeqTransformer
    from primer.text.sentence_pairs import BOS, EOS, PAD, build_vocab, read_pairs

    torch.manual_seed(0)
    cnn_args = params["train_cnn"]["model"]
    (folder / "models").mkdir(parents=True)
    torch.save({"model": build_cnn(**cnn_args).state_dict(), "model_args": cnn_args, "classes": ["Cat", "Dog"],
                "history": []}, folder / "models/cnn.pt")
    with zipfile.ZipFile(SHARED / "d2l/fra-eng.zip") as zf:
        (folder / "fra.txt").write_bytes(zf.read("fra-eng/fra.txt"))
    p = params["train_transformer"]
    pairs = read_pairs(folder / "fra.txt").pairs
    src, tgt = build_vocab([s for s, _ in pairs], p["min_freq"]), build_vocab([t for _, t in pairs], p["min_freq"])
    args = {"src_vocab_size": len(src), "tgt_vocab_size": len(tgt), **p["model"], "pad_id": tgt[PAD],
            "bos_id": tgt[BOS], "eos_id": tgt[EOS]}
    torch.save({"model": Seq2SeqTransformer(**args).state_dict(), "model_args": args, "src_vocab": src.idx_to_token,
                "tgt_vocab": tgt.idx_to_token, "history": []}, folder / "models/transformer.pt")


def register_champions(folder: Path, params: dict, photo: Path) -> str:
    from primer.serving.registry import register
    from primer.serving.served_models import PhotoClassifier, Translator, log_served_model

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench", artifact_location=(folder / "art").as_uri()))
    aug, p = params["augment"], params["train_transformer"]
    with mlflow.start_run() as cnn_run:
        log_served_model(folder / "models/cnn.pt", PhotoClassifier(), pd.DataFrame({"image": [photo.read_bytes()]}),
                         {"eval_size": aug["eval_size"], "draft_oversample": aug["draft_oversample"]})
    with mlflow.start_run() as tf_run:
        log_served_model(folder / "models/transformer.pt", Translator(), pd.DataFrame({"sentence": ["i'm home ."]}),
                         {"num_steps": p["num_steps"], "beam_size": p["beam_size"]}, {"beam_size": p["beam_size"]})
    register(mlflow, "primer-cnn", cnn_run.info.run_id, "test_acc", 0.5, True)
    register(mlflow, "primer-translator", tf_run.info.run_id, "test_bleu", 0.1, True)
    return uri


def time_server(model: str, uri: str, body: dict, requests: int, cwd: Path) -> list[float]:
    port = free_port()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "MLFLOW_TRACKING_URI": uri, "HOME": str(cwd)}
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{model}@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        data = json.dumps(body).encode()
        times = []
        for i in range(requests + 1):
            request = urllib.request.Request(f"{url}/invocations", data=data,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as response:
                json.load(response)
            if i:  # the first is the warm-up
                times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per model, after one warm-up")
    parser.add_argument("--photos", type=int, default=200, help="photos for `primer classify`")
    args = parser.parse_args()
    if not (SHARED / "petimages").is_dir():
        raise SystemExit(f"{SHARED} not found: this benchmark needs the real photos and fra-eng.zip")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    photos = sorted((SHARED / "petimages/Cat").glob("*.jpg"))[: args.photos // 2] + \
        sorted((SHARED / "petimages/Dog").glob("*.jpg"))[: args.photos - args.photos // 2]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_models(folder, params)
        uri = register_champions(folder, params, photos[0])
        rows = []
        photo_body = {"dataframe_records": [{"image": base64.b64encode(photos[0].read_bytes()).decode()}]}
        sentence_body = {"dataframe_records": [{"sentence": "i'm home ."}]}
        for what, model, body in [
                (f"one photo ({photos[0].stat().st_size // 1024} KiB JPEG)", "primer-cnn", photo_body),
                (f"one sentence (beam {params['train_transformer']['beam_size']})", "primer-translator",
                 sentence_body)]:
            times = time_server(model, uri, body, args.requests, folder)
            rows.append((what, f"{statistics.median(times):.1f}", f"{np.percentile(times, 90):.1f}", len(times)))
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(REPO / name, folder / name)
        timed = {}
        for n in (1, 1, len(photos)):  # the first is a warm-up (the OS caches the interpreter's files)
            start = time.perf_counter()
            done = subprocess.run([str(BIN / "primer"), "classify", *map(str, photos[:n])], cwd=folder,
                                  capture_output=True, text=True)
            timed[n] = time.perf_counter() - start
            assert done.returncode == 0 and len(done.stdout.splitlines()) == n + 1, done.stderr
    print("| request | median ms | p90 ms | requests |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    n = len(photos)
    print(f"\n`primer classify` over {n} photos: {timed[n]:.1f} s; over 1 photo: {timed[1]:.1f} s (start-up and model "
          f"loading); the difference over {n - 1} photos: {(timed[n] - timed[1]) / (n - 1) * 1000:.0f} ms per photo")


if __name__ == "__main__":
    main()
