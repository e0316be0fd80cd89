"""Keep the best model of each family in MLflow's model registry.

The evaluate stage registers each model it scored, the pyfunc model "model" of its training run, as
a version of `primer-cnn`, `primer-lm-VARIANT` or `primer-translator` (once per training run; the
version's run is that training run), tags the version with its test metric, and moves the alias
`champion` to it only when it beats the version the alias points at. `models:/primer-cnn@champion`
is then always the best CNN evaluated so far.

A model's family is its pyfunc's python_model class (primer/serving/served_models.py), which every model
the training stages log carries. `primer classify`, `generate` and `translate` check it (`check_family`)
before sending a model anything, so a registered model of another family (the classifier given to
`primer translate`) is one sentence naming what it is and what the command needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from primer.errors import PrimerError

CHAMPION = "champion"


@dataclass
class Registered:
    name: str
    version: str
    metric: str
    value: float
    champion: str  # the version the alias points at afterwards
    previous: tuple[str, float] | None  # the champion before, (version, its metric), if there was one

    @property
    def took_the_alias(self) -> bool:
        return self.champion == self.version and (self.previous is None or self.previous[0] != self.version)

    def sentence(self) -> str:
        got = f"{self.name} version {self.version} ({self.metric} {self.value:.4g})"
        if self.previous is None:
            return f"{got} is the first {CHAMPION}"
        before = f"version {self.previous[0]} ({self.metric} {self.previous[1]:.4g})"
        if self.took_the_alias:
            return f"{got} beats {before} and is the new {CHAMPION}"
        if self.champion == self.version:
            return f"{got} is already the {CHAMPION}"
        return f"{got} does not beat {before}, which stays the {CHAMPION}"


def better(value: float, than: float, higher_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(than):
        return True
    return value > than if higher_is_better else value < than


def register(mlflow, name: str, run_id: str, metric: str, value: float, higher_is_better: bool) -> Registered | None:
    """Register run `run_id`'s model "model" under `name` (the same version again if this run's model
    is already there), tag it `metric`=`value`, and give it the alias `champion` if it is better than
    the current champion (or there is none). `mlflow` is the mlflow module, set to the store. None
    when the store has no run `run_id`."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None  # trained against another store (or before tracking was on): nothing here to register
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    registered = existing[0] if existing else mlflow.register_model(f"runs:/{run_id}/model", name)
    version = str(registered.version)  # MLflow hands it back as int or str, depending on the call
    client.set_model_version_tag(name, version, metric, repr(float(value)))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    previous = (str(current.version), float(current.tags.get(metric, "nan"))) if current is not None else None
    if previous is None or (previous[0] != version and better(float(value), previous[1], higher_is_better)):
        client.set_registered_model_alias(name, CHAMPION, version)
        champion = version
    else:
        champion = previous[0]
    return Registered(name, version, metric, float(value), champion, previous)


@dataclass(frozen=True)
class Family:
    what: str  # what a model of this family is, for "URI is ..."
    needed: str  # what a command needs, for "`primer CMD` needs ..."
    command: str  # the `primer` command that uses it
    registered: str  # the name evaluate registers it as (one variant, for a language model)


FAMILIES = {  # served model class name: its family
    "PhotoClassifier": Family("primer's cat/dog classifier", "a cat/dog classifier", "classify", "primer-cnn"),
    "TextGenerator": Family("a primer language model", "a language model", "generate", "primer-lm-lstm"),
    "Translator": Family("primer's English-French translator", "a translator", "translate", "primer-translator"),
}


def family_of(model) -> str | None:
    """The served model class a loaded pyfunc model (`mlflow.pyfunc.load_model`'s) wraps, or None when it
    is not one of primer's (another flavor, or another python_model)."""
    from mlflow.exceptions import MlflowException

    try:
        name = type(model.unwrap_python_model()).__name__
    except MlflowException:  # not a python_model pyfunc: an sklearn, transformers, ... model
        return None
    return name if name in FAMILIES else None


def check_family(model, uri: str, wanted: str) -> None:
    """Refuse `model` (loaded from `uri`) in one sentence unless it is of family `wanted`."""
    found = family_of(model)
    if found == wanted:
        return
    needed = FAMILIES[wanted]
    what = FAMILIES[found].what if found else "not one of primer's models"
    raise PrimerError(f"{uri} is {what}; `primer {needed.command}` needs {needed.needed} such as "
                      f"models:/{needed.registered}@{CHAMPION}.")
