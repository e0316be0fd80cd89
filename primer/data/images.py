"""Decode one image file to upright RGB, the same way for the verify and augment stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; 16/32-bit grey keeps its top 8 bits instead of clipping."""
    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(img).astype(np.int64)
        shift = 8 if grey.max(initial=0) <= 0xFFFF else 24
        img = Image.fromarray((np.clip(grey, 0, None) >> shift).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); malformed EXIF counts as upright, not as a bad file."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # broken EXIF is no reason to lose a decodable photo
        return 1
    return value if value in TRANSPOSE else 1


def open_rgb(path: Path | str, draft_size: int = 0) -> Image.Image:
    """Fully decode `path` into an upright RGB image.

    `draft_size` > 0 lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while keeping both sides
    at least `draft_size` pixels: the whole bitstream is still decoded, only the IDCT is smaller.
    """
    with Image.open(path) as img:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        turn = TRANSPOSE.get(orientation(img))
        img = to_rgb(img)
        return img.transpose(turn) if turn is not None else img
