"""Load and validate sections of `params.yaml` before a stage does any work.

A schema maps each key to a `Field` (or to a nested schema dict). Validation rejects unknown keys,
missing keys, wrong types and out-of-range values with one sentence naming the key, the value and
what is allowed. Each field also says what it changes (`effect`): the stage's result (the default:
what it learns or computes), only its outputs beside a trained model (`output_only`: how many example
translations to write), or only how the run goes (`run_only`: device, compile, logging and checkpoint
cadence, worker counts). A stage's dvc.yaml `params:` list names exactly its result and output fields,
so a run-only change reruns nothing (tested), and a training checkpoint's fingerprint covers exactly
its result fields (`result_values`), so a resumed run never continues one trained differently.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from primer.errors import PrimerError


@dataclass(frozen=True)
class Field:
    """One scalar param: its type and the values allowed."""

    kind: type  # int, float, str or bool
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    odd_or_zero: bool = False  # kernel sizes: 0 (off) or an odd number
    false_means: str | None = None  # a str choice that YAML reads as false when unquoted (`off`, `no`)
    effect: str = "result"  # "result", "output" or "run": see the module docstring

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.kind]
        if self.odd_or_zero:
            noun = "0 or an odd integer"
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{noun} >= {self.low:g}"
        if self.high is not None:
            return f"{noun} <= {self.high:g}"
        return noun

    def check(self, value: Any) -> Any:
        """Return the value (ints widened to float for float fields) or None when it is not allowed."""
        if self.kind is bool:
            return value if isinstance(value, bool) else None
        if self.kind is str:
            if value is False and self.false_means is not None:
                return self.false_means
            if not isinstance(value, str):
                return None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        elif self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                return None
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                return None
        if self.choices is not None and value not in self.choices:
            return None
        if self.low is not None and value < self.low:
            return None
        if self.high is not None and value > self.high:
            return None
        if self.odd_or_zero and value != 0 and value % 2 == 0:
            return None
        return value


def integer(low: float | None = None, high: float | None = None) -> Field:
    return Field(int, low, high)


def number(low: float | None = None, high: float | None = None) -> Field:
    return Field(float, low, high)


def text() -> Field:
    return Field(str)


def flag() -> Field:
    return Field(bool)


def choice(*options: Any, false_means: str | None = None) -> Field:
    return Field(type(options[0]), choices=tuple(options), false_means=false_means)


def odd_kernel(high: int = 99) -> Field:
    return Field(int, 0, high, odd_or_zero=True)


def output_only(field: Field) -> Field:
    """A field that changes a stage's outputs but not what it trains (not in the checkpoint fingerprint)."""
    return replace(field, effect="output")


def run_only(field: Field) -> Field:
    """A field that changes how a run goes, not what it writes (listed nowhere in dvc.yaml)."""
    return replace(field, effect="run")


def result_values(values: dict, schema: dict) -> dict:
    """`values` (a validated section) with only its result fields: what a checkpoint's fingerprint covers."""
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = result_values(values[key], spec)
        elif isinstance(spec, EachOf):
            out[key] = {name: result_values(section, spec.schema) for name, section in values[key].items()}
        elif isinstance(spec, SomeOf):
            out[key] = result_values(values[key], spec.schema)
        elif spec.effect == "result":
            out[key] = values[key]
    return out


@dataclass(frozen=True)
class EachOf:
    """A mapping of user-chosen names (e.g. model variants) to sections that share one schema."""

    schema: dict


def each_of(schema: dict) -> EachOf:
    return EachOf(schema)


@dataclass(frozen=True)
class SomeOf:
    """Some keys of a section another stage owns: these are checked, the others are that stage's business."""

    schema: dict


def some_of(schema: dict) -> SomeOf:
    return SomeOf(schema)


Schema = dict  # key -> Field | EachOf | SomeOf | Schema


# YAML 1.2 numbers: PyYAML resolves YAML 1.1, where `5e-05` (what `dvc exp run -S` writes) and `1e-3`
# are strings because 1.1 wants a dot and a signed exponent. A float is digits with a dot, an exponent,
# or both; plain integers stay ints.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+)
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (tried before ints and everything else)."""

    yaml_implicit_resolvers = {
        char: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
        for char, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


for _char in "-+0123456789.":
    ParamsLoader.yaml_implicit_resolvers.setdefault(_char, []).insert(0, (_FLOAT_TAG, _FLOAT))


def _refuse_duplicate_keys(node: yaml.Node, where: str, file: str) -> None:
    """A key written twice in one mapping is an error (YAML would silently keep the last one)."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}[{i}]", file)
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
        name = f"{where}.{key}" if where else key
        line = key_node.start_mark.line + 1
        if key in lines:
            raise PrimerError(
                f"{file}: key '{name}' is written twice (lines {lines[key]} and {line}); keep one of them.")
        lines[key] = line
        _refuse_duplicate_keys(value_node, name, file)


def parse_yaml(text: str, file: str):
    """YAML text -> Python data, with YAML 1.2 numbers and duplicate keys refused (`file` names it in errors)."""
    loader = ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", file)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    """Read a params file; a missing or malformed file is a `PrimerError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise PrimerError(f"params file '{path}' not found; run from the repository root or pass --params PATH.")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PrimerError(f"params file '{path}' is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from None
    if not isinstance(data, dict):
        raise PrimerError(f"params file '{path}' must hold a mapping of sections, not {type(data).__name__}.")
    return data


def validate(values: Any, schema: Schema, where: str, file: str, partial: bool = False) -> dict:
    """Check `values` against `schema`; `where` is the dotted key prefix used in messages."""
    dotted = f"'{where}'" if where else "the top level"
    if not isinstance(values, dict):
        raise PrimerError(f"{file}: {dotted} must be a mapping of keys, not {values!r}.")
    unknown = sorted(set(values) - set(schema))
    if unknown and where and not partial:  # other top-level sections belong to other stages
        key = f"{where}.{unknown[0]}"
        raise PrimerError(f"{file}: unknown key '{key}'; allowed keys in '{where}' are: {', '.join(schema)}.")
    out = {}
    for key, spec in schema.items():
        name = f"{where}.{key}" if where else key
        if key not in values:
            raise PrimerError(f"{file}: key '{name}' is missing; add it ({_expect(spec)}).")
        if isinstance(spec, dict):
            out[key] = validate(values[key], spec, name, file)
            continue
        if isinstance(spec, EachOf):
            out[key] = _validate_each(values[key], spec.schema, name, file)
            continue
        if isinstance(spec, SomeOf):
            out[key] = validate(values[key], spec.schema, name, file, partial=True)
            continue
        checked = spec.check(values[key])
        if checked is None:
            raise PrimerError(f"{file}: '{name}' is {values[key]!r}, but it must be {spec.describe()}.")
        out[key] = checked
    return out


def _validate_each(values: Any, schema: dict, where: str, file: str) -> dict:
    if not isinstance(values, dict) or not values:
        raise PrimerError(f"{file}: '{where}' must be a mapping of names to sections, not {values!r}.")
    for name in values:
        if not (isinstance(name, str) and name.replace("_", "").isalnum()):
            raise PrimerError(f"{file}: '{where}' has the name {name!r}; use letters, digits and '_' only.")
    return {name: validate(section, schema, f"{where}.{name}", file) for name, section in values.items()}


def _expect(spec) -> str:
    return "a section" if isinstance(spec, (dict, EachOf, SomeOf)) else spec.describe()


# `profile: quick` (what `make demo` sets for one run) lays the `quick` section over these sections.
# Only stages whose dvc.yaml params list `profile` and `quick.<section>` may read them (tested).
PROFILES = ("full", "quick")
QUICK_SECTIONS = ("train_cnn", "train_lm", "train_transformer")


def _overlay(base: dict, over: dict, where: str, file: str) -> dict:
    """`base` with the keys of `over` replaced, section by section; a key `base` lacks is an error."""
    out = dict(base)
    for key, value in over.items():
        name = f"{where}.{key}" if where else key
        if key not in base:
            raise PrimerError(f"{file}: 'quick.{name}' overrides '{name}', which the file does not have; "
                              f"fix the name or remove it from 'quick'.")
        if isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _overlay(base[key], value, name, file)
        else:
            out[key] = value
    return out


def apply_profile(raw: dict, file: str) -> dict:
    """The params as the run uses them: as written for `profile: full` (or no profile key), with the
    `quick` section laid over them for `profile: quick`."""
    profile = raw.get("profile", "full")
    if profile not in PROFILES:
        raise PrimerError(f"{file}: 'profile' is {profile!r}, but it must be one of {', '.join(PROFILES)}.")
    quick = raw.get("quick", {})
    if not isinstance(quick, dict):
        raise PrimerError(f"{file}: 'quick' must be a mapping of sections, not {quick!r}.")
    for section in quick:
        if section not in QUICK_SECTIONS:
            raise PrimerError(f"{file}: 'quick.{section}' is not allowed; the quick profile may change "
                              f"{', '.join(QUICK_SECTIONS)} (the stages whose dvc.yaml params list it).")
    if profile == "full":
        return raw
    return _overlay(raw, quick, "", file)


def load_params(path: Path | str, schema: Schema) -> dict:
    """Load the top-level keys that `schema` names from `path` (after its `profile`) and validate them.
    A file that has a `profile` key gets it back too, for the stage's run to record."""
    raw = apply_profile(read_yaml(Path(path)), str(path))
    params = validate(raw, schema, "", str(path))
    if "profile" in raw:
        params["profile"] = raw["profile"]
    return params


def flatten(params: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for logging."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
