"""Decode one image file to upright RGB, the same way for the verify and augment stages."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import ExifTags, Image

from primer.errors import PrimerError

# Pillow's own decompression-bomb limit (89,478,485 pixels), the default of verify.max_image_pixels.
assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's default is a number; only a caller sets None
PILLOW_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS

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


def refuse_too_many_pixels(width: int, height: int, max_pixels: int) -> None:
    """A photo that declares more than `max_pixels` pixels is refused before it is decoded: a few
    kilobytes of PNG can declare 12000 x 12000 and take gigabytes to decode."""
    if max_pixels and width * height > max_pixels:
        raise PrimerError(f"the photo declares {width} x {height} = {width * height:,} pixels, over the limit of "
                          f"{max_pixels:,} (verify.max_image_pixels); it was not decoded: send a smaller photo, or "
                          "raise the limit if you trust the source.")


def open_rgb(path, draft_size: int = 0, max_pixels: int = 0) -> Image.Image:
    """Fully decode `path` (a path or a binary file object) into an upright RGB image.

    `draft_size` > 0 lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while keeping both sides
    at least `draft_size` pixels: the whole bitstream is still decoded, only the IDCT is smaller.
    `max_pixels` > 0 refuses, from the header alone, a photo that declares more pixels than that
    (a `PrimerError`); 0 leaves only Pillow's own check.
    """
    with warnings.catch_warnings():
        if max_pixels:  # the header is checked below, against max_pixels, instead of Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(path)
        except Image.DecompressionBombError:  # over twice Pillow's limit, refused by Pillow's open itself
            if not max_pixels:
                raise
            limit = Image.MAX_IMAGE_PIXELS
            assert limit is not None  # Pillow raises DecompressionBombError only while it has a limit
            raise PrimerError(f"the photo declares more than {2 * limit:,} pixels, over the limit of "
                              f"{max_pixels:,} (verify.max_image_pixels); it was not decoded: "
                              "send a smaller photo.") from None
    with img:
        refuse_too_many_pixels(img.width, img.height, max_pixels)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        turn = TRANSPOSE.get(orientation(img))
        img = to_rgb(img)
        return img.transpose(turn) if turn is not None else img
