"""Settings are typed end to end: the code reads the validated sections' attributes (`params.train_cnn.lr`),
never a setting by string key, and the training loop's config is built from the loop keys that every training
section declares (`FitParams`), never by matching a section's key names to the loop's."""

from __future__ import annotations

import ast

import pytest
import yaml

from primer.errors import PrimerError
from primer.params import load_params, named_sections_of, section_of
from primer.training.cnn_training import TrainCnn
from primer.training.fit_params import FitParams
from primer.training.lm_training import TrainLm
from primer.training.loop import FitConfig
from primer.training.translation_training import TrainTransformer

from helpers.repo import REPO

SETTINGS_VARIABLES = {"params", "p", "section"}  # names the code gives settings: any string key on them is one
# Plain data whose keys happen to be setting names, each for its reason.
PLAIN_DATA = {
    "saved": "a model or checkpoint file's contents",
    "saved['model_args']": "the model arguments saved with a model file",
    "optimizer.param_groups[0]": "the optimizer's own param group",
    "group": "the optimizer's own param group",
    "kept": "a fitted run's metrics",
    "summary": "a fitted run's metrics",
    "tf": "the evaluated translator's results",
    "meta": "the arrays' meta.json",
    "context.model_config": "a served model's config, as MLflow stores it",
    "drawn": "augmentation's random draws per sample",
    "on": "augmentation's random draws per sample, on the device",
    "row": "a table's row",
    "r": "a table's row",
    "values": "a metrics file's numbers",
    "config": "a DVC remote's config",
    "params or {}": "a prediction request's params, as MLflow passes them",
    "params_file": "the raw params.yaml, whose variant names `primer` checks before validating",
    "lm": "the raw params.yaml, whose variant names `primer` checks before validating",
    "params_at": "the raw params.yaml at another commit, whose seed a sweep takes as its default",
    "params.get(section) or {}": "the raw params.yaml at another commit, whose epochs a sweep's pruning reads",
}


def setting_names() -> set[str]:
    """Every section and key name that a stage reads, at any depth."""
    from stages.check_params import READERS

    def walk(section) -> set[str]:
        names = set()
        for key, field in section.model_fields.items():
            names.add(key)
            inner = section_of(field.annotation) or named_sections_of(field.annotation)
            if inner is not None:
                names |= walk(inner)
        return names

    return set().union(*(walk(reader) for reader in READERS.values()))


def string_key_reads(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each read of a setting by string key in `source`: `X["key"]` or `X.get("key")` where X is
    named like settings or the key is a setting's name, unless X is plain data."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            receiver, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args:
            receiver, key = node.func.value, node.args[0]
        else:
            continue
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            continue
        text = ast.unparse(receiver)
        base = text.split(".")[0].split("[")[0].split("(")[0]
        if (base in SETTINGS_VARIABLES or key.value in names) and not {text, base} & set(PLAIN_DATA):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_setting_is_read_by_string_key_in_primer_or_stages():
    names = setting_names()
    files = sorted([*(REPO / "primer").rglob("*.py"), *(REPO / "stages").glob("*.py")])
    reads = [f"{path.relative_to(REPO)}:{line}: {code}" for path in files
             for line, code in string_key_reads(path.read_text(), names)]
    assert not reads, "settings read by string key; read the validated section's attribute instead:\n" + "\n".join(
        reads)


@pytest.mark.parametrize("code", [
    'p = params["train_cnn"]',
    'lr = p["lr"]',
    'section["epochs"]',
    'aug = settings["augment"]',
    'flip = aug["policy"]["hflip"]',
    'profile = params.get("profile", "full")',
    'FitConfig(epochs=train["epochs"])',
])
def test_the_scan_finds_a_setting_read_by_string_key(code):
    assert string_key_reads(code, setting_names())


def test_the_scan_leaves_plain_data_alone():
    code = 'saved["model"], meta["train_size"], group["lr"], row["label"], answer["text"], spec.get("name")'
    assert string_key_reads(code, setting_names()) == []


@pytest.mark.parametrize("section", [TrainCnn, TrainLm, TrainTransformer])
def test_every_training_section_declares_and_writes_every_loop_key(section):
    assert issubclass(section, FitParams)
    name = {TrainCnn: "train_cnn", TrainLm: "train_lm", TrainTransformer: "train_transformer"}[section]
    written = yaml.safe_load((REPO / "params.yaml").read_text())[name]
    assert set(FitParams.model_fields) <= set(written)


def test_the_loop_config_is_built_from_the_declared_loop_keys():
    loop = FitParams(epochs=7, grad_clip=0.5, min_delta=0.25, schedule="onecycle", warmup_epochs=1.5, val_every=2,
                     checkpoint_every=3, log_every=4)
    config = FitConfig.of(loop, patience=5, desc="train_cnn")
    assert {key: getattr(config, key) for key in FitParams.model_fields} == loop.model_dump()
    assert (config.patience, config.desc) == (5, "train_cnn")
    with pytest.raises(TypeError):  # a stage's setting never replaces a loop key
        FitConfig.of(loop, epochs=1)


def test_a_training_section_without_a_loop_key_is_refused(tmp_path):
    from stages import train_cnn

    lines = (REPO / "params.yaml").read_text().splitlines(keepends=True)
    start = lines.index("train_cnn:\n")
    unwritten = next(i for i in range(start, len(lines)) if lines[i].startswith("  checkpoint_every:"))
    path = tmp_path / "params.yaml"
    path.write_text("".join(lines[:unwritten] + lines[unwritten + 1:]))
    with pytest.raises(PrimerError, match="key 'train_cnn.checkpoint_every' is missing; add it"):
        load_params(path, train_cnn.Params)


def test_the_stages_read_typed_sections():
    from stages import train_cnn

    params = load_params(REPO / "params.yaml", train_cnn.Params)
    assert isinstance(params.train_cnn, TrainCnn) and isinstance(params.train_cnn.lr, float)
