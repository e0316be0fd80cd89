"""Read a params file as DVC reads it, refuse a key written twice, and lay the quick profile over it.

The file is read by ruamel.yaml's safe loader, as DVC reads params.yaml, so primer and DVC see the same values:
YAML 1.2, where `5e-05` (what `dvc exp run -S` writes) is a number and `yes` is a string. A key written twice in one
mapping is one sentence naming the key and both lines (from the parsed nodes' marks).
"""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from primer.errors import PrimerError


def _refuse_duplicate_keys(node: Node, where: str, file: str) -> None:
    """A key written twice in one mapping is an error, named with both lines."""
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}[{i}]", file)
    if not isinstance(node, MappingNode):
        return
    lines: dict = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else str(key_node.start_mark)
        name = f"{where}.{key}" if where else key
        line = key_node.start_mark.line + 1
        if key in lines:
            raise PrimerError(
                f"{file}: key '{name}' is written twice (lines {lines[key]} and {line}); keep one of them.")
        lines[key] = line
        _refuse_duplicate_keys(value_node, name, file)


def parse_yaml(text: str, file: str):
    """YAML text -> Python data as DVC reads it, with duplicate keys refused (`file` names it in errors)."""
    yaml = YAML(typ="safe")
    node = yaml.compose(text)
    if node is None:
        return None
    _refuse_duplicate_keys(node, "", file)
    return yaml.constructor.construct_document(node)  # the nodes already parsed, not the text again


def read_yaml(path: Path) -> dict:
    """Read a params file; a missing or malformed file is a `PrimerError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise PrimerError(f"params file '{path}' not found; run from the repository root or pass --params PATH.")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PrimerError(f"params file '{path}' is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from None
    if not isinstance(data, dict):
        raise PrimerError(f"params file '{path}' must hold a mapping of sections, not {type(data).__name__}.")
    return data


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
