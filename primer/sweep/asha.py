"""Early stopping across trials for `python -m primer.sweep --prune asha`: Optuna's asynchronous successive halving
(`SuccessiveHalvingPruner`) fed with each running trial's per-epoch validation metric, read from its MLflow run.

The sweep polls the MLflow run of each running trial (tags `dvc.exp_name` and `stage`) every POLL_S seconds, reports
each new epoch's value to the trial's Optuna trial and asks `should_prune()`. Rung k is reached at epoch
min_epochs * factor**k; a trial whose value there is not in the better 1/factor share of the values that trials
reached the rung with is stopped (the first trials at a rung are compared with fewer others: Optuna's halving never
waits for a rung to fill). The sweep then stops the trial as Ctrl-C would and tags its run with why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from primer.errors import PrimerError

if TYPE_CHECKING:
    import optuna

    from primer.sweep.search import Objective

POLL_S = 2.0  # between two reads of the running trials' MLflow runs
METHODS = ("asha",)
EPOCH_METRIC = "train/epoch_loss"  # every training stage logs it once an epoch, at the step its validation has
TAG = "primer.sweep."  # the prefix of the tags of a stopped trial's run


@dataclass(frozen=True)
class Rungs:
    """Where trials are compared: at epoch min_epochs * factor**k, for k = 0, 1, ..."""

    min_epochs: int
    factor: int

    def rung_of(self, epoch: int) -> int:
        """The highest rung that `epoch` has reached (0 at min_epochs)."""
        rung = 0
        while self.min_epochs * self.factor ** (rung + 1) <= epoch:
            rung += 1
        return rung

    def pruner(self) -> optuna.pruners.BasePruner:
        from optuna.pruners import SuccessiveHalvingPruner

        return SuccessiveHalvingPruner(min_resource=self.min_epochs, reduction_factor=self.factor)


def rungs(method: str | None, min_epochs: int, factor: int, epochs: int, stage: str) -> Rungs | None:
    """The checked --prune, --min-epochs and --reduction-factor (None without --prune); `epochs` is the fewest
    epochs a trial of `stage` runs."""
    if method is None:
        return None
    if method not in METHODS:
        raise PrimerError(f"--prune {method}: there is no such way to stop trials early; give --prune asha.")
    if min_epochs < 1 or min_epochs >= epochs:
        raise PrimerError(f"--min-epochs {min_epochs}: the first rung must come after 1 to {epochs - 1} epochs, since "
                          f"{stage} trains {epochs}; give a --min-epochs in that range.")
    if factor < 2:
        raise PrimerError(f"--reduction-factor {factor}: each rung keeps 1/factor of the trials, so it must be 2 or "
                          "more; give e.g. --reduction-factor 3.")
    return Rungs(min_epochs, factor)


def stage_epochs(params: dict, stage: str, overrides: list[tuple[str, list[str]]]) -> int:
    """The fewest epochs a trial of `stage` trains: its section's `epochs` in `params` (the profile applied), or the
    smallest value a -S of `SECTION.epochs` gives it ((key, values) each)."""
    section = stage.split("@")[0]
    found = [number(v.partition("(")[2].split(",")[0] if v.startswith("int(") else v)
             for key, values in overrides if key == f"{section}.epochs" for v in values]
    given = [n for n in found if n is not None]  # what is not a number, the stage refuses
    return min(given) if given else int((params.get(section) or {}).get("epochs", 0))


def number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def metric_by_epoch(uri: str, experiment: str, goal: Objective,
                    name: str) -> tuple[str | None, list[tuple[int, float]]]:
    """(the RUNNING MLflow run of the trial `name`'s stage, its (epoch, `goal.metric`) in order); the epoch of a
    value is how many epochs had ended at its step (stages validate every val_every epochs)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, []
    runs = client.search_runs([found.experiment_id], f"tags.stage = '{goal.stage}' and tags.`dvc.exp_name` = "
                              f"'{name}' and attributes.status = 'RUNNING'", max_results=1)
    if not runs:
        return None, []
    run_id = runs[0].info.run_id
    ended = sorted(m.step for m in client.get_metric_history(run_id, EPOCH_METRIC))
    values = sorted((m.step, m.value) for m in client.get_metric_history(run_id, goal.metric))
    by_epoch: dict[int, float] = {}
    for step, value in values:
        epoch = sum(1 for s in ended if s <= step)
        if epoch:
            by_epoch[epoch] = value
    return run_id, sorted(by_epoch.items())


def epochs_of(uri: str, run_id: str) -> int:
    """How many epochs the run logged."""
    from mlflow import MlflowClient

    return len(MlflowClient(uri).get_metric_history(run_id, EPOCH_METRIC))


@dataclass
class Watch:
    """What the sweep knows of one running trial's curve: its MLflow run and the epochs told to its Optuna trial."""

    trial: optuna.trial.Trial
    run_id: str | None = None
    reported: int = 0  # epochs reported to the trial

    def report(self, values: list[tuple[int, float]], rungs: Rungs, metric: str) -> tuple[int, str] | None:
        """Report the (epoch, value)s not yet reported; at the first after which the trial should stop, (that epoch,
        the sentence why)."""
        for epoch, value in values:
            if epoch <= self.reported:
                continue
            self.trial.report(value if math.isfinite(value) else math.nan, epoch)
            self.reported = epoch
            if self.trial.should_prune():
                return epoch, (f"{metric} {value:.6g} at epoch {epoch} was in the worse share at rung "
                               f"{rungs.rung_of(epoch)} (min {rungs.min_epochs} epochs, factor {rungs.factor})")
        return None


@dataclass
class Pruning:
    """The running trials' curves, read from MLflow and reported to their Optuna trials, and those to stop."""

    rungs: Rungs
    goal: Objective
    store: tuple[str, str] | None = None  # (tracking URI, experiment), set once the sweep knows them
    epochs: int = 0  # the stage's epochs at the sweep's commit, for a trial whose -S does not set them (0: unknown)
    watches: dict[str, Watch] = field(default_factory=dict)
    stopping: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (epoch it lost at, why)

    def check(self, name: str, trial: optuna.trial.Trial, overrides: list[str]) -> str | None:
        """Report the trial `name`'s new epochs; why it should stop, the first time it should. A trial whose run
        has logged all its epochs (`overrides` may set them) is left to finish: it lost too late to save any."""
        assert self.store is not None, "the sweep sets store once it knows its MLflow store"
        if name in self.stopping:
            return None
        watch = self.watches.setdefault(name, Watch(trial))
        run_id, values = metric_by_epoch(*self.store, self.goal, name)
        if run_id is None:
            return None
        watch.run_id = run_id
        lost = watch.report(values, self.rungs, self.goal.metric)
        planned = self.planned(overrides)
        if lost is None or (planned is not None and values[-1][0] >= planned):
            return None
        self.stopping[name] = lost
        return lost[1]

    def planned(self, overrides: list[str]) -> int | None:
        """The epochs a trial with `overrides` trains, where known."""
        key = f"{self.goal.stage.split('@')[0]}.epochs"
        given = [value for key_, _, value in (o.partition("=") for o in overrides) if key_ == key]
        return int(float(given[-1])) if given else (self.epochs or None)

    def stopped(self, name: str) -> tuple[int, str]:
        """Tag the MLflow run of the trial `name`, which the sweep stopped; (the epochs it had trained, the host name
        its stage ran on)."""
        from mlflow import MlflowClient

        assert self.store is not None
        at, reason = self.stopping[name]
        run_id = self.watches[name].run_id
        assert run_id is not None, "a trial is stopped once its run has epochs"
        epochs = max(at, epochs_of(self.store[0], run_id))
        tag_stopped(self.store[0], run_id, epochs, self.rungs.rung_of(at), reason)
        return epochs, MlflowClient(self.store[0]).get_run(run_id).data.tags.get("host", "")


def tag_stopped(uri: str, run_id: str, epoch: int, rung: int, reason: str) -> None:
    """Say on the trial's MLflow run that the sweep stopped it, after which epoch, at which rung and why."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for key, value in (("stopped_by", "asha"), ("stopped_at_epoch", epoch), ("stopped_at_rung", rung),
                       ("stopped_reason", reason)):
        client.set_tag(run_id, TAG + key, str(value))
