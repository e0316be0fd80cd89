"""How long a training loop waits per metrics call: MLflow's synchronous log_metrics vs primer's queue.

Both log the same windows ({train/loss, lr} at steps 1..N) to a fresh SQLite store in a temp folder;
the table gives the loop's time per call (mean and 95th percentile), the time until everything is in
the store (the queue's flush included), and checks that every step arrived.

    python benchmarks/tracking_latency.py [--calls 200] [--uri sqlite:///...|http://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PRIMER_TRACKING", "on")


def measure(mode: str, calls: int, uri: str) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    from primer.tracking import stage_run

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_NAME"] = f"latency-{mode}"
    waits = []
    began = time.perf_counter()
    with stage_run(f"latency_{mode}", {}) as run:
        for step in range(1, calls + 1):
            metrics = {"train/loss": 1.0 / step, "lr": 1e-3}
            start = time.perf_counter()
            if mode == "synchronous":
                mlflow.log_metrics(metrics, step=step)
            else:
                run.log_metrics(metrics, step)
            waits.append(time.perf_counter() - start)
        run.flush()
        run_id = run.run_id
    total = time.perf_counter() - began
    stored = len(MlflowClient(uri).get_metric_history(run_id, "train/loss"))
    waits.sort()
    return {"mean_ms": 1e3 * statistics.mean(waits), "p95_ms": 1e3 * waits[int(0.95 * len(waits)) - 1],
            "total_s": total, "stored": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="metrics calls (logging windows) per mode")
    parser.add_argument("--uri", default="", help="tracking URI; default: a new SQLite file in a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or f"sqlite:///{tmp}/mlflow.db"
        rows = {mode: measure(mode, args.calls, uri) for mode in ("synchronous", "queued")}
    print(f"\n{args.calls} calls of 2 metrics to {uri.split('///')[0] + '///TMP/mlflow.db' if not args.uri else uri}\n")
    print("| mode | loop waits per call, mean | p95 | whole run incl. flush | steps stored |")
    print("|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['mean_ms']:.2f} ms | {r['p95_ms']:.2f} ms | {r['total_s']:.1f} s "
              f"| {r['stored']}/{args.calls} |")


if __name__ == "__main__":
    main()
