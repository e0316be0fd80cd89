"""The verify stage keeps every image that converts to RGB and rejects each bad file with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from primer.data.verify import summarize, verify_images
from primer.errors import PrimerError

from helpers.images import photo, png_bomb


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photo(40, 20).save(path, "JPEG", exif=exif)


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    good, bad = root / "Cat", root / "Dog"
    good.mkdir(parents=True)
    bad.mkdir()
    # odd but valid
    photo(30, 20).save(good / "rgb.jpg")
    photo(30, 20).convert("L").save(good / "grey.jpg")
    photo(30, 20).convert("CMYK").save(good / "cmyk.jpg")
    photo(30, 20).convert("P").save(good / "palette.png")
    photo(30, 20).convert("RGBA").save(good / "rgba.png")
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).save(good / "grey16.png")
    photo(30, 20).save(good / "image.gif")
    photo(30, 20).save(good / "image.webp")
    exif_rotated_jpeg(good / "rotated.jpg")
    # bad, one per reason
    whole = jpeg_bytes(photo(200, 150))
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (bad / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500)
    (bad / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>Not found</body></html>")
    garbled = bytearray(whole)
    garbled[200:] = b"\x00\xff" * ((len(garbled) - 200) // 2) + b"\x00" * ((len(garbled) - 200) % 2)
    (bad / "garbled.jpg").write_bytes(bytes(garbled))
    (bad / "bomb.png").write_bytes(png_bomb(20000, 20000))
    (bad / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    photo(30, 20).save(bad / "fine.jpg")  # the class keeps one valid image
    return root


EXPECTED_REJECTS = {
    "Dog/empty.jpg": "empty",
    "Dog/truncated.jpg": "truncated",
    "Dog/Thumbs.db": "not_an_image",
    "Dog/page.jpg": "not_an_image",
    "Dog/garbled.jpg": "undecodable",
    "Dog/bomb.png": "decompression_bomb",
    "Dog/dangling.jpg": "unreadable",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_each_bad_file_rejected_with_its_reason_and_odd_valid_ones_kept(odd_folder, workers):
    results = verify_images(odd_folder, num_workers=workers)
    rejected = {r.path: r.reason for r in results if r.reason}
    kept = {r.path for r in results if not r.reason}
    assert rejected == EXPECTED_REJECTS
    assert kept == {
        "Cat/rgb.jpg", "Cat/grey.jpg", "Cat/cmyk.jpg", "Cat/palette.png", "Cat/rgba.png",
        "Cat/grey16.png", "Cat/image.gif", "Cat/image.webp", "Cat/rotated.jpg", "Dog/fine.jpg",
    }
    assert [r.path for r in results] == sorted(r.path for r in results)


def test_exif_orientation_is_applied_to_the_recorded_size(odd_folder):
    rotated = next(r for r in verify_images(odd_folder, num_workers=1) if r.path == "Cat/rotated.jpg")
    assert (rotated.width, rotated.height) == (20, 40)  # stored 40x20, displayed upright


def test_pillow_limit_is_a_param(tmp_path):
    (tmp_path / "A").mkdir()
    photo(100, 100).save(tmp_path / "A" / "big.png")
    photo(10, 10).save(tmp_path / "A" / "small.png")
    results = {r.path: r.reason for r in verify_images(tmp_path, num_workers=1, max_image_pixels=5000)}
    assert results == {"A/big.png": "decompression_bomb", "A/small.png": ""}


def test_summary_counts_per_class_and_reason(odd_folder):
    summary = summarize(verify_images(odd_folder, num_workers=1))
    assert summary["kept/Cat"] == 9 and summary["kept/Dog"] == 1
    assert summary["rejected"] == 7 and summary["rejected/not_an_image"] == 2 and summary["rejected/empty"] == 1


def test_class_with_no_valid_image_is_a_clear_error(tmp_path):
    (tmp_path / "Cat").mkdir()
    (tmp_path / "Dog").mkdir()
    photo(20, 20).save(tmp_path / "Cat" / "a.jpg")
    (tmp_path / "Dog" / "b.jpg").write_bytes(b"")
    with pytest.raises(PrimerError, match=r"class folder .*Dog has no valid image"):
        verify_images(tmp_path, num_workers=1)


def test_missing_image_folder_names_the_stage(tmp_path):
    with pytest.raises(PrimerError, match="run the fetch stage"):
        verify_images(tmp_path / "nope")
