"""End to end: `dvc repro` in a temp copy of the repo on tiny data, tracked in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from helpers.environment import venv_env
from helpers.pipeline import STAGES, set_params, tiny_sources
from helpers.repo import REPO, copy_repo

pytestmark = pytest.mark.slow


def dvc(repo: Path, env: dict, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stale_stages(repo: Path, env: dict) -> dict:
    """`dvc status --json`: each stale stage and what changed in its deps."""
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    repo = copy_repo(tmp / "repo")
    sources = tiny_sources(tmp)
    def tiny(p):
        p["fetch"].update(sources=sources)
        p["train_cnn"].update(epochs=2, batch_size=8, log_every=1)
        p["train_lm"].update(epochs=2, batch_size=4, num_steps=8, sample_every=1, log_every=5)
        p["train_transformer"].update(epochs=2, batch_size=8, val_fraction=0.2, test_fraction=0.2, min_freq=1,
                                      beam_size=2)
        p["train_transformer"]["model"].update(num_hiddens=16, ffn_num_hiddens=32)
        small = {"num_hiddens": 16, "num_layers": 1, "dropout": 0.0}
        p["train_lm"]["variants"] = {
            "lstm": {"model": {"cell": "lstm", "impl": "fused", **small}, "lr": 1.0, "patience": 10},
            "gru": {"model": {"cell": "gru", "impl": "scratch", **small}, "lr": 1.0, "patience": 0},
        }
        p["quick"] = {"train_cnn": {"epochs": 1, "warmup_epochs": 0}, "train_lm": {"epochs": 1},
                      "train_transformer": {"num_pairs": 40, "epochs": 1, "warmup_epochs": 0}}

    set_params(repo, tiny)
    env = {**venv_env(tmp), "PYTHONPATH": str(repo)}  # the copy's own primer package
    first = dvc(repo, env, "repro")
    return repo, env, first


def test_repro_runs_every_stage_and_writes_the_outputs(pipeline):
    repo, _, first = pipeline
    assert ran(first) == STAGES
    assert sorted(p.name for p in (repo / "data/raw/petimages").iterdir()) == ["Cat", "Dog"]
    summary = json.loads((repo / "data/verified/summary.json").read_text())
    assert summary["kept"] == 20 and summary["rejected/not_an_image"] == 1 and summary["rejected/empty"] == 1
    arrays = repo / "data/arrays"
    meta = json.loads((arrays / "meta.json").read_text())
    assert meta["classes"] == ["Cat", "Dog"] and meta["counts"] == {"train": 16, "val": 2, "test": 2}
    train = np.load(arrays / "train_images.npy", mmap_mode="r")
    assert train.shape == (16, 150, 150, 3) and train.dtype == np.uint8
    assert np.load(arrays / "val_images.npy", mmap_mode="r").shape == (2, 128, 128, 3)
    assert np.load(arrays / "train_labels.npy").tolist().count(1) == 8
    assert (repo / "data/augment_preview.png").stat().st_size > 10_000
    metrics = json.loads((repo / "metrics/train_cnn.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["val/acc"] <= 1
    assert (repo / "models/cnn.pt").is_file() and (repo / "plots/train_cnn/curves.png").is_file()
    assert len((repo / "plots/train_cnn/curves.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert (repo / "checkpoints/train_cnn.pt").is_file()
    for variant in ("lstm", "gru"):
        lm = json.loads((repo / f"metrics/lm/{variant}.json").read_text())
        assert lm["epochs"] == 2 and lm["sample"].startswith("time traveller")
        assert (repo / f"models/lm/{variant}.pt").is_file() and (repo / f"plots/lm/{variant}.png").is_file()
    translation = json.loads((repo / "metrics/train_transformer.json").read_text())
    assert translation["epochs"] == 2 and translation["test/sentences"] > 0 and len(translation["d2l_examples"]) == 4
    assert (repo / "models/transformer.pt").is_file() and (repo / "metrics/translations.csv").is_file()
    assert {p.name for p in (repo / "plots/train_transformer/attention").iterdir()} == {"encoder.png", "cross.png"}
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["cnn/test_images"] == 2 and {"lm/lstm/test_ppl", "lm/gru/test_ppl"} <= set(evaluation)
    assert "data:image/png;base64," in (repo / "report.html").read_text()


def test_dvc_metrics_show_lists_the_evaluation(pipeline):
    repo, env, _ = pipeline
    shown = dvc(repo, env, "metrics", "show")
    for name in ("metrics/evaluate.json", "cnn/test_acc", "transformer/test_bleu", "lm/gru/test_ppl",
                 "metrics/train_cnn.json"):
        assert name in shown, name
    plots = json.loads(subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True,
                                      text=True, timeout=300).stdout)["data"]
    overlaid = {row["filename"] for row in plots["lm_val_ppl"][0]["content"]["data"]["values"]}
    assert overlaid == {"lstm.csv", "gru.csv"}  # one chart, both variants (the other listed variants are absent here)
    assert "plots/evaluate/confusion.csv" in plots and "plots/evaluate/figures/misclassified.png" in plots


def test_mlflow_holds_one_finished_run_per_stage(pipeline):
    repo, _, _ = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("primer").experiment_id])
    by_stage = {r.info.run_name: r for r in runs}
    assert sorted(by_stage) == sorted(STAGES) and len(runs) == len(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_stage["split"].data.params == {"seed": "42", "split.val_fraction": "0.1", "split.test_fraction": "0.1"}
    assert by_stage["verify"].data.metrics["kept/Cat"] == 10
    assert by_stage["split"].data.metrics["train/Dog"] == 8
    assert by_stage["augment"].data.metrics["images/train"] == 16
    assert by_stage["fetch"].data.tags["git.dirty"] == "true"  # params.yaml was edited after the commit
    artifacts = {a.path for a in client.list_artifacts(by_stage["augment"].info.run_id)}
    assert "augment_preview.png" in artifacts
    train = by_stage["train_cnn"]
    assert len(client.get_metric_history(train.info.run_id, "train/loss")) == 4  # 16 images / 8 per step x 2 epochs
    assert len(client.get_metric_history(train.info.run_id, "val/acc")) == 2
    assert "train/img_per_s" in train.data.metrics and "lr" in train.data.metrics
    assert any(k.startswith("system/") for k in train.data.metrics)  # CPU / memory sampled during training
    lms = [by_stage["train_lm@lstm"], by_stage["train_lm@gru"]]
    assert all(len(client.get_metric_history(r.info.run_id, "val/ppl")) == 2 for r in lms)  # same names: overlaid
    assert {"samples/epoch_00001.txt", "samples/epoch_00002.txt"} <= {
        a.path for a in client.list_artifacts(lms[0].info.run_id, "samples")}


def test_evaluate_registers_each_model_as_the_first_champion_linked_to_its_training_run(pipeline):
    repo, _, first = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = {r.info.run_name: r.info.run_id
            for r in client.search_runs([client.get_experiment_by_name("primer").experiment_id])}
    for name, stage in [("primer-cnn", "train_cnn"), ("primer-lm-lstm", "train_lm@lstm"),
                        ("primer-lm-gru", "train_lm@gru"), ("primer-translator", "train_transformer")]:
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id == runs[stage], name
        assert f"evaluate: {name} version 1 (" in first and f"{name} version 1" in first
    assert "is the first champion" in first


def test_each_training_run_holds_a_pyfunc_model_that_answers(pipeline, monkeypatch):
    repo, _, _ = pipeline
    monkeypatch.chdir(repo)  # the default artifact root is ./mlartifacts beside mlflow.db
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        client = MlflowClient()
        runs = {r.info.run_name: r.info.run_id
                for r in client.search_runs([client.get_experiment_by_name("primer").experiment_id])}
        cnn = mlflow.pyfunc.load_model(f"runs:/{runs['train_cnn']}/model")
        photos = sorted((repo / "data/raw/petimages/Dog").glob("*.jpg"))[:2]
        answer = cnn.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
        assert list(answer.columns) == ["p_dog", "label"] and answer["p_dog"].between(0, 1).all()
        lm = mlflow.pyfunc.load_model(f"runs:/{runs['train_lm@gru']}/model")
        text = lm.predict(pd.DataFrame({"prefix": ["time "], "length": [7]}))["text"][0]
        assert text.startswith("time ") and len(text) == 12
        translator = mlflow.pyfunc.load_model(f"runs:/{runs['train_transformer']}/model")
        assert translator.predict(pd.DataFrame({"sentence": ["I see 3."]}),
                                  params={"beam_size": 1})["translation"].map(type).tolist() == [str]
    finally:
        mlflow.set_tracking_uri(None)


SHARED_IN_GIT = [".dvc/config", "dvc.lock", "params.yaml", "data", "models", "metrics", "plots"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_clone_pulls_data_arrays_and_models_from_a_local_remote_and_repro_has_nothing_to_do(pipeline, tmp_path):
    """docs/sharing.md, "Share the results": `dvc remote add -d`, commit, `dvc push`; elsewhere `git clone`
    and `dvc pull`, and the clone needs no training."""
    repo, env, _ = pipeline
    assert "git add " + " ".join(SHARED_IN_GIT) in (REPO / "docs/sharing.md").read_text()
    dvc(repo, env, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    git(repo, "add", *SHARED_IN_GIT)  # the guide's list: what DVC leaves to git (git ignores the outputs in there)
    git(repo, "commit", "-qm", "trained")
    assert "everything is up to date" not in dvc(repo, env, "push").lower()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "models/cnn.pt").exists()
    clone_env = {**env, "PYTHONPATH": str(clone)}
    dvc(clone, clone_env, "pull")
    for path in ["models/cnn.pt", "models/lm/lstm.pt", "models/lm/gru.pt", "models/transformer.pt",
                 "data/arrays/train_images.npy", "data/arrays/meta.json", "data/raw/timemachine.txt",
                 "data/raw/petimages/Dog/3.jpg", "report.html"]:
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert "up to date" in dvc(clone, clone_env, "status")
    assert ran(dvc(clone, clone_env, "repro")) == []
    primer = Path(sys.executable).parent / "primer"  # the models work there without training
    classified = subprocess.run([str(primer), "classify", "data/raw/petimages/Dog/3.jpg"], cwd=clone,
                                capture_output=True, text=True, timeout=300)
    assert (classified.returncode == 0
            and classified.stdout.splitlines()[1].startswith("data/raw/petimages/Dog/3.jpg")), classified


CHANGES = [  # params of the stages that read them: a new policy for augment and train_cnn (it augments on the fly)
    lambda p: p["augment"]["policy"].update(vflip=0.5),
    lambda p: p["train_lm"]["variants"]["gru"].update(lr=0.5),  # one variant's
    lambda p: p["train_transformer"].update(beam_size=1),
    lambda p: p["evaluate"].update(examples=3),
]
STALE = {"augment": {"augment.policy"}, "train_cnn": {"augment.policy"}, "train_lm@gru": {"train_lm.variants.gru"},
         "train_transformer": {"train_transformer.beam_size"},
         "evaluate": {"evaluate.examples", "train_transformer.beam_size"}}  # the keys `dvc status` names, by stage


def test_second_repro_runs_nothing_and_changes_rerun_only_what_they_affect(pipeline):
    repo, env, _ = pipeline
    assert ran(dvc(repo, env, "repro")) == []
    set_params(repo, lambda p: p["augment"].update(preview_images=2))  # a new preview, the same arrays
    assert ran(dvc(repo, env, "repro")) == ["augment", "evaluate"]  # the report shows the preview; no retraining
    for change in CHANGES:
        set_params(repo, change)
    stale = stale_stages(repo, env)
    assert "params.yaml" in stale.pop("check_params")[0]["changed deps"]  # reads the whole file; writes the same
    assert sorted(stale) == sorted(STALE), stale  # the stages that read a changed key, and no other
    for stage, keys in STALE.items():
        assert stale[stage] == [{"changed deps": {"params.yaml": dict.fromkeys(keys, "modified")}}], stale[stage]
    # the lstm variant and the data stages are left as they were
    assert ran(dvc(repo, env, "repro")) == ["augment", "train_cnn", "train_lm@gru", "train_transformer", "evaluate"]
    assert "up to date" in dvc(repo, env, "status")


TOUCHED = {  # one module per subpackage, and two of the MLflow plumbing: the stages that use it (check_params
    # imports every stage's sections, so it reruns too, and writes the same file: nothing else reruns for it)
    "primer/data/download.py": ["check_params", "fetch"],
    "primer/vision/preview.py": ["check_params", "augment"],
    "primer/text/bleu.py": ["check_params", "train_transformer", "evaluate"],
    "primer/models/bptt.py": ["check_params", "train_lm@lstm", "train_lm@gru", "evaluate"],
    "primer/training/schedule.py": ["check_params", "train_cnn", "train_lm@lstm", "train_lm@gru",
                                    "train_transformer"],  # not evaluate
    "primer/evaluation/model_files.py": ["check_params", "evaluate"],
    "primer/serving/registry.py": [],
    "primer/tracking.py": [],
}


def test_a_changed_module_makes_only_the_stages_that_use_it_stale(pipeline):
    repo, env, _ = pipeline
    for module, stages in TOUCHED.items():
        path = repo / module
        text = path.read_text()
        path.write_text(text + "\n# changed\n")
        try:
            stale = stale_stages(repo, env)
        finally:
            path.write_text(text)
        assert sorted(stale) == sorted(stages), module
        assert all(change == [{"changed deps": {module: "modified"}}] for change in stale.values()), stale
    assert "up to date" in dvc(repo, env, "status")


def outputs(repo: Path, *paths: str) -> dict:
    """The bytes of each output that exists."""
    return {p: (repo / p).read_bytes() for p in paths if (repo / p).is_file()}


def refused(repo: Path, env: dict, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


CNN_OUTPUTS = ("models/cnn.pt", "metrics/train_cnn.json", "plots/train_cnn/curves.csv")


def test_a_misspelt_key_or_a_bad_value_stops_repro_and_exp_run_before_any_stage_removes_its_outputs(pipeline):
    """params.yaml as a whole is checked by the first stage, whenever it changes: a key no stage reads is one
    sentence naming the nearest known key (not "up to date"), and a value out of range stops the repro before
    DVC removes the outputs of the stage that reads it."""
    repo, env, _ = pipeline
    text = (repo / "params.yaml").read_text()
    before = outputs(repo, *CNN_OUTPUTS)
    assert len(before) == len(CNN_OUTPUTS)
    try:
        set_params(repo, lambda p: p["train_cnn"].update(lr_typo=0.1))
        said = refused(repo, env, "repro")
        assert "unknown key 'train_cnn.lr_typo' (did you mean 'lr'?)" in said, said
        assert ran(said) == [] and outputs(repo, *CNN_OUTPUTS) == before
        (repo / "params.yaml").write_text(text)
        said = refused(repo, env, "exp", "run", "-S", "+train_cnn.lr_typo=0.1")  # `+`: DVC adds a new key
        assert "unknown key 'train_cnn.lr_typo'" in said, said
        (repo / "params.yaml").write_text(text)
        set_params(repo, lambda p: p["train_cnn"].update(lr=-1.0))
        said = refused(repo, env, "repro")
        assert "'train_cnn.lr' is -1.0, but it must be a number >= " in said or "'train_cnn.lr' is -1.0" in said, said
        assert ran(said) == [] and outputs(repo, *CNN_OUTPUTS) == before  # models/cnn.pt and its metrics kept
        (repo / "params.yaml").write_text(text)
        set_params(repo, lambda p: p["quick"]["train_cnn"].update(epochz=1))
        assert "'quick.train_cnn.epochz' overrides 'train_cnn.epochz'" in refused(repo, env, "repro")
    finally:
        (repo / "params.yaml").write_text(text)
    assert "up to date" in dvc(repo, env, "status")


def test_a_stage_that_refuses_under_dvc_says_how_to_bring_its_removed_outputs_back(pipeline):
    """A check across keys runs in the stage itself, after DVC removed its outputs: the sentence names
    `dvc checkout STAGE`, which brings them back."""
    repo, env, _ = pipeline
    text = (repo / "params.yaml").read_text()
    before = outputs(repo, "data/split.csv")
    try:
        set_params(repo, lambda p: p["split"].update(val_fraction=0.5, test_fraction=0.5))  # each valid, not both
        said = refused(repo, env, "repro", "split")
        assert "`dvc checkout split` brings back those kept in DVC's cache" in said, said
        assert not (repo / "data/split.csv").exists()  # what DVC does before running a stage
    finally:
        (repo / "params.yaml").write_text(text)
    dvc(repo, env, "checkout", "split")
    assert outputs(repo, "data/split.csv") == before
    assert ran(dvc(repo, env, "repro")) == []  # check_params, which passed the bad pair, checks the file again
    assert "up to date" in dvc(repo, env, "status")


EVALUATE_OUTPUTS = ("report.html", "metrics/evaluate.json", "plots/evaluate/confusion.csv")


def test_evaluate_killed_under_dvc_repro_keeps_every_previous_output(pipeline):
    """evaluate's outputs are `persist`: DVC leaves them in place while the stage runs, and the stage
    replaces them together at its end, so a kill mid-stage leaves all of the previous ones."""
    repo, env, _ = pipeline
    before = outputs(repo, *EVALUATE_OUTPUTS)
    assert len(before) == len(EVALUATE_OUTPUTS)
    figures = sorted(p.name for p in (repo / "plots/evaluate/figures").iterdir())
    repro = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "evaluate"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any("stages/evaluate.py" in " ".join(c.cmdline()) for c in children(repro.pid)):
            assert repro.poll() is None and time.monotonic() < deadline, "evaluate never started"
            time.sleep(0.2)
        time.sleep(1.0)  # into the stage's work (models loaded, nothing written yet)
        assert outputs(repo, *EVALUATE_OUTPUTS) == before  # what DVC removed before the command, before
    finally:
        os.killpg(repro.pid, signal.SIGKILL)
        repro.wait(timeout=30)
    assert outputs(repo, *EVALUATE_OUTPUTS) == before
    assert sorted(p.name for p in (repo / "plots/evaluate/figures").iterdir()) == figures
    assert "up to date" in dvc(repo, env, "status")


def children(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


QUICK_STAGES = ["train_cnn", "train_lm@lstm", "train_lm@gru", "train_transformer", "evaluate"]


def test_demo_runs_the_training_stages_with_the_quick_profile_and_full_repro_replaces_them(pipeline):
    """`make demo` (python -m primer.demo): the same stages with the `quick` section laid over the
    params, a banner in the report and a tag in MLflow; params.yaml is left as it was, so the next
    `dvc repro` retrains at the full params and the banner goes."""
    repo, env, _ = pipeline
    params_text = (repo / "params.yaml").read_text()
    result = subprocess.run([sys.executable, "-m", "primer.demo"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran(result.stdout) == QUICK_STAGES  # the data stages' outputs do not depend on the profile
    assert "every stage ran with the quick profile" in result.stdout
    assert (repo / "params.yaml").read_text() == params_text
    assert 'id="profile-banner"' in (repo / "report.html").read_text()
    assert json.loads((repo / "metrics/train_cnn.json").read_text())["epochs"] == 1
    assert json.loads((repo / "metrics/lm/gru.json").read_text())["epochs"] == 1
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("primer").experiment_id], order_by=["start_time DESC"])
    latest = {}
    for run in runs:
        latest.setdefault(run.info.run_name, run)
    assert all(latest[s].data.tags["primer.profile"] == "quick" for s in QUICK_STAGES)
    assert latest["train_transformer"].data.params["train_transformer.num_pairs"] == "40"
    assert latest["split"].data.tags["primer.profile"] == "full"

    status = dvc(repo, env, "status")
    assert "train_cnn" in status and "split" not in status  # dvc.lock holds the quick params
    full = dvc(repo, env, "repro")  # stages already run at these params come back from DVC's run cache
    assert all(f"Running stage '{s}'" in full or f"Stage '{s}' is cached" in full for s in QUICK_STAGES), full
    assert json.loads((repo / "metrics/train_cnn.json").read_text())["epochs"] == 2
    assert "profile-banner" not in (repo / "report.html").read_text()
    assert "up to date" in dvc(repo, env, "status")
