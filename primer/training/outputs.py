"""What a training stage writes once `fit` has kept its best epoch, beside its checkpoint: the model file,
the metrics JSON, the per-epoch history as a CSV (DVC plots) and a PNG, and the same on its MLflow run,
where the model is also logged as a served (pyfunc) model. The three training stages write through here.

The model file is a plain dict: the best epoch's weights (`model`), `model_args` to rebuild it with,
what the stage adds (classes, vocabularies), the `history`, the `best_epoch` and the `mlflow_run_id`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from primer.atomic import atomic_path, write_text
from primer.training.curves import plot_history, write_history_csv
from primer.training.loop import Fitted


def add_training_outputs(parser: argparse.ArgumentParser) -> None:
    """The arguments every training stage takes: its checkpoint and what it writes."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (kept between runs)")
    parser.add_argument("--model", required=True, type=Path, help="final model file to write")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--curves", required=True, type=Path, help="per-epoch CSV to write (DVC plots)")
    parser.add_argument("--curves-png", required=True, type=Path, help="training-curve PNG to write")


@dataclass(frozen=True)
class Curves:
    """How the history is drawn: the figure's title, its panels (title -> metric keys; None: losses, then
    the other validation metrics) and the artifact name of the PNG on the run."""

    title: str
    artifact: str
    panels: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class TrainingOutputs:
    """The files of one training stage (paths from dvc.yaml, through `add_training_outputs`'s arguments)."""

    model: Path
    metrics: Path
    curves: Path
    curves_png: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainingOutputs:
        return cls(args.model, args.metrics, args.curves, args.curves_png)

    def write(self, run, model: torch.nn.Module, model_args: dict, fitted: Fitted, metric: str, summary: dict,
              curves: Curves, served: dict, extra: dict | None = None) -> None:
        """Write them all for `model` (holding the kept epoch's weights) and log them to `run`, the stage's
        StageRun: `fitted`'s best epoch on `metric`, `summary` as the metrics JSON, and the model served as
        `run.log_served_model(model file, **served)`. Each file is written atomically."""
        with atomic_path(self.model) as tmp:
            torch.save({"model": model.state_dict(), "model_args": model_args, **(extra or {}),
                        "history": fitted.history, "best_epoch": fitted.best_epoch, "mlflow_run_id": run.run_id or ""},
                       tmp)
        write_text(self.metrics, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        fitted.log_to(run, metric)
        write_history_csv(fitted.history, self.curves)
        figure = plot_history(fitted.history, self.curves_png, curves.title, curves.panels,
                              best_epoch=fitted.best_epoch, stopped=fitted.stopped_early)
        run.log_figure(figure, curves.artifact)
        run.log_artifact(self.curves)
        run.log_served_model(self.model, **served)
