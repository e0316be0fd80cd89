"""Batched augmentation: pixels equal torchvision's functional ops for given parameters, and the per-sample
parameters follow the distributions of torchvision's transforms."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2
from torchvision.transforms.functional import _get_perspective_coeffs
from torchvision.transforms.v2 import InterpolationMode

from primer.vision import augment_policy
from primer.vision.augment_policy import AugmentPolicy, Cutout
from primer.vision.batch_augment import (
    MEAN,
    STD,
    augment_batch,
    brightness,
    color_jitter,
    contrast,
    crop_flip,
    cutout,
    eval_batch,
    gaussian_blur,
    hue,
    perspective,
    perspective_coeffs,
    perspective_endpoints,
    rotate,
    sample_params,
    saturation,
)

OFF = {
    "crop_size": 0,
    "hflip": 0,
    "vflip": 0,
    "rotate_deg": 0,
    "brightness": 0,
    "contrast": 0,
    "saturation": 0,
    "hue": 0,
}
EVERY = {
    "crop_size": 24,
    "hflip": 0.5,
    "vflip": 0.5,
    "rotate_deg": 20,
    "brightness": 0.5,
    "contrast": 0.3,
    "saturation": 0.4,
    "hue": 0.1,
    "perspective": 0.5,
    "perspective_p": 0.5,
    "blur_kernel": 5,
    "blur_sigma_min": 0.3,
    "blur_sigma_max": 2.0,
    "cutout_size": 8,
    "cutout_count": 2,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, H, W, 3) uint8: smooth gradients plus noise, with a few grey and saturated pixels."""
    g = gen(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2], dim=-1) * 200 + torch.rand(b, 1, 1, 3, generator=g) * 55
    img = (base + torch.randn(b, h, w, 3, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    img[:, :3, :3] = 128  # grey
    img[:, -3:, :3] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # saturated red
    return img


def float_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1]."""
    return uint8_images(b, h, w, seed).permute(0, 3, 1, 2).float() / 255


def tv_normalize(chw_uint8: torch.Tensor) -> torch.Tensor:
    return TF.normalize(TF.to_dtype(chw_uint8, torch.float32, scale=True), list(MEAN), list(STD))


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalized -> [0, 1]."""
    return x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


def primer_cutout(img: torch.Tensor, centres: list[tuple[int, int]], size: int, monkeypatch) -> torch.Tensor:
    """The primer's Cutout on (C, H, W), its random centres replaced by `centres`."""
    draws = iter([v for centre in centres for v in centre])
    with monkeypatch.context() as patch:
        patch.setattr(augment_policy.random, "randint", lambda lo, hi: next(draws))
        return Cutout(size, len(centres))(img)


# --- pixels: equal to torchvision for given parameters ---------------------------------------------------


def test_all_off_is_eval_batch_is_torchvision_normalize():
    images = uint8_images(4, 20, 30)
    expected = torch.stack([tv_normalize(img) for img in images.permute(0, 3, 1, 2)])
    ours = augment_batch(images, AugmentPolicy(**OFF), gen(0))
    assert ours.shape == (4, 3, 20, 30) and ours.dtype == torch.float32
    assert torch.allclose(ours, expected, rtol=0, atol=1e-6)
    assert torch.allclose(eval_batch(images), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("flips", [{"hflip": 1.0}, {"vflip": 1.0}, {"hflip": 1.0, "vflip": 1.0}])
def test_certain_flips_equal_torchvision_flips(flips):
    images = uint8_images(3, 16, 16)
    ours = augment_batch(images, AugmentPolicy(**{**OFF, **flips}), gen(0))
    chw = images.permute(0, 3, 1, 2)
    if "hflip" in flips:
        chw = TF.horizontal_flip(chw)
    if "vflip" in flips:
        chw = TF.vertical_flip(chw)
    assert torch.allclose(ours, tv_normalize(chw), rtol=0, atol=1e-6)
    assert not torch.allclose(ours, eval_batch(images))


def test_crop_with_given_offsets_equals_torchvision_crop():
    images = uint8_images(4, 20, 30)
    top, left = torch.tensor([0, 3, 8, 5]), torch.tensor([0, 14, 2, 7])
    no = torch.zeros(4, dtype=torch.bool)
    ours = crop_flip(images, top, left, 12, 16, no, no)
    chw = images.permute(0, 3, 1, 2)
    expected = torch.stack([TF.crop(chw[i], int(top[i]), int(left[i]), 12, 16) for i in range(4)])
    assert torch.equal(ours.permute(0, 3, 1, 2), expected)
    flipped = crop_flip(images, top, left, 12, 16, torch.tensor([True, False, True, False]), ~no)
    assert torch.equal(flipped[0], expected[0].permute(1, 2, 0).flip(0, 1))
    assert torch.equal(flipped[1], expected[1].permute(1, 2, 0).flip(0))


def test_crop_larger_than_the_images_is_an_error():
    with pytest.raises(ValueError, match="crop_size"):
        augment_batch(uint8_images(1, 20, 20), AugmentPolicy(**{**OFF, "crop_size": 21}), gen(0))


@pytest.mark.parametrize(
    "ours, theirs, factors",
    [
        (brightness, TF.adjust_brightness, [0.0, 0.5, 1.0, 1.5, 2.0]),
        (contrast, TF.adjust_contrast, [0.0, 0.7, 1.0, 1.3, 2.0]),
        (saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.4, 2.0]),
        (hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.25, 0.5]),
    ],
)
def test_colour_ops_with_given_factors_equal_torchvision(ours, theirs, factors):
    images = float_images(5, 12, 14)
    f = torch.tensor(factors)
    expected = torch.stack([theirs(images[i], float(f[i])) for i in range(5)])
    assert torch.allclose(ours(images, f), expected, rtol=0, atol=1e-5)


def test_colour_jitter_applies_each_samples_own_order():
    images = float_images(6, 10, 10)
    order = torch.stack([torch.randperm(4, generator=gen(i)) for i in range(6)])
    factors = [
        torch.linspace(0.6, 1.4, 6),
        torch.linspace(1.3, 0.7, 6),
        torch.linspace(0.5, 1.5, 6),
        torch.linspace(-0.2, 0.2, 6),
    ]
    tv_ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    expected = []
    for i in range(6):
        img = images[i]
        for op in order[i].tolist():
            img = tv_ops[op](img, float(factors[op][i]))
        expected.append(img)
    assert torch.allclose(color_jitter(images.clone(), order, factors), torch.stack(expected), rtol=0, atol=1e-5)
    # with a step off, the others keep their order
    off = color_jitter(images.clone(), order, [factors[0], None, factors[2], None])
    first_b = order[0].tolist().index(0) < order[0].tolist().index(2)
    b_then_s = TF.adjust_saturation(TF.adjust_brightness(images[0], float(factors[0][0])), float(factors[2][0]))
    s_then_b = TF.adjust_brightness(TF.adjust_saturation(images[0], float(factors[2][0])), float(factors[0][0]))
    assert torch.allclose(off[0], b_then_s if first_b else s_then_b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (27, 40)])
def test_rotation_by_given_angles_equals_torchvision_rotate(size):
    images = float_images(7, *size)
    angles = torch.tensor([0.0, 90.0, -90.0, 30.0, -12.5, 180.0, 7.3])
    ours = rotate(images, angles)
    expected = torch.stack(
        [TF.rotate(images[i], float(a), interpolation=InterpolationMode.NEAREST, fill=0) for i, a in enumerate(angles)]
    )
    # the same grid and nearest sampling: equal here; allow 0.1% of pixels for ties rounded the other way
    differ = (ours - expected).abs().amax(dim=1) > 1e-6
    assert differ.float().mean() <= 1e-3
    if size[0] == size[1]:
        assert torch.equal(ours[1], torch.rot90(images[1], 1, dims=(-2, -1)))


def test_positive_angles_turn_counter_clockwise():
    image = torch.zeros(1, 3, 11, 11)
    image[0, :, 5, 9] = 1.0  # right of the centre
    out = rotate(image, torch.tensor([90.0]))
    assert out[0, 0, 1, 5] == 1.0 and out.sum() == 3.0  # now above it


def test_blur_with_given_sigmas_equals_torchvision_gaussian_blur():
    images = float_images(4, 16, 18)
    sigmas = torch.tensor([0.1, 0.8, 2.0, 5.0])
    expected = torch.stack([TF.gaussian_blur(images[i], [5, 5], [float(s), float(s)]) for i, s in enumerate(sigmas)])
    assert torch.allclose(gaussian_blur(images, 5, sigmas), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (27, 40)])
def test_perspective_with_given_corners_equals_torchvision_perspective(size):
    h, w = size
    images = float_images(4, h, w)
    ends = perspective_endpoints(0.6, 4, h, w, gen(1))
    start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    coeffs = perspective_coeffs(ends, h, w)
    for i in range(4):
        assert torch.allclose(coeffs[i], torch.tensor(_get_perspective_coeffs(start, ends[i].tolist())), atol=1e-6)
    expected = torch.stack(
        [TF.perspective(images[i], start, ends[i].tolist(), InterpolationMode.BILINEAR, fill=0) for i in range(4)]
    )
    # float32 sums in another order move the sample points by ~1e-6 px: values agree to 1e-4
    assert torch.allclose(perspective(images, coeffs), expected, rtol=0, atol=1e-4)


def test_cutout_at_given_centres_equals_the_primers_cutout(monkeypatch):
    images = float_images(3, 20, 24) + 0.01  # no zeros before the cut
    cy, cx = torch.tensor([[0, 10], [19, 5], [7, 7]]), torch.tensor([[0, 12], [23, 0], [3, 20]])
    ours = cutout(images.clone(), cy, cx, 6)
    for i in range(3):
        centres = list(zip(cy[i].tolist(), cx[i].tolist()))
        assert torch.equal(ours[i], primer_cutout(images[i], centres, 6, monkeypatch))
    assert (ours == 0).any()


def test_every_step_replays_with_torchvision_from_the_sampled_parameters(monkeypatch):
    """augment_batch == torchvision's functional ops, sample by sample, fed the parameters it drew."""
    policy = AugmentPolicy(**EVERY)
    images = uint8_images(12, 32, 32)
    p = sample_params(policy, 12, 32, 32, gen(5))
    c = policy.crop_size
    start = [[0, 0], [c - 1, 0], [c - 1, c - 1], [0, c - 1]]
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    expected = []
    for i, img in enumerate(images.permute(0, 3, 1, 2)):
        x = TF.crop(TF.to_dtype(img, torch.float32, scale=True), int(p["top"][i]), int(p["left"][i]), c, c)
        x = TF.horizontal_flip(x) if p["hflip"][i] else x
        x = TF.vertical_flip(x) if p["vflip"][i] else x
        for op in p["order"][i].tolist():
            x = ops[op](x, float(p[names[op]][i]))
        x = TF.rotate(x, float(p["angle"][i]), interpolation=InterpolationMode.NEAREST, fill=0)
        if p["perspective"][i]:
            x = TF.perspective(x, start, p["endpoints"][i].tolist(), InterpolationMode.BILINEAR, fill=0)
        x = TF.gaussian_blur(x, [5, 5], [float(p["sigma"][i])] * 2)
        x = primer_cutout(x, list(zip(p["cut_y"][i].tolist(), p["cut_x"][i].tolist())), policy.cutout_size, monkeypatch)
        expected.append(TF.normalize(x, list(MEAN), list(STD)))
    ours = augment_batch(images, policy, gen(5))
    assert 0 < p["perspective"].sum() < 12 and 0 < p["hflip"].sum() < 12  # both branches exercised
    assert torch.allclose(ours, torch.stack(expected), rtol=0, atol=1e-4)  # seen: 1.3e-5


# --- parameters: the distributions of torchvision's transforms --------------------------------------------


def test_flip_rate_matches_the_probability():
    images = uint8_images(1, 6, 6).expand(2000, 6, 6, 3)
    plain = eval_batch(images[:1])
    ours = augment_batch(images, AugmentPolicy(**{**OFF, "hflip": 0.5}), gen(0))
    flipped = (ours == plain.flip(-1)).flatten(1).all(1)
    assert flipped.logical_xor((ours == plain).flatten(1).all(1)).all()  # each output is one or the other
    assert abs(flipped.float().mean() - 0.5) < 0.04


def test_crop_offsets_are_uniform():
    h, w, c, n = 20, 26, 12, 3000
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    positions = torch.stack([y, x, torch.zeros_like(y)], dim=-1).to(torch.uint8).expand(n, h, w, 3)
    ours = augment_batch(positions, AugmentPolicy(**{**OFF, "crop_size": c}), gen(0))
    corner = (unnormalize(ours)[:, :2, 0, 0] * 255).round().long()  # (top, left) of each crop
    for offsets, high in ((corner[:, 0], h - c), (corner[:, 1], w - c)):
        assert offsets.min() == 0 and offsets.max() == high
        assert abs(offsets.float().mean() - high / 2) < 0.3
        freq = torch.bincount(offsets, minlength=high + 1).float() / n
        assert (freq - 1 / (high + 1)).abs().max() < 0.03


def test_brightness_factors_are_uniform_in_the_range():
    b, n = 0.5, 2000
    grey = torch.full((n, 4, 4, 3), 100, dtype=torch.uint8)  # 100 * 1.5 < 255: never clipped
    ours = unnormalize(augment_batch(grey, AugmentPolicy(**{**OFF, "brightness": b}), gen(0)))
    factors = ours[:, 0, 0, 0] / (100 / 255)
    assert torch.allclose(ours, factors.view(-1, 1, 1, 1) * 100 / 255 * torch.ones_like(ours), atol=1e-5)
    assert factors.min() >= 1 - b - 1e-4 and factors.max() <= 1 + b + 1e-4
    assert factors.min() < 1 - b + 0.01 and factors.max() > 1 + b - 0.01
    assert abs(factors.mean() - 1) < 0.02 and abs(factors.std() - b / 3**0.5) < 0.02


def test_colour_jitter_statistics_match_torchvisions_colour_jitter():
    n, colour = 1000, torch.tensor([0.6, 0.35, 0.2])
    image = colour.view(3, 1, 1).expand(3, 4, 4).contiguous()
    jitter = v2.ColorJitter(0.5, 0.3, 0.4, 0.1)
    torch.manual_seed(0)
    theirs = torch.stack([jitter(image)[:, 0, 0] for _ in range(n)])  # (n, 3)
    policy = AugmentPolicy(**{**OFF, "brightness": 0.5, "contrast": 0.3, "saturation": 0.4, "hue": 0.1})
    batch = (image * 255).round().to(torch.uint8).permute(1, 2, 0).expand(n, 4, 4, 3)
    ours = unnormalize(augment_batch(batch, policy, gen(0)))[:, :, 0, 0]
    assert (ours.mean(0) - theirs.mean(0)).abs().max() < 0.02
    assert (ours.std(0) - theirs.std(0)).abs().max() < 0.02
    assert ours.std(0).min() > 0.05  # it did jitter


def test_sampled_angles_sigmas_and_centres_are_uniform():
    policy = AugmentPolicy(**EVERY)
    p = sample_params(policy, 4000, 40, 40, gen(0))
    for values, lo, hi in ((p["angle"], -20, 20), (p["sigma"], 0.3, 2.0)):
        assert lo <= values.min() < lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) < values.max() <= hi
        assert abs(values.mean() - (lo + hi) / 2) < 0.02 * (hi - lo)
        assert abs(values.std() - (hi - lo) / 12**0.5) < 0.02 * (hi - lo)
    c = policy.crop_size
    assert p["cut_y"].min() == 0 and p["cut_y"].max() == c - 1 and abs(p["cut_x"].float().mean() - (c - 1) / 2) < 0.3
    assert abs(p["perspective"].float().mean() - policy.perspective_p) < 0.03
    assert all((p["order"].sort(dim=1).values == torch.arange(4)).all(1))  # each order is a permutation
    assert abs((p["order"][:, 0] == 2).float().mean() - 0.25) < 0.03


def test_perspective_corners_span_torchvisions_ranges():
    h = w = 24
    ends = perspective_endpoints(0.5, 3000, h, w, gen(0))  # (B, 4, 2) x, y of tl, tr, br, bl
    bound = int(0.5 * (h // 2)) + 1  # as RandomPerspective: randint(0, bound) from each edge
    lows = torch.tensor([[0, 0], [w - bound, 0], [w - bound, h - bound], [0, h - bound]])
    assert torch.equal(ends.amin(0), lows) and torch.equal(ends.amax(0), lows + bound - 1)
    assert (ends.float().mean(0) - (lows + (bound - 1) / 2)).abs().max() < 0.15


# --- reproducibility, shapes, independence ------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output():
    images, policy = uint8_images(8, 40, 40), AugmentPolicy(**EVERY)
    before = images.clone()
    a, b = augment_batch(images, policy, gen(1)), augment_batch(images, policy, gen(1))
    assert torch.equal(a, b) and torch.equal(images, before)
    assert not torch.allclose(a, augment_batch(images, policy, gen(2)))
    g = gen(1)
    augment_batch(images, policy, g)
    assert not torch.allclose(a, augment_batch(images, policy, g))  # the generator moved on


def test_default_policy_shape_dtype_device():
    out = augment_batch(uint8_images(5, 150, 150), AugmentPolicy(), gen(0))
    assert out.shape == (5, 3, 128, 128) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.is_contiguous()


def test_identical_images_in_a_batch_get_their_own_augmentation():
    images = uint8_images(1, 40, 40).expand(4, 40, 40, 3)
    out = augment_batch(images, AugmentPolicy(**EVERY), gen(0))
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i + 1, 4))


def test_steps_that_are_off_draw_nothing():
    assert set(sample_params(AugmentPolicy(**OFF), 2, 8, 8, gen(0))) == {"hflip", "vflip"}
    assert "hue" not in sample_params(AugmentPolicy(**{**OFF, "brightness": 0.2}), 2, 8, 8, gen(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("blur", "atol"), [(0, 1e-3), (5, 2e-2)])
def test_cuda_gives_the_cpu_result_for_the_same_seed(blur, atol):
    """The same draws on both devices; float rounding differs a little (and cuDNN may run the blur in TF32)."""
    images = uint8_images(16, 64, 64)
    policy = AugmentPolicy(**{**EVERY, "crop_size": 48, "perspective_p": 0.7, "blur_kernel": blur})
    cpu = augment_batch(images, policy, gen(3))
    cuda = augment_batch(images.cuda(), policy, gen(3))
    assert cuda.device.type == "cuda" and cuda.shape == cpu.shape
    far = ((cuda.cpu() - cpu).abs() > atol).float().mean()
    assert far < 1e-3  # at most a rare nearest-neighbour tie rounded the other way
    assert not torch.allclose(cuda.cpu(), augment_batch(images, policy, gen(4)), atol=atol)
    assert torch.allclose(eval_batch(images.cuda()).cpu(), eval_batch(images), rtol=0, atol=1e-6)


def test_packed_parameters_come_back_exactly():
    """What to_device sends to a GPU in one copy: every dtype and shape the augmentation uses, byte for byte."""
    from primer.vision.batch_augment import pack, unpack

    g = gen(0)
    tensors = {"top": torch.randint(0, 30, (5,), generator=g), "hflip": torch.rand(5, generator=g) < 0.5,
               "angle": torch.rand(5, generator=g) * 30 - 15, "cut_y": torch.randint(0, 9, (5, 3), generator=g),
               "jitter0": torch.tensor([0, 3, 4]), "coeffs": torch.randn(2, 8, generator=g),
               "none": torch.zeros(0, dtype=torch.long)}
    buffer, layout = pack(tensors)
    assert buffer.dtype == torch.uint8 and all(start % 8 == 0 for _, _, _, start, _ in layout)
    back = unpack(buffer.clone(), layout)
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t), name
    # and to_device's path for another device, where only dtypes and shapes can be seen (no CUDA here)
    from primer.vision.batch_augment import to_device

    sent = to_device(tensors, torch.device("meta"))
    assert all(sent[k].device.type == "meta" and sent[k].dtype == t.dtype and sent[k].shape == t.shape
               for k, t in tensors.items())
    assert to_device(tensors, torch.device("cpu"))["top"] is tensors["top"]  # already there: no copy
