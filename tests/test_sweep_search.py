"""primer/sweep/search.py before any Ray: the -S ranges of `--search tpe`, the one-sentence refusals of bad ranges and
options, the stage's metric and its direction, and the seeded TPE study that asks the same values twice; --prune
asha's refusals, its rungs, and a trial stopped at a rung from curves in a real MLflow store. The search and the early
stopping themselves run on a local Ray in tests/e2e/test_sweep.py."""

from __future__ import annotations

import time

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import SuccessiveHalvingPruner
from optuna.trial import TrialState

from primer.errors import PrimerError
from primer.sweep import asha, search
from primer.sweep.submit import run

from helpers.repo import REPO

SPACE = [("train_cnn.lr=log-uniform(1e-4,1e-2)", "train_cnn.lr", ["log-uniform(1e-4,1e-2)"]),
         ("train_cnn.weight_decay=uniform(0,0.5)", "train_cnn.weight_decay", ["uniform(0,0.5)"]),
         ("train_cnn.batch_size=int(16,128)", "train_cnn.batch_size", ["int(16,128)"]),
         ("train_cnn.optimizer=adam,sgd", "train_cnn.optimizer", ["adam", "sgd"]),
         ("train_cnn.epochs=3", "train_cnn.epochs", ["3"])]


def test_ranges_lists_and_single_values_make_the_space():
    searched, fixed = search.space(SPACE)
    assert searched == {"train_cnn.lr": FloatDistribution(1e-4, 1e-2, log=True),
                        "train_cnn.weight_decay": FloatDistribution(0, 0.5),
                        "train_cnn.batch_size": IntDistribution(16, 128),
                        "train_cnn.optimizer": CategoricalDistribution(["adam", "sgd"])}
    assert fixed == ["train_cnn.epochs=3"]


@pytest.mark.parametrize("value, says", [
    ("loguniform(1,2)", "'loguniform' is not a kind of range; write log-uniform(LOW,HIGH)"),
    ("uniform(1,0)", "the range uniform(1,0) is empty or inverted; give LOW < HIGH."),
    ("int(4,4)", "the range int(4,4) is empty or inverted; give LOW < HIGH."),
    ("log-uniform(0,1)", "the range log-uniform(0,1) starts at 0, and log-uniform() needs LOW > 0"),
    ("int(1.5,4)", "int() takes two whole numbers, LOW and HIGH"),
    ("uniform(1)", "uniform() takes two numbers, LOW and HIGH"),
    ("uniform(0,1),0.5", "mixes a range with values"),
])
def test_a_bad_range_is_one_sentence(value, says):
    text = f"train_cnn.lr={value}"
    with pytest.raises(PrimerError) as caught:
        search.space([(text, "train_cnn.lr", value.replace("),", ")|").split("|"))])
    said = str(caught.value)
    assert said.startswith(f"-S {text!r}") and says in said, said
    assert said.endswith(".") and ". " not in said.replace("e.g. ", ""), said  # one sentence


def test_the_stage_gives_the_metric_and_its_direction():
    assert search.objective(["train_cnn"], None) == search.Objective("train_cnn", "val/acc", maximize=True)
    assert search.objective(["dvc.yaml:train_lm@lstm"], None) == search.Objective("train_lm@lstm", "val/ppl", False)
    assert search.objective(["train_transformer"], None).direction == "minimize"
    assert search.objective(["train_cnn"], "val/loss") == search.Objective("train_cnn", "val/loss", maximize=False)
    with pytest.raises(PrimerError, match=r"^--metric val/acc: train_lm@lstm does not log it; give one of val/ppl, "):
        search.objective(["train_lm@lstm"], "val/acc")
    with pytest.raises(PrimerError, match=r"one training stage among the targets .* and none is given; name exactly "):
        search.objective(["verify"], None)
    with pytest.raises(PrimerError, match=r"name the variant, e\.g\. train_lm@lstm\.$"):
        search.objective(["train_lm"], None)


def test_durations():
    assert [search.parse_duration(t) for t in ("90s", "30m", "2h", "45")] == [90, 1800, 7200, 45]
    with pytest.raises(PrimerError, match=r"^--time-limit '2 days' is not a duration; give it as 90s, 30m or 2h\.$"):
        search.parse_duration("2 days")


def ask_first(seed: int, n: int = 3) -> list[dict]:
    study = search.tpe_study(seed, "maximize", "t")
    searched, _ = search.space(SPACE)
    return [study.ask(searched).params for _ in range(n)]


def test_the_seeded_sampler_asks_the_same_values_twice():
    assert ask_first(42) == ask_first(42)
    assert ask_first(42) != ask_first(43)


def test_the_search_keeps_to_its_budget_tells_failures_and_names_the_best():
    values = {"s-1": (0.5, ""), "s-2": (0.9, "trial s-2 has the values of s-0"), "s-3": (None, "")}
    searched, fixed = search.space(SPACE)
    tpe = search.TpeSearch(search.tpe_study(0, "maximize", "s"), 0, searched, fixed, "s", 4,
                           search.Objective("train_cnn", "val/acc", True), read=lambda name, _: values[name])
    names = [tpe.ask() for _ in range(4)]
    assert names == ["s-1", "s-2", "s-3", "s-4"] and tpe.ask() is None
    assert tpe.trials["s-1"][0] == "train_cnn.epochs=3" and tpe.trials["s-1"][1].startswith("train_cnn.lr=")
    assert tpe.tell("s-1", {"ok": True}) is None and tpe.tell("s-2", {"ok": True}) == values["s-2"][1]
    assert tpe.tell("s-3", {"ok": True}) == ("trial s-3 landed, but no MLflow run of train_cnn has its val/acc (none "
                                             "found); the search counts it as failed")
    assert tpe.tell("s-4", {"ok": False}) is None
    states = [t.state for t in tpe.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert tpe.best() == "s-2"


@pytest.mark.parametrize("argv, says", [
    (["-S", "train_cnn.lr=uniform(0,1)", "train_cnn"],
     "-S 'train_cnn.lr=uniform(0,1)' is a range, which a grid cannot run; list the values (KEY=V1,V2,...), or give "
     "--search tpe --trials N to sample it."),
    (["--search", "tpe", "-S", "train_cnn.lr=uniform(0,1)", "train_cnn"],
     "--search tpe runs a budget of trials, and no --trials gives none; add --trials N (N >= 1)."),
    (["--search", "tpe", "--trials", "0", "-S", "train_cnn.lr=uniform(0,1)", "train_cnn"],
     "--search tpe runs a budget of trials, and --trials 0 gives none; add --trials N (N >= 1)."),
    (["--trials", "3", "-S", "train_cnn.lr=1,2", "train_cnn"],
     "--trials belongs to a search; add --search tpe, or leave it out for a grid."),
    (["--search", "tpe", "--trials", "3", "-S", "train_cnn.lr=uniform(0,1)", "--metric", "val/ppl", "train_cnn"],
     "--metric val/ppl: train_cnn does not log it; give one of val/acc, val/loss, train/epoch_loss."),
    (["--search", "tpe", "--trials", "3", "-S", "train_cnn.lrr=uniform(0,1)", "train_cnn"],
     "-S 'train_cnn.lrr=uniform(0,1)': params.yaml has no key 'train_cnn.lrr'"),
])
def test_bad_search_input_is_one_sentence_before_any_trial(argv, says):
    with pytest.raises(PrimerError) as caught:
        run(argv)
    assert str(caught.value).startswith(says), caught.value


def test_the_metric_is_read_from_the_trials_run_or_from_the_earlier_run_dvc_restored(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("primer")

    def logged(name: str, lr: str, history: list[float], best: float | None, commit: str = "c1") -> None:
        run = client.create_run(experiment, tags={"dvc.exp_name": name, "stage": "train_lm@lstm",
                                                  "git.commit": commit})
        client.log_param(run.info.run_id, "train_lm.variants.lstm.lr", lr)
        for step, value in enumerate(history):
            client.log_metric(run.info.run_id, "val/ppl", value, step=step)
        if best is not None:
            client.log_metric(run.info.run_id, "best/val_ppl", best)
        client.set_terminated(run.info.run_id, "FINISHED")

    logged("s-1", "0.5", [9.0, 7.0, 8.0], 7.0)
    logged("s-2", "2.0", [12.0, 11.0], None)
    goal = search.Objective("train_lm@lstm", "val/ppl", maximize=False)
    assert search.read_metric(uri, "primer", "c1", goal, "s-1", ["train_lm.variants.lstm.lr=0.5"]) == (7.0, "")
    assert search.read_metric(uri, "primer", "c1", goal, "s-2", ["train_lm.variants.lstm.lr=2.0"]) == (11.0, "")
    assert search.read_metric(uri, "primer", "c1", goal, "r-1", ["train_lm.variants.lstm.lr=0.5"]) == (
        7.0, "trial r-1 has the values of s-1, so DVC restored train_lm@lstm's outputs from its run cache; its val/ppl "
             "is that run's")
    assert search.read_metric(uri, "primer", "c2", goal, "r-1", ["train_lm.variants.lstm.lr=0.5"]) == (None, "")
    assert search.read_metric(uri, "primer", "c1", goal, "r-2", ["train_lm.variants.lstm.lr=1.0"]) == (None, "")


def test_help_explains_the_search():
    from primer.sweep.submit import parser

    said = " ".join(parser().format_help().split())
    for part in ("--search tpe", "--trials", "--time-limit", "--seed", "--metric", "--apply", "log-uniform(LOW,HIGH)",
                 "int(LOW,HIGH)", "is a choice among its values", "TPE sampler", "dvc exp apply"):
        assert part in said, part


def test_no_trial_is_asked_once_the_time_limit_has_passed():
    searched, fixed = search.space(SPACE)
    tpe = search.TpeSearch(search.tpe_study(0, "maximize", "s"), 0, searched, fixed, "s", 10,
                           search.Objective("train_cnn", "val/acc", True), time_limit=0.2)
    assert tpe.ask() == "s-1" and not tpe.out_of_time()  # the limit counts from the first trial
    time.sleep(0.3)
    assert tpe.out_of_time() and tpe.ask() is None and list(tpe.trials) == ["s-1"]


@pytest.mark.parametrize("argv, says", [
    (["--prune", "hyperband", "-S", "train_cnn.lr=1,2", "train_cnn"],
     "--prune hyperband: there is no such way to stop trials early; give --prune asha."),
    (["--prune", "asha", "--min-epochs", "0", "-S", "train_cnn.lr=1,2", "train_cnn"],
     "--min-epochs 0: the first rung must come after 1 to "),
    (["--prune", "asha", "--min-epochs", "4", "-S", "train_cnn.lr=1,2", "-S", "train_cnn.epochs=4,6", "train_cnn"],
     "--min-epochs 4: the first rung must come after 1 to 3 epochs, since train_cnn trains 4; give a --min-epochs in "
     "that range."),
    (["--prune", "asha", "--reduction-factor", "1", "-S", "train_cnn.lr=1,2", "train_cnn"],
     "--reduction-factor 1: each rung keeps 1/factor of the trials, so it must be 2 or more; give e.g. "
     "--reduction-factor 3."),
    (["--min-epochs", "2", "-S", "train_cnn.lr=1,2", "train_cnn"],
     "--min-epochs belongs to early stopping; add --prune asha, or leave it out."),
    (["--prune", "asha", "-S", "train_lm.variants.lstm.lr=1,2", "train_lm"],
     "--prune asha ranks each trial by one MLflow run, and train_lm runs one per variant; name the variant"),
])
def test_bad_pruning_input_is_one_sentence_before_any_trial(argv, says):
    with pytest.raises(PrimerError) as caught:
        run(argv)
    said = str(caught.value)
    assert said.startswith(says), said
    assert said.endswith(".") and ". " not in said.replace("e.g. ", ""), said  # one sentence


def test_the_stage_epochs_come_from_the_profile_or_a_set():
    params = {"train_lm": {"epochs": 8}}
    assert asha.stage_epochs(params, "train_lm@lstm", []) == 8
    assert asha.stage_epochs(params, "train_lm@lstm", [("train_lm.epochs", ["12", "6"])]) == 6
    assert asha.stage_epochs(params, "train_cnn", [("train_cnn.epochs", ["int(3,9)"])]) == 3
    assert asha.stage_epochs(params, "train_lm@lstm", [("train_lm.epochs", ["many", "5"])]) == 5
    assert [asha.Rungs(2, 3).rung_of(e) for e in (1, 2, 5, 6, 17, 18)] == [0, 0, 0, 1, 1, 2]


def test_a_pruned_grid_asks_its_trials_in_the_grid_order():
    sets = [("a.lr=1,2", "a.lr", ["1", "2"]), ("a.bs=4,8", "a.bs", ["4", "8"])]
    study = search.tpe_study(0, "minimize", "g", asha.Rungs(1, 3))
    goal = search.Objective("train_lm@lstm", "val/ppl", False)
    plan = search.TpeSearch(study, 0, search.grid_space(sets, study), [], "g", 4, goal, method="grid")
    asked = [plan.ask() for _ in range(5)]
    assert asked == ["g-1", "g-2", "g-3", "g-4", None]
    assert list(plan.trials.values()) == [["a.lr=1", "a.bs=4"], ["a.lr=1", "a.bs=8"], ["a.lr=2", "a.bs=4"],
                                          ["a.lr=2", "a.bs=8"]]


def test_the_trial_behind_at_a_rung_is_stopped_told_pruned_and_its_run_tagged(tmp_path):
    """Three trials read from a real MLflow store: the first two at the rung (epoch 2) pass, the third, worse than
    both, is to stop; the study hears PRUNED and its run gets the tags that say why."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("primer")
    run_ids = {}

    def epochs(name: str, ppl: list[float]) -> None:
        if name not in run_ids:
            run_ids[name] = client.create_run(experiment, tags={"dvc.exp_name": name, "stage": "train_lm@lstm"}
                                              ).info.run_id
        done = len(client.get_metric_history(run_ids[name], "val/ppl"))
        for epoch, value in enumerate(ppl, done + 1):
            client.log_metric(run_ids[name], "train/epoch_loss", 1.0, step=epoch * 10)  # steps are batches
            client.log_metric(run_ids[name], "val/ppl", value, step=epoch * 10)

    goal = search.Objective("train_lm@lstm", "val/ppl", False)
    rungs = asha.Rungs(2, 3)
    study = search.tpe_study(0, "minimize", "p", rungs)
    sets = [("train_lm.variants.lstm.lr=0.5,2,0.01", "train_lm.variants.lstm.lr", ["0.5", "2", "0.01"])]
    plan = search.TpeSearch(study, 0, search.grid_space(sets, study), [], "p", 3, goal, method="grid",
                            pruning=asha.Pruning(rungs, goal, (uri, "primer")))
    names = [plan.ask() for _ in range(3)]
    assert plan.should_stop("p-1") is None  # no run yet
    epochs("p-1", [12.0, 9.0, 8.0])
    epochs("p-2", [11.0, 7.0])
    epochs("p-3", [30.0])
    assert [plan.should_stop(n) for n in names] == [None, None, None]
    epochs("p-3", [29.5])
    said = "val/ppl 29.5 at epoch 2 was in the worse share at rung 0 (min 2 epochs, factor 3)"
    assert plan.should_stop("p-3") == said and plan.should_stop("p-3") is None  # said once
    epochs("p-3", [29.0])  # it trained on while it stopped
    assert plan.pruning is not None and plan.pruning.stopped("p-3") == (3, "")
    assert plan.tell("p-3", {"ok": False, "stopped": 3}) is None and plan.stopped == {"p-3": 3}
    assert [t.state for t in study.trials][2] == TrialState.PRUNED
    tags = client.get_run(run_ids["p-3"]).data.tags
    assert tags["primer.sweep.stopped_at_epoch"] == "3" and tags["primer.sweep.stopped_at_rung"] == "0"
    assert tags["primer.sweep.stopped_reason"] == said and tags["primer.sweep.stopped_by"] == "asha"


def test_a_trial_that_lost_after_its_last_epoch_is_left_to_finish(tmp_path):
    """Epochs that take less than a poll: a trial seen losing once its run has every epoch it trains (2 at the commit,
    unless its -S sets them) is not stopped, since stopping it would save nothing."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("primer")
    for name, ppl in (("a-1", [10.0, 9.0]), ("a-2", [20.0, 19.0]), ("a-3", [20.0, 19.0])):
        run_id = client.create_run(experiment, tags={"dvc.exp_name": name, "stage": "train_lm@lstm"}).info.run_id
        for epoch, value in enumerate(ppl, 1):
            client.log_metric(run_id, "train/epoch_loss", 1.0, step=epoch)
            client.log_metric(run_id, "val/ppl", value, step=epoch)
    goal = search.Objective("train_lm@lstm", "val/ppl", False)
    study = search.tpe_study(0, "minimize", "a", asha.Rungs(1, 3))
    pruning = asha.Pruning(asha.Rungs(1, 3), goal, (uri, "primer"), epochs=2)
    assert pruning.check("a-1", study.ask(), []) is None
    assert pruning.check("a-2", study.ask(), []) is None and "a-2" not in pruning.stopping
    assert pruning.check("a-3", study.ask(), ["train_lm.epochs=3"]) == ("val/ppl 20 at epoch 1 was in the worse "
                                                                        "share at rung 0 (min 1 epochs, factor 3)")


def test_the_epoch_of_a_value_counts_the_epochs_ended_at_its_step(tmp_path):
    """A stage that validates every 2 epochs logs val/ppl at the step of epochs 2 and 4 (steps are batches)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("primer"), tags={"dvc.exp_name": "v-1",
                                                                          "stage": "train_lm@lstm"}).info.run_id
    for epoch in range(1, 5):
        client.log_metric(run_id, "train/epoch_loss", 1.0, step=epoch * 29)
        if epoch % 2 == 0:
            client.log_metric(run_id, "val/ppl", 10.0 - epoch, step=epoch * 29)
    goal = search.Objective("train_lm@lstm", "val/ppl", False)
    assert asha.metric_by_epoch(uri, "primer", goal, "v-1") == (run_id, [(2, 8.0), (4, 6.0)])
    client.set_terminated(run_id, "FINISHED")
    assert asha.metric_by_epoch(uri, "primer", goal, "v-1") == (None, [])  # only a running trial is watched


def test_a_tpe_search_with_prune_halves_its_trials_with_the_rungs_given():
    from primer.sweep.submit import parser, plan_search

    args = parser().parse_args(["--search", "tpe", "--trials", "4", "--seed", "1", "--prune", "asha", "--min-epochs",
                                "2", "-S", "train_cnn.lr=log-uniform(1e-4,1e-2)", "-S", "train_cnn.epochs=6",
                                "train_cnn"])
    plan = plan_search(args, REPO, "HEAD", "t")
    assert plan.method == "TPE search" and plan.pruning is not None
    assert plan.pruning.rungs == asha.Rungs(2, 3) and plan.pruning.goal.metric == "val/acc"
    assert isinstance(plan.study.pruner, SuccessiveHalvingPruner)
    assert plan.ask() == "t-1" and plan.trials["t-1"][0] == "train_cnn.epochs=6"


def test_help_explains_early_stopping():
    from primer.sweep.submit import parser

    said = " ".join(parser().format_help().split())
    for part in ("--prune asha", "--min-epochs R", "--reduction-factor F", "SuccessiveHalvingPruner",
                 "is not pushed", "tagged with why"):
        assert part in said, part
