"""Augment-stage arrays: the stored val array matches the primer's transforms.Resize((128, 128))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

from primer.data.images import open_rgb
from primer.vision.image_arrays import jpeg_header, photo_array, resize_chw, resized_array, write_image_array

from helpers.images import photo
from helpers.repo import shared_datasets


def primer_resize(path, size: int) -> np.ndarray:
    """The primer's val transform up to ToTensor: PIL open, convert('RGB'), Resize((size, size))."""
    with Image.open(path) as img:
        return np.asarray(transforms.Resize((size, size))(img.convert("RGB"))).astype(int)


@pytest.mark.parametrize("width, height", [(300, 200), (1200, 900)], ids=["torchvision-decode", "draft-decode"])
def test_val_array_matches_primer_resize(tmp_path, width, height):
    (tmp_path / "Cat").mkdir()
    photo(width, height, seed=3).save(tmp_path / "Cat" / "a.jpg", quality=92)
    write_image_array(tmp_path, ["Cat/a.jpg"], 128, tmp_path / "val.npy", num_workers=1, draft_oversample=2, desc="val")
    stored = np.load(tmp_path / "val.npy", mmap_mode="r")
    assert stored.shape == (1, 128, 128, 3) and stored.dtype == np.uint8
    diff = np.abs(stored[0].astype(int) - primer_resize(tmp_path / "Cat" / "a.jpg", 128))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2, (diff.mean(), diff.max())


def test_real_photos_match_primer_resize():
    root = shared_datasets() / "petimages"
    paths = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*"))[::100]
    rows = np.stack([resized_array(root / p, 128) for p in paths]).astype(int)
    refs = np.stack([primer_resize(root / p, 128) for p in paths])
    diff = np.abs(rows - refs)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2, (diff.mean(), diff.max())


@pytest.mark.parametrize("height, width, size", [(37, 53, 16), (200, 120, 128), (9, 9, 32), (64, 64, 64)])
def test_the_resize_is_torchvisions_resize_of_a_uint8_tensor(height, width, size):
    hwc = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(size))
    for chw in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):  # as decoded from an array, and a file
        assert torch.equal(resize_chw(chw, size), TF.resize(chw, [size, size], antialias=True))


def jpeg_bytes(img: Image.Image, **save) -> bytes:
    import io

    out = io.BytesIO()
    img.save(out, "JPEG", **save)
    return out.getvalue()


def test_pillow_alone_decodes_a_jpeg_to_the_fast_decoders_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6
    jpegs = [jpeg_bytes(photo(80, 60, seed=1)), jpeg_bytes(photo(333, 251, seed=2), quality=70),
             jpeg_bytes(photo(90, 70, seed=3).convert("L")), jpeg_bytes(photo(70, 40, seed=4), exif=exif),
             jpeg_bytes(photo(1200, 900, seed=5))]  # the last one in draft mode either way
    root = shared_datasets() / "petimages"
    jpegs += [p.read_bytes() for p in sorted(root.glob("*/*.jpg"))[::40]] if root.is_dir() else []
    for i, data in enumerate(jpegs):
        assert np.array_equal(photo_array(data, 128, fast_jpeg=False), photo_array(data, 128)), i


def test_png_cmyk_and_exif_rotated_go_through_pillow_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    photo(60, 30).save(tmp_path / "rot.jpg", exif=exif)
    photo(60, 30).convert("CMYK").save(tmp_path / "cmyk.jpg")
    photo(60, 30).save(tmp_path / "a.png")
    for name in ("rot.jpg", "cmyk.jpg", "a.png"):
        expected = np.asarray(open_rgb(tmp_path / name).resize((32, 32), Image.Resampling.BILINEAR)).astype(int)
        assert np.abs(resized_array(tmp_path / name, 32).astype(int) - expected).max() <= 1, name


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_follow_the_path_order_with_any_worker_count(tmp_path, workers):
    torch.ones(64).sum()  # torch used in the parent before workers fork, as in a test session
    (tmp_path / "A").mkdir()
    names = []
    for i in range(7):
        Image.new("RGB", (20 + i, 20), (i * 30, 0, 0)).save(tmp_path / "A" / f"{i}.png")
        names.append(f"A/{i}.png")
    write_image_array(tmp_path, names[::-1], 8, tmp_path / "x.npy", num_workers=workers, draft_oversample=2, desc="x")
    red = np.load(tmp_path / "x.npy")[:, 4, 4, 0]
    assert red.tolist() == [i * 30 for i in reversed(range(7))]


def test_empty_split_gives_an_empty_array(tmp_path):
    write_image_array(tmp_path, [], 16, tmp_path / "e.npy", num_workers=2, draft_oversample=2, desc="e")
    assert np.load(tmp_path / "e.npy").shape == (0, 16, 16, 3)


def test_jpeg_header_reads_the_frame_size(tmp_path):
    photo(123, 45).save(tmp_path / "a.jpg", progressive=True)
    photo(10, 20).convert("L").save(tmp_path / "g.jpg")
    assert jpeg_header((tmp_path / "a.jpg").read_bytes()) == (123, 45, 3)
    assert jpeg_header((tmp_path / "g.jpg").read_bytes()) == (10, 20, 1)
    assert jpeg_header(b"\xff\xd8\xff\xe0garbage") is None
