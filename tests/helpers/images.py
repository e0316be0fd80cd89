"""Tiny real image files made on the fly: photo-like pictures, a PNG decompression bomb, class folders of JPEGs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (gradients + noise), so JPEG and resizing behave as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    noisy = base + rng.normal(0, 20, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid black PNG of width x height (1 bit per pixel): a few kilobytes that decode to
    width x height pixels, a decompression bomb for anything that decodes it whole."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + the packed bits of one row
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.compress(row * (height % 1000))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows + packer.flush()) + chunk(b"IEND", b"")


def write_class_folders(root: Path, per_class: int = 6, classes=("Cat", "Dog"), size=(64, 48)) -> Path:
    """root/{Cat,Dog}/i.jpg: tiny valid JPEGs."""
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(size[0] + i, size[1], seed=c * 100 + i).save(folder / f"{i}.jpg", quality=90)
    return root
