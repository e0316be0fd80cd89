"""The checkout: its paths, its project files (git's, or .dockerignore's without .git) and committed copies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent")
    return SHARED_DATASETS


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line, translated as Docker does: `**` spans folders, `*` does not."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def excluded(path: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def code_files(root: Path = REPO) -> list[str]:
    """The project's own files under `root`, relative: git's tracked files, or, in a checkout without .git
    (a tarball, a copy rsynced to a GPU host), every file the image's build context keeps (.dockerignore)."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
        return listed.split()
    rules = dockerignore_rules((root / ".dockerignore").read_text())
    found = (path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    return sorted(name for name in found if not name.startswith(".git/") and not excluded(name, rules))


def copy_repo(dest: Path, root: Path = REPO) -> Path:
    """The project's files of the checkout at `root` (code_files) in a new git repository at `dest`, committed."""
    for name in code_files(root):
        if (root / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest
