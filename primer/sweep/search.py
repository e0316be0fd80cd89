"""Bayesian search for `python -m primer.sweep --search tpe`: the -S ranges, the Optuna study that asks for each
trial's values, and the trial's metric read back from its MLflow run.

Optuna's ask/tell API keeps the search state: the sweep asks the study for a trial's values each time a slot of the
cluster is free, runs the trial as a DVC experiment, reads the stage's validation metric from the trial's MLflow run
(tags `dvc.exp_name` and `stage`) once it ends, and tells the study the value, or that the trial failed. The sampler
is TPE with `constant_liar`, so trials asked while others still run get other values.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from primer.errors import PrimerError
from primer.sweep import asha

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

INSTALL = ("Optuna is not installed in this environment; install it with `pip install -e '.[cluster]'` "
           "(or `pip install -r requirements-cluster.lock`).")
RANGE = re.compile(r"^([A-Za-z][\w-]*)\((.*)\)$")  # kind(LOW,HIGH)
KINDS = ("log-uniform", "uniform", "int")
# What each training stage logs per epoch that a search can rank trials by, the first its own selection metric
STAGE_METRICS = {
    "train_cnn": ("val/acc", "val/loss", "train/epoch_loss"),
    "train_lm": ("val/ppl", "train/ppl", "train/epoch_loss"),
    "train_transformer": ("val/loss", "val/ppl", "train/epoch_loss"),
}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise PrimerError(INSTALL) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def parse_range(text: str, value: str) -> BaseDistribution | None:
    """`log-uniform(LOW,HIGH)`, `uniform(LOW,HIGH)` or `int(LOW,HIGH)` as Optuna's distribution; None for a plain
    value. `text` is the whole -S option, for the sentence that refuses a bad range."""
    found = RANGE.match(value)
    if not found:
        return None
    kind, bounds = found.group(1), [b.strip() for b in found.group(2).split(",")]
    if kind not in KINDS:
        raise PrimerError(f"-S {text!r}: '{kind}' is not a kind of range; write log-uniform(LOW,HIGH), "
                          "uniform(LOW,HIGH) or int(LOW,HIGH), or list the values as V1,V2,...")
    try:
        if len(bounds) != 2:
            raise ValueError
        low, high = (int(b) for b in bounds) if kind == "int" else (float(b) for b in bounds)
    except ValueError:
        number = "whole numbers" if kind == "int" else "numbers"
        raise PrimerError(f"-S {text!r}: {kind}() takes two {number}, LOW and HIGH, e.g. {kind}(1,8).") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise PrimerError(f"-S {text!r}: the range {value} is empty or inverted; give LOW < HIGH.")
    if kind == "log-uniform" and low <= 0:
        raise PrimerError(f"-S {text!r}: the range {value} starts at {low:g}, and log-uniform() needs LOW > 0; e.g. "
                          "log-uniform(1e-4,1e-2).")
    from optuna.distributions import FloatDistribution, IntDistribution

    if kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(low, high, log=kind == "log-uniform")


def refuse_ranges(sets: list[tuple[str, str, list[str]]]) -> None:
    """A grid takes lists of values: a range in one is one sentence. `sets` holds (the -S text, key, values)."""
    for text, _, values in sets:
        if any(RANGE.match(v) for v in values):
            raise PrimerError(f"-S {text!r} is a range, which a grid cannot run; list the values (KEY=V1,V2,...), or "
                              "give --search tpe --trials N to sample it.")


def space(sets: list[tuple[str, str, list[str]]]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(the distribution of each searched [FILE:]KEY, the overrides every trial gets): a range is searched, a list of
    values is a categorical choice, a single value is fixed."""
    from optuna.distributions import CategoricalDistribution

    searched: dict[str, BaseDistribution] = {}
    fixed = []
    for text, key, values in sets:
        ranges = [parse_range(text, v) for v in values]
        if ranges[0] is not None and len(values) == 1:
            searched[key] = ranges[0]
        elif any(r is not None for r in ranges):
            raise PrimerError(f"-S {text!r} mixes a range with values; give either one range or a list of values.")
        elif len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            searched[key] = CategoricalDistribution(values)
    if not searched:
        raise PrimerError("--search tpe has nothing to search: every -S gives a single value; give a range "
                          "(e.g. -S 'train_cnn.lr=log-uniform(1e-4,1e-2)') or a list of values.")
    return searched, fixed


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h' or plain seconds, as seconds."""
    found = DURATION.match(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise PrimerError(f"--time-limit {text!r} is not a duration; give it as 90s, 30m or 2h.")
    return float(found.group(1)) * SECONDS[found.group(2)]


@dataclass(frozen=True)
class Objective:
    """What ranks the trials: `metric` of the MLflow run of `stage`, and whether higher is better."""

    stage: str
    metric: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


def objective(targets: list[str], metric: str | None, who: str = "--search tpe") -> Objective:
    """The one training stage among the sweep's targets, and the metric it is ranked by (its own unless given); `who`
    names the option that needs it, in the sentence that refuses the targets."""
    stages = [t.rpartition(":")[2] for t in targets if t.rpartition(":")[2].split("@")[0] in STAGE_METRICS]
    if len(stages) != 1:
        names = ", ".join(f"{s}@NAME" if s == "train_lm" else s for s in STAGE_METRICS)
        has = f"they name {', '.join(stages)}" if stages else "none is given"
        raise PrimerError(f"{who} ranks the trials by a metric of one training stage among the targets "
                          f"({names}), and {has}; name exactly one.")
    stage = stages[0]
    family = stage.split("@")[0]
    if family == "train_lm" and "@" not in stage:
        raise PrimerError(f"{who} ranks each trial by one MLflow run, and train_lm runs one per variant; name "
                          "the variant, e.g. train_lm@lstm.")
    logged = STAGE_METRICS[family]
    chosen = metric or logged[0]
    if chosen not in logged:
        raise PrimerError(f"--metric {chosen}: {stage} does not log it; give one of {', '.join(logged)}.")
    return Objective(stage, chosen, maximize=chosen.endswith("/acc"))


def read_metric(uri: str, experiment: str, commit: str, goal: Objective, name: str,
                overrides: list[str]) -> tuple[float | None, str]:
    """The trial `name`'s value and, where it comes from another run, a note that says so: the best `goal.metric`
    of its FINISHED MLflow run of `goal.stage` (the stage's own `best/...` where it logs one). A trial whose values an
    earlier run of `commit` already trained has no run of its own (DVC restores the stage's outputs from its run
    cache): that earlier run's value, found by its params. (None, '') without such a run or metric."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, ""
    where = f"tags.stage = '{goal.stage}' and attributes.status = 'FINISHED'"
    latest = ["attributes.start_time DESC"]
    runs = client.search_runs([found.experiment_id], f"{where} and tags.`dvc.exp_name` = '{name}'", order_by=latest,
                              max_results=1)
    note = ""
    if not runs and not any(":" in o.partition("=")[0] for o in overrides):  # params of other files are not logged
        same = " and ".join(f"params.`{key}` = '{value}'" for key, _, value in (o.partition("=") for o in overrides))
        runs = client.search_runs([found.experiment_id], f"{where} and tags.`git.commit` = '{commit}' and {same}",
                                  order_by=latest, max_results=1)
        if runs:
            earlier = runs[0].data.tags.get("dvc.exp_name") or runs[0].info.run_id
            note = (f"trial {name} has the values of {earlier}, so DVC restored {goal.stage}'s outputs from its run "
                    f"cache; its {goal.metric} is that run's")
    if not runs:
        return None, ""
    best = runs[0].data.metrics.get(f"best/{goal.metric.replace('/', '_')}")
    if best is None:
        values = [m.value for m in client.get_metric_history(runs[0].info.run_id, goal.metric)]
        best = (max if goal.maximize else min)(values) if values else None
    return best, note


@dataclass
class TpeSearch:
    """The trials of a TPE sweep: asked while the budget and the time limit allow, told their metric as they end."""

    study: optuna.Study
    seed: int
    searched: dict[str, BaseDistribution]
    fixed: list[str]
    prefix: str
    budget: int
    goal: Objective
    time_limit: float | None = None
    # a trial's name and overrides -> its metric and a note (read_metric, once the sweep knows its MLflow store)
    read: Callable[[str, list[str]], tuple[float | None, str]] | None = None
    pruning: asha.Pruning | None = None  # --prune: the running trials' curves, and those to stop
    method: str = "TPE search"  # or "grid", a grid run through the study for --prune
    trials: dict[str, list[str]] = field(default_factory=dict)  # name -> overrides, of every trial asked
    values: dict[str, float] = field(default_factory=dict)
    stopped: dict[str, int] = field(default_factory=dict)  # name -> the epochs it trained, of the trials stopped
    asked: dict[str, optuna.trial.Trial] = field(default_factory=dict)
    started: float | None = None  # when the first trial was asked: the time limit counts from there

    @property
    def total(self) -> int:
        return self.budget

    def out_of_time(self) -> bool:
        if self.time_limit is None or self.started is None:
            return False
        return time.monotonic() - self.started > self.time_limit

    def ask(self) -> str | None:
        """The next trial's name (its overrides in `trials`), or None once the budget or the time is spent."""
        if len(self.trials) >= self.budget or self.out_of_time():
            return None
        if self.started is None:
            self.started = time.monotonic()
        trial = self.study.ask(self.searched)
        name = f"{self.prefix}-{trial.number + 1}"
        self.asked[name] = trial
        self.trials[name] = self.fixed + [f"{key}={value}" for key, value in trial.params.items()]
        return name

    def tell(self, name: str, outcome: dict) -> str | None:
        """Tell the study how the trial `name` ended; a sentence for the user where it landed without a metric."""
        from optuna.trial import TrialState

        trial = self.asked.pop(name)
        if outcome.get("stopped"):
            self.stopped[name] = outcome["stopped"]
            self.study.tell(trial, state=TrialState.PRUNED)
            return None
        if not outcome["ok"]:
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        assert self.read is not None, "the sweep sets read once it knows its MLflow store"
        value, note = self.read(name, self.trials[name])
        if value is None or not math.isfinite(value):
            self.study.tell(trial, state=TrialState.FAIL)
            return (f"trial {name} landed, but no MLflow run of {self.goal.stage} has its {self.goal.metric} "
                    f"({'none found' if value is None else value}); the search counts it as failed")
        self.values[name] = value
        self.study.tell(trial, value)
        return note or None

    def should_stop(self, name: str) -> str | None:
        """With --prune: report the running trial `name`'s new epochs to the study; why it should stop, once."""
        if not self.pruning or name not in self.asked:
            return None
        return self.pruning.check(name, self.asked[name], self.trials[name])

    def best(self) -> str | None:
        """The name of the trial with the best metric, or None where none has one."""
        if not self.values:
            return None
        pick = max if self.goal.maximize else min
        return pick(self.values, key=lambda n: self.values[n])


def tpe_study(seed: int, direction: str, name: str, rungs: asha.Rungs | None = None) -> optuna.Study:
    """An in-memory study with a seeded TPE sampler, so that a sweep reruns with the same first values; with `rungs`,
    its pruner halves the trials at each."""
    optuna = import_optuna()
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.create_study(study_name=name, direction=direction, sampler=sampler,
                               pruner=rungs.pruner() if rungs else None)


def grid_space(sets: list[tuple[str, str, list[str]]], study: optuna.Study) -> dict[str, BaseDistribution]:
    """A grid as the study's trials: every combination of the -S values queued in order (the first -S varies
    slowest, as the plain grid's), so the study asks them one by one; the choices of each [FILE:]KEY."""
    from optuna.distributions import CategoricalDistribution

    refuse_ranges(sets)
    keys = [key for _, key, _ in sets]
    for combination in itertools.product(*(values for _, _, values in sets)):
        study.enqueue_trial(dict(zip(keys, combination)))
    return {key: CategoricalDistribution(values) for _, key, values in sets}
