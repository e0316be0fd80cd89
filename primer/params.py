"""Params sections as typed definitions, validated before a stage does any work.

Each section of params.yaml is one `Section` (a frozen, strict pydantic model) beside the code that uses
it: its fields are the keys, their types and bounds the validation (`Field(ge=..., le=...)`), and each
field says what it changes (`effect`): the stage's result (the default: what it learns or computes),
only its outputs beside a trained model (`output_only`: how many example translations to write), or only
how the run goes (`run_only`: device, compile, logging and checkpoint cadence, worker counts). A stage's
dvc.yaml `params:` list names exactly its result and output fields (tested), so a run-only change reruns
nothing, and a training checkpoint's fingerprint covers exactly its result fields (`result_values`).

A stage reads the sections it needs through a `Sections` model (other sections belong to other
stages), and the code reads the validated model's attributes (`params.train_cnn.lr`). A stage that reads a
few keys of a section another stage owns declares them in a `Part`, each with that stage's definition
(`field_of`).
Every key is written in params.yaml: a missing one, an unknown one, a wrong type or an out-of-range
value is one sentence naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, TypeVar

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError
from pydantic.fields import FieldInfo

from primer.errors import PrimerError
from primer.params_file import PROFILES, apply_profile, read_yaml

EFFECTS = ("result", "output", "run")


class Section(BaseModel):
    """One params section: unknown keys, wrong types (no "3" for 3, no 1 for true) and NaN are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Sections(Section):
    """The sections of params.yaml one stage reads; the file's other sections are other stages' business."""

    model_config = ConfigDict(extra="ignore")
    _profile: str | None = PrivateAttr(None)

    @property
    def profile(self) -> str | None:
        """The file's `profile` (full, quick), or None for a file without one."""
        return self._profile


class Part(Section):
    """The few keys of a section another stage owns that a stage reads; its other keys are that stage's."""

    model_config = ConfigDict(extra="ignore")


S = TypeVar("S", bound=Section)
P = TypeVar("P", bound=Sections)


Seed = Annotated[int, Field(ge=0)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")]  # a user-chosen name (a model variant)


def param(default: Any = ..., *, effect: str = "result", noun: str | None = None, **constraints) -> Any:
    """A field with its effect (see the module docstring); `noun` replaces its type's name in messages."""
    assert effect in EFFECTS, effect
    extra: dict[str, Any] = {"effect": effect} | ({"noun": noun} if noun else {})
    return Field(default, json_schema_extra=extra, **constraints)


def output_only(default: Any = ..., **constraints) -> Any:
    """A field that changes a stage's outputs but not what it trains (not in the checkpoint fingerprint)."""
    return param(default, effect="output", **constraints)


def run_only(default: Any = ..., **constraints) -> Any:
    """A field that changes how a run goes, not what it writes (listed nowhere in dvc.yaml)."""
    return param(default, effect="run", **constraints)


def _extra(field: FieldInfo) -> dict[str, Any]:
    """What `param` adds to a field (its effect, its noun): always a dict here, never pydantic's callable form."""
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def effect(field: FieldInfo) -> str:
    return _extra(field).get("effect", "result")


def section_of(annotation: Any) -> type[Section] | None:
    """The Section class `annotation` is, or None for a scalar."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def named_sections_of(annotation: Any) -> type[Section] | None:
    """The Section class of a mapping of user-chosen names to sections (`dict[Name, Variant]`), else None."""
    if typing.get_origin(annotation) is dict:
        return section_of(typing.get_args(annotation)[1])
    return None


def field_of(section: type[Section], key: str, effect: str | None = None) -> Any:
    """The definition of `section`'s key `key`, for a `Part` of it; `effect="output"` where the key changes only
    the reading stage's outputs (e.g. a setting of the data that a served model repeats)."""
    field = copy.copy(section.model_fields[key])
    if effect is not None:
        assert effect in EFFECTS, effect
        field.json_schema_extra = {**_extra(field), "effect": effect}
    return field


def result_values(values: dict, section: type[Section]) -> dict:
    """`values` (a validated section) with only its result fields: what a checkpoint's fingerprint covers."""
    out = {}
    for key, field in section.model_fields.items():
        if (inner := section_of(field.annotation)) is not None:
            out[key] = result_values(values[key], inner)
        elif (inner := named_sections_of(field.annotation)) is not None:
            out[key] = {name: result_values(part, inner) for name, part in values[key].items()}
        elif effect(field) == "result":
            out[key] = values[key]
    return out


NOUNS: dict[Any, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def describe(field: FieldInfo) -> str:
    """What a field allows, for messages: "an integer from 1 to 4096", "one of 'cpu', 'cuda'"."""
    if section_of(field.annotation) or named_sections_of(field.annotation):
        return "a section"
    if typing.get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(field.annotation))
    noun = _extra(field).get("noun") or NOUNS[field.annotation]
    low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    if low is not None and high is not None:
        return f"{noun} from {low:g} to {high:g}"
    if low is not None:
        return f"{noun} >= {low:g}"
    if high is not None:
        return f"{noun} <= {high:g}"
    return noun


def _field_at(sections: type[Section], loc: tuple) -> tuple[FieldInfo | None, type[Section]]:
    """The field an error's location names, and the section that holds it."""
    field, owner = None, sections
    node: Any = sections
    for part in loc:
        if section_of(node) is not None:
            owner = node
            field = node.model_fields.get(part)
            if field is None:
                break
            node = field.annotation
        elif named_sections_of(node) is not None:
            node = named_sections_of(node)
    return field, owner


def _sentence(error: Mapping[str, Any], sections: type[Section], file: str) -> str:
    """One pydantic error as one sentence naming the file, the key, the value and what is allowed."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    if loc and loc[-1] == "[key]":  # a user-chosen name that is not one
        where = ".".join(map(str, loc[:-2]))
        return f"{file}: '{where}' has the name {loc[-2]!r}; use letters, digits and '_' only."
    name = ".".join(map(str, loc))
    field, owner = _field_at(sections, loc)
    if kind == "missing":
        assert field is not None  # a missing key is one its section declares
        return f"{file}: key '{name}' is missing; add it ({describe(field)})."
    if kind == "extra_forbidden":
        where = ".".join(map(str, loc[:-1]))
        return f"{file}: unknown key '{name}'{nearest(str(loc[-1]), owner.model_fields)}; allowed keys in " \
               f"'{where}' are: {', '.join(owner.model_fields)}."
    if field is not None and named_sections_of(field.annotation) and len(loc) == _depth(sections, loc):
        return f"{file}: '{name}' must be a mapping of names to sections, not {value!r}."
    if kind in ("model_type", "model_attributes_type", "dataclass_type") or field is None:
        return f"{file}: '{name}' must be a mapping of keys, not {value!r}."
    return f"{file}: '{name}' is {value!r}, but it must be {describe(field)}."


def nearest(key: str, known) -> str:
    """" (did you mean 'lr'?)" for the known key closest to a misspelt `key`, or "" when none is close."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if not match:  # `lr_typo`, `lr2`: a known key that starts it, the longest first
        match = sorted((k for k in known if key.startswith(k) or k.startswith(key)), key=len, reverse=True)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _depth(sections: type[Section], loc: tuple) -> int:
    """How many parts of `loc` lead to the field it names (a mapping of names ends where its names start)."""
    node: Any = sections
    depth = 0
    for part in loc:
        if section_of(node) is None or part not in node.model_fields:
            break
        node, depth = node.model_fields[part].annotation, depth + 1
    return depth


def _first_unwritten(values: Any, section: type[Section], where: str) -> tuple[str, FieldInfo] | None:
    """The first key that has a default in its class (the augmentation policy's are the primer's) but is not
    in the file: params.yaml writes every setting, so what a run used is always there to read."""
    if not isinstance(values, dict):
        return None  # pydantic names what the section should be
    for key, field in section.model_fields.items():
        name = f"{where}.{key}" if where else key
        if key not in values:
            if not field.is_required():
                return name, field
            continue
        if (inner := section_of(field.annotation)) is not None:
            found = _first_unwritten(values[key], inner, name)
        elif (inner := named_sections_of(field.annotation)) is not None and isinstance(values[key], dict):
            found = next(filter(None, (_first_unwritten(v, inner, f"{name}.{n}") for n, v in values[key].items())),
                         None)
        else:
            found = None
        if found:
            return found
    return None


def validate(values: Any, sections: type[S], file: str) -> S:
    """`values` checked against `sections`, as that model (floats for number fields, every key present)."""
    if not isinstance(values, dict):
        raise PrimerError(f"{file}: the top level must be a mapping of keys, not {values!r}.")
    if unwritten := _first_unwritten(values, sections, ""):
        name, field = unwritten
        raise PrimerError(f"{file}: key '{name}' is missing; add it ({describe(field)}).")
    try:
        return sections.model_validate(values)
    except ValidationError as exc:
        raise PrimerError(_sentence(exc.errors()[0], sections, file)) from None
    except PrimerError as exc:  # a section's own check across its keys
        raise PrimerError(f"{file}: {exc}") from None


def load_params(path: Path | str, sections: type[P]) -> P:
    """Load the sections `sections` names from `path` (after its `profile`) and validate them.
    The file's `profile` is the model's `profile`, for the stage's run to record."""
    raw = apply_profile(read_yaml(Path(path)), str(path))
    params = validate(raw, sections, str(path))
    params._profile = raw.get("profile")
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


def check_whole_file(path: Path | str, readers: list[type[Sections]], extra_top: tuple[str, ...] = ()) -> list[str]:
    """Check every key and value of a params file against the stages that read it (`readers`, each a stage's
    `Sections`), for each profile: an unknown key anywhere, a missing one, a wrong type or an out-of-range value
    is a `PrimerError` naming the key (and the nearest known one). `extra_top` are top-level keys that no
    section reads (the profile switch). Returns the top-level keys checked."""
    raw = read_yaml(Path(path))
    apply_profile(raw, str(path))  # the profile switch and the quick section's own shape
    known = {key: None for reader in readers for key in reader.model_fields} | dict.fromkeys(extra_top)
    for key in raw:
        if key not in known:
            raise PrimerError(f"{path}: unknown key '{key}'{nearest(str(key), known)}; no stage reads it, so fix "
                              f"the name or remove it (known top-level keys: {', '.join(known)}).")
    for profile in PROFILES:  # `quick` is laid over the same sections: a typo in it is checked too
        values = apply_profile({**raw, "profile": profile}, str(path))
        for reader in readers:
            validate(values, reader, str(path))
    return list(known)
