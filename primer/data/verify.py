"""Check every file under the class folders with a full decode; keep what converts to RGB.

`Image.verify()` (the primer's check) reads only the headers and passes truncated files, so each
file is decoded completely, exactly as the augment stage will decode it.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import Field

from primer.data.images import open_rgb
from primer.data.parallel import parallel_map
from primer.errors import PrimerError
from primer.params import Section, run_only


class Verify(Section):
    """The `verify` section (the served CNN repeats its `max_image_pixels`)."""

    num_workers: int = run_only(ge=0, le=1024)
    max_image_pixels: int = Field(ge=1)  # larger photos are refused as decompression bombs


REASONS = ("empty", "truncated", "not_an_image", "undecodable", "decompression_bomb", "unreadable")


@dataclass(frozen=True)
class Checked:
    path: str  # relative to the images root, '/'-separated
    label: str  # class folder name
    reason: str = ""  # empty when kept, else one of REASONS
    detail: str = ""
    width: int = 0
    height: int = 0


def _init_worker(max_pixels: int) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels
    # Pillow warns above its limit and errors only at twice it: treat both as a bomb.
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def classify(path: Path) -> tuple[str, str, int, int]:
    """(reason, detail, width, height) for one file; reason is '' for a kept image."""
    try:
        if path.stat().st_size == 0:
            return "empty", "zero bytes", 0, 0
        img = open_rgb(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return "decompression_bomb", str(exc), 0, 0
    except UnidentifiedImageError:
        return "not_an_image", "not a format Pillow can identify", 0, 0
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        return "unreadable", f"{type(exc).__name__}: {exc.strerror}", 0, 0
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "undecodable"
        return reason, str(exc), 0, 0
    except Exception as exc:  # SyntaxError, ValueError, EOFError...: Pillow's ways of saying "bad data"
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() or isinstance(exc, EOFError) else "undecodable"
        return reason, f"{type(exc).__name__}: {text}", 0, 0
    return "", "", img.width, img.height


def _check(item: tuple[str, str, str]) -> Checked:
    root, rel, label = item
    reason, detail, width, height = classify(Path(root) / rel)
    return Checked(rel, label, reason, detail, width, height)


def class_folders(root: Path) -> list[Path]:
    """The class folders under `root`, sorted by name (label order)."""
    if not root.is_dir():
        raise PrimerError(f"image folder {root} does not exist; run the fetch stage first (dvc repro fetch).")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PrimerError(f"image folder {root} has no class folders (e.g. {root}/Cat, {root}/Dog).")
    return folders


def verify_images(root: Path | str, num_workers: int = 0, max_image_pixels: int = 89_478_485) -> list[Checked]:
    """Check every file under each class folder of `root`; results sorted by path.

    Raises `PrimerError` when a class is left with no valid image.
    """
    root = Path(root)
    items = []
    for folder in class_folders(root):
        for path in sorted(folder.rglob("*")):
            if path.is_file() or path.is_symlink():
                items.append((str(root), path.relative_to(root).as_posix(), folder.name))
    results = list(
        parallel_map(_check, items, num_workers, "verify", initializer=_init_worker, initargs=(max_image_pixels,),
                     workers_key="verify.num_workers")
    )
    kept = Counter(r.label for r in results if not r.reason)
    for folder in class_folders(root):
        if not kept[folder.name]:
            raise PrimerError(f"class folder {folder} has no valid image; add images or remove the folder.")
    return results


def summarize(results: list[Checked]) -> dict:
    """Counts for logging: kept per class, rejected per reason and per class."""
    summary: dict = {"kept": len([r for r in results if not r.reason]),
                     "rejected": len([r for r in results if r.reason])}
    for r in results:
        key = f"rejected/{r.reason}" if r.reason else f"kept/{r.label}"
        summary[key] = summary.get(key, 0) + 1
    for reason in REASONS:
        summary.setdefault(f"rejected/{reason}", 0)
    return summary
