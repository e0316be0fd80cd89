"""Decode images once into memory-mappable uint8 `.npy` arrays of shape (N, S, S, 3), on all cores.

Resizing is torch's antialiased bilinear on uint8 (within 1 grey level of Pillow's, which the
primer's `transforms.Resize` uses on PIL images, and about twice as fast; what torchvision's
`resize` does on a uint8 tensor). Plain RGB/grey JPEGs are decoded by torchvision's libjpeg-turbo
(the same pixels as Pillow's, and faster) unless `fast_jpeg` is off; large JPEGs use Pillow's draft
mode instead, at >= `draft_oversample` x the output size, which measured exact to within 1 level at
2x; every other file goes through Pillow, as in the verify stage. With `fast_jpeg` off, nothing here
imports torchvision (~160 MiB a process): the served CNN decodes that way.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from primer.atomic import atomic_path
from primer.data.images import open_rgb, refuse_too_many_pixels
from primer.data.parallel import parallel_map
from primer.errors import PrimerError

JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision 0.29 deprecates its decoders in favour of TorchCodec, but they are still there in the
# pinned release; the warning would otherwise print once per worker process.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)


def decode_jpeg_fast(data: bytes) -> torch.Tensor:
    """A plain RGB/grey JPEG as upright RGB uint8 (3, H, W) by torchvision's libjpeg-turbo."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                       apply_exif_orientation=True)


def resize_chw(chw: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, size, size) by torch's antialiased bilinear on uint8."""
    if tuple(chw.shape[1:]) == (size, size):
        return chw
    return F.interpolate(chw[None], size=[size, size], mode="bilinear", align_corners=False, antialias=True)[0]


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's start-of-frame marker; None if not found.

    A few microseconds, against ~90 for opening the file with Pillow just to read its size.
    """
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height, data[pos + 9]
        pos += 2 + length
    return None


def _decode_chw(data: bytes, size: int, draft_oversample: int, max_pixels: int = 0,
                fast_jpeg: bool = True) -> torch.Tensor:
    """An encoded image as upright RGB uint8 (3, H, W), at reduced scale when a JPEG is large enough
    for draft mode; one that declares more than `max_pixels` pixels (> 0) is refused undecoded."""
    header = jpeg_header(data) if data[:3] == JPEG_MAGIC else None
    if header is not None:
        width, height, components = header
        refuse_too_many_pixels(width, height, max_pixels)
        draft = size * draft_oversample
        if fast_jpeg and components in (1, 3) and not (draft_oversample and min(width, height) >= 2 * draft):
            try:
                return decode_jpeg_fast(data)
            except RuntimeError:  # anything torchvision refuses, Pillow (which verify used) decodes
                pass
    draft = size * draft_oversample if header is not None else 0
    img = open_rgb(io.BytesIO(data), draft_size=draft, max_pixels=max_pixels)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def resized_array(path: Path | str, size: int, draft_oversample: int = 2) -> np.ndarray:
    """`path` decoded, resized to (size, size) like the primer's `transforms.Resize((size, size))`,
    as a (size, size, 3) uint8 array."""
    return photo_array(Path(path).read_bytes(), size, draft_oversample)


def photo_array(photo: bytes | bytearray | memoryview | np.ndarray, size: int, draft_oversample: int = 2,
                max_pixels: int = 0, fast_jpeg: bool = True) -> np.ndarray:
    """A photo as the augment stage stores it: encoded bytes (as read from an image file) or a uint8
    array (H, W, 3) or (H, W) of any size, resized to a (size, size, 3) uint8 array. With
    `max_pixels` > 0, a photo that declares more pixels than that is a `PrimerError`, before decoding.
    `fast_jpeg` off decodes every JPEG with Pillow (the same pixels, slower, no torchvision)."""
    if isinstance(photo, (bytes, bytearray, memoryview)):
        chw = _decode_chw(bytes(photo), size, draft_oversample, max_pixels, fast_jpeg)
    else:
        array = np.asarray(photo)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            raise PrimerError(
                f"a photo array must be uint8 of shape (H, W, 3) or (H, W), not {array.dtype} {array.shape}.")
        refuse_too_many_pixels(array.shape[1], array.shape[0], max_pixels)
        chw = torch.from_numpy(
            np.ascontiguousarray(array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)))
        chw = chw.permute(2, 0, 1)
    return resize_chw(chw, size).permute(1, 2, 0).numpy()


_job: dict = {}  # per-process state set by _open_job: the open array file and how to fill it


def _open_job(array_path: str, data_offset: int, root: str, size: int, draft_oversample: int) -> None:
    torch.set_num_threads(1)  # one process per core already
    fd = os.open(array_path, os.O_WRONLY)
    _job.update(fd=fd, offset=data_offset, root=Path(root), size=size, draft=draft_oversample)


def _close_job() -> None:
    if "fd" in _job:
        os.close(_job.pop("fd"))


def _fill(item: tuple[int, str]) -> int:
    index, rel = item
    path = _job["root"] / rel
    try:
        row = resized_array(path, _job["size"], _job["draft"])
    except Exception as exc:
        raise PrimerError(f"{path} could not be decoded ({exc}); rerun the verify stage (dvc repro verify).") from None
    # pwrite into the .npy's data block: rows are disjoint, so workers never contend.
    os.pwrite(_job["fd"], row.tobytes(), _job["offset"] + index * row.nbytes)
    return index


def write_image_array(
    root: Path | str, rel_paths: list[str], size: int, out: Path | str, num_workers: int,
    draft_oversample: int, desc: str
) -> None:
    """Write `out` (.npy, uint8, (len(rel_paths), size, size, 3)), row i from `root / rel_paths[i]`."""
    shape = (len(rel_paths), size, size, 3)
    with atomic_path(out) as tmp:
        if not rel_paths:  # an empty split still gets a valid (0, S, S, 3) array; mmap cannot map it
            with open(tmp, "wb") as f:
                np.save(f, np.zeros(shape, np.uint8))
            return
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        offset = array.offset
        del array  # only the header and the file's length were needed
        initargs = (str(tmp), offset, str(root), size, draft_oversample)
        task = f"decoding the {desc} images into {Path(out).name}"
        for _ in parallel_map(_fill, list(enumerate(rel_paths)), num_workers, desc, _open_job, initargs, task=task,
                              workers_key="augment.num_workers"):
            pass
        _close_job()  # with 1 worker the job ran in this process


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) array as the bytes of a PNG file (lossless: it decodes to the same array)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()
