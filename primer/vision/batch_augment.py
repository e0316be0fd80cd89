"""The augmentation policy applied to a whole batch at once, on the batch's device.

Why not torchvision.transforms.v2: its functional ops take one parameter set per call, so independent
parameters per sample would need a Python loop over the batch (slow on CPU, many tiny kernels on the
GPU). Here torchvision's formulas run batched with torch's own ops and per-sample parameters: crops and
flips as index gathers, colour ops on (B,) factors (hue as one fused formula), rotation and perspective
as per-sample sampling grids (computed as torchvision computes them) for grid_sample, blur as a grouped
conv2d. So they run on the GPU and keep the distributions of torchvision's transforms; the tests check
the pixels against torchvision's functional ops and the parameter statistics against its transforms.

Every random draw comes from the `generator` passed in, on the host (a CPU generator, as in training), so
CPU and GPU see the same random stream. The host also works out which samples take which colour step and
which take a perspective (numpy, no device involved) and solves the perspective coefficients; then all
of it goes to the images' device as one pinned buffer in one non-blocking copy. So a training step on a
GPU never waits on the host: no `.item()`, no data-dependent shapes on the device, no per-tensor copies
(tests/training/test_host_syncs.py checks it; constants are made once per device). One difference from
the per-image pipeline: torchvision runs it on uint8 and rounds (or truncates) after each colour, blur
and perspective step; here everything after the crop stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from primer.vision.augment_policy import AugmentPolicy

# Set inside a block that works on host tensors only, by design: the host-sync probe of the tests and benchmarks
# (benchmarks/host_sync_probe.py) does not count what runs there.
HOST_ONLY: ContextVar[bool] = ContextVar("host_only", default=False)

MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the primer's Normalize
STD = (0.229, 0.224, 0.225)


@contextmanager
def host_only() -> Iterator[None]:
    """A block that touches host tensors only: not a synchronisation on any device."""
    token = HOST_ONLY.set(True)
    try:
        yield
    finally:
        HOST_ONLY.reset(token)


def augment_batch(images: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, c, c) float32 normalized, c = policy.crop_size or H."""
    b, h, w, _ = images.shape
    return apply_params(images, policy, sample_params(policy, b, h, w, generator))


def eval_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalized, no augmentation (val/test)."""
    return normalize(_to_unit(images))


@lru_cache(maxsize=64)
def _const(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A constant tensor, made on `device` once and reused (a host-to-device copy per call otherwise)."""
    return torch.tensor(values, dtype=dtype, device=device)


def to_device(tensors: dict, device: torch.device) -> dict:
    """{name: host tensor} on `device`: as they are when already there; else `pack`ed into one pinned host
    buffer and sent in one non-blocking copy, then `unpack`ed (views of the sent buffer)."""
    if all(t.device == device for t in tensors.values()):
        return dict(tensors)
    buffer, layout = pack(tensors, pin=torch.cuda.is_available() and device.type == "cuda")
    return unpack(buffer.to(device, non_blocking=True), layout)


def pack(tensors: dict, pin: bool = False) -> tuple[torch.Tensor, list]:
    """({name: host tensor} as one uint8 buffer, each tensor's bytes at an 8-byte aligned offset; its layout)."""
    layout, offset = [], 0
    with host_only():
        raws = {name: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for name, t in tensors.items()}
        for name, t in tensors.items():
            layout.append((name, t.dtype, t.shape, offset, raws[name].numel()))
            offset += -(-raws[name].numel() // 8) * 8
        buffer = torch.empty(max(offset, 8), dtype=torch.uint8, pin_memory=pin)
        for name, _, _, start, size in layout:
            buffer[start:start + size].copy_(raws[name])
    return buffer, layout


def unpack(buffer: torch.Tensor, layout: list) -> dict:
    """The tensors `pack` put in `buffer` (wherever it is now), as views of it."""
    return {name: buffer[start:start + size].view(dtype).view(shape) for name, dtype, shape, start, size in layout}


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1], as ToDtype(float32, scale=True)."""
    return x.permute(0, 3, 1, 2).contiguous().float().mul_(1 / 255)


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def _randint(generator: torch.Generator, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=generator.device)


def _uniform(generator: torch.Generator, lo: float, hi: float, b: int) -> torch.Tensor:
    return lo + (hi - lo) * _rand(generator, b)


def sample_params(policy: AugmentPolicy, b: int, h: int, w: int, generator: torch.Generator) -> dict:
    """{name: (B, ...) tensor} for every enabled step, drawn on the generator's device."""
    g, c = generator, policy.crop_size
    if c > h or c > w:
        raise ValueError(f"crop_size {c} is larger than the images ({h}x{w})")
    drawn = {"top": _randint(g, h - c + 1, b), "left": _randint(g, w - c + 1, b)} if c else {}
    h, w = (c, c) if c else (h, w)  # the size after the crop
    drawn["hflip"], drawn["vflip"] = _rand(g, b) < policy.hflip, _rand(g, b) < policy.vflip
    if policy.brightness or policy.contrast or policy.saturation or policy.hue:
        drawn["order"] = _rand(g, b, 4).argsort(dim=1)  # a uniform random order of the 4 colour ops
        for name in ("brightness", "contrast", "saturation"):
            if x := getattr(policy, name):
                drawn[name] = _uniform(g, max(0.0, 1 - x), 1 + x, b)
        if policy.hue:
            drawn["hue"] = _uniform(g, -policy.hue, policy.hue, b)
    if policy.rotate_deg:
        drawn["angle"] = _uniform(g, -policy.rotate_deg, policy.rotate_deg, b)
    if policy.perspective and policy.perspective_p:
        drawn["perspective"] = _rand(g, b) < policy.perspective_p
        drawn["endpoints"] = perspective_endpoints(policy.perspective, b, h, w, g)
    if policy.blur_kernel:
        drawn["sigma"] = _uniform(g, policy.blur_sigma_min, policy.blur_sigma_max, b)
    if policy.cutout_size and policy.cutout_count:
        drawn["cut_y"], drawn["cut_x"] = _randint(g, h, b, policy.cutout_count), _randint(g, w, b, policy.cutout_count)
    return drawn


def perspective_endpoints(distortion: float, b: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 4, 2) corners (x, y) top-left, top-right, bottom-right, bottom-left, as RandomPerspective draws them:
    each corner moves inwards by up to int(distortion * half side) pixels along each axis."""
    bound_h, bound_w = int(distortion * (h // 2)) + 1, int(distortion * (w // 2)) + 1
    dx, dy = _randint(generator, bound_w, b, 4), _randint(generator, bound_h, b, 4)
    x = _const((0, w - bound_w, w - bound_w, 0), dx.device, torch.long) + dx
    y = _const((0, 0, h - bound_h, h - bound_h), dy.device, torch.long) + dy
    return torch.stack([x, y], dim=-1)


def apply_params(images: torch.Tensor, policy: AugmentPolicy, drawn: dict) -> torch.Tensor:
    """(B, H, W, 3) uint8 + sampled parameters (on the host) -> (B, 3, c, c) float32 normalized.

    What depends on the drawn values (which samples take which step) is decided on the host; the values
    and those sample indices reach the images' device together in one copy (`to_device`)."""
    dev, (b, h, w, _) = images.device, images.shape
    drawn = {k: v.cpu() for k, v in drawn.items()}  # a no-op for draws made on the host, as in training
    c = (policy.crop_size or h, policy.crop_size or w)
    with host_only():  # decisions from the host's random numbers: numpy and host tensors, no device
        send = {k: v for k, v in drawn.items() if k not in ("order", "perspective", "endpoints")}
        factors = [drawn.get(k) for k in ("brightness", "contrast", "saturation", "hue")]
        jitter = jitter_steps(drawn["order"], factors) if "order" in drawn else []
        send.update({f"jitter{i}": torch.from_numpy(idx) for i, (_, idx) in enumerate(jitter)})
        if "perspective" in drawn:
            warped = torch.from_numpy(np.flatnonzero(drawn["perspective"].numpy()))
            if len(warped):
                # solved here
                send["warped"], send["coeffs"] = warped, perspective_coeffs(drawn["endpoints"][warped], *c)
    on = to_device(send, dev)
    top, left = (on["top"], on["left"]) if "top" in drawn else (torch.zeros(b, dtype=torch.long, device=dev),) * 2
    x = crop_flip(images, top, left, *c, on["hflip"], on["vflip"])
    x = _to_unit(x)  # (B, 3, c, c): float from here on, after the crop has dropped pixels
    if jitter:
        steps = [(op_id, on[f"jitter{i}"]) for i, (op_id, _) in enumerate(jitter)]
        x = _jitter(x, steps, [on.get(k) for k in ("brightness", "contrast", "saturation", "hue")])
    if "angle" in drawn:
        x = rotate(x, on["angle"])
    if "warped" in on:
        idx = on["warped"]
        x.index_copy_(0, idx, perspective(x.index_select(0, idx), on["coeffs"]))
    if "sigma" in drawn:
        x = gaussian_blur(x, policy.blur_kernel, on["sigma"])
    if "cut_y" in drawn:
        x = cutout(x, on["cut_y"], on["cut_x"], policy.cutout_size)
    return normalize(x)


def crop_flip(images, top, left, ch: int, cw: int, hflip, vflip) -> torch.Tensor:
    """(B, H, W, 3) -> (B, ch, cw, 3): each sample's crop at (top, left), flipped where asked, as two gathers."""
    b, w = len(images), images.shape[2]
    rows = torch.arange(ch, device=images.device).expand(b, ch)  # (B, ch)
    cols = torch.arange(cw, device=images.device).expand(b, cw)  # (B, cw)
    rows = top[:, None] + torch.where(vflip[:, None], ch - 1 - rows, rows)
    cols = left[:, None] + torch.where(hflip[:, None], cw - 1 - cols, cols)
    x = images[torch.arange(b, device=images.device)[:, None], rows]  # (B, ch, W, 3): whole rows
    # columns as byte offsets in a row (3 per pixel): gathering bytes beats indexing 3-byte pixels
    offsets = (cols[:, :, None] * 3 + torch.arange(3, device=images.device)).view(b, 1, cw * 3)
    return x.reshape(b, ch, w * 3).gather(2, offsets.expand(b, ch, cw * 3)).view(b, ch, cw, 3)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet normalized, in place."""
    mean, std = (_const(v, x.device).view(3, 1, 1) for v in (MEAN, STD))
    return x.sub_(mean).div_(std)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """clamp(a * ratio + b * (1 - ratio), 0, 1), ratio (B,) per sample (one fused lerp)."""
    return torch.lerp(b, a, ratio.view(-1, 1, 1, 1)).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (r * 0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (rgb -> hsv, h = (h + shift) mod 1, hsv -> rgb) fused, a few times faster than
    its _rgb_to_hsv/_hsv_to_rgb: with the hue in sixths h6, channel n in (R, G, B) = (5, 3, 1) comes out as
    v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6."""
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    v = torch.maximum(torch.maximum(r, g), b)
    chroma = v - torch.minimum(torch.minimum(r, g), b)
    d = chroma.clamp_min(1e-30)  # greys: chroma 0 and numerators 0, so any hue gives v
    h6 = torch.where(v == r, (g - b) / d, torch.where(v == g, (b - r) / d + 2, (r - g) / d + 4))
    k = h6.add_(6 * shift.view(-1, 1, 1)).unsqueeze(1) + _const((5.0, 3.0, 1.0), x.device).view(3, 1, 1)
    k = k.sub_(k.div(6).floor_().mul_(6))  # (B, 3, H, W) in [0, 6)
    return chroma.unsqueeze(1).mul(torch.minimum(k, 4 - k).clamp_(0, 1)).neg_().add_(v.unsqueeze(1))


def jitter_steps(order: torch.Tensor, factors: list) -> list[tuple[int, np.ndarray]]:
    """The colour steps in the order they run, from a host (B, 4) op order: (op id, the samples doing that
    op in that slot), skipping ops that are off (`factors[op] is None`) and empty subsets."""
    host, steps = order.cpu().numpy(), []
    for slot in range(4):
        for op_id, f in enumerate(factors):
            idx = np.flatnonzero(host[:, slot] == op_id)
            if f is not None and len(idx):
                steps.append((op_id, idx))
    return steps


def color_jitter(x: torch.Tensor, order: torch.Tensor, factors: list) -> torch.Tensor:
    """ColorJitter with a per-sample op order (B, 4) over (brightness, contrast, saturation, hue);
    `factors` holds a (B,) tensor per op or None where the op is off."""
    steps = [(op_id, torch.from_numpy(idx).to(x.device)) for op_id, idx in jitter_steps(order, factors)]
    return _jitter(x, steps, factors)


def _jitter(x: torch.Tensor, steps: list, factors: list) -> torch.Tensor:
    """Each (op id, sample indices on x's device) in turn: the op on those samples, in place."""
    ops = (brightness, contrast, saturation, hue)
    for op_id, idx in steps:
        f = factors[op_id]
        if len(idx) == len(x):
            x = ops[op_id](x, f)
        else:
            x.index_copy_(0, idx, ops[op_id](x.index_select(0, idx), f[idx]))
    return x


def _grid(theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(B, n, 3) matrices applied to every (x, y, 1) of the grid xs (W,) by ys (H,) -> (B, H, W, n).

    As broadcast sums (a x + c) + b y rather than affine_grid's bmm: ~5x faster on CPU, and no TF32 matmul
    on the GPU (its 10-bit mantissa would move sample points by a fraction of a pixel)."""
    t = theta.transpose(1, 2)[:, :, None, None, :]  # (B, 3, 1, 1, n)
    return (t[:, 0] * xs[None, :, None] + t[:, 2]) + t[:, 1] * ys[:, None, None]


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each (B, C, H, W) sample about its centre by its angle (counter-clockwise), nearest, fill 0."""
    h, w = x.shape[-2:]
    a = torch.deg2rad(degrees.double())  # cos and sin in float64 as torchvision: cos(90°) is 6e-17, not -4e-8
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    # as torchvision's _affine_grid: output pixel (x, y) from the centre samples the input at R(angle) (x, y),
    # scaled to grid_sample's [-1, 1] by 2 / w and 2 / h
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(-1, 2, 3).float()
    theta = torch.stack([theta[:, 0] / (w / 2), theta[:, 1] / (h / 2)], dim=1)
    xs, ys = (torch.linspace((1 - n) / 2, (n - 1) / 2, n, device=x.device) for n in (w, h))
    return F.grid_sample(x, _grid(theta, xs, ys), mode="nearest", padding_mode="zeros", align_corners=False)


def perspective_coeffs(endpoints: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, 2) end corners -> (B, 8) coefficients mapping output pixels to input pixels, as torchvision's
    _get_perspective_coeffs (solved in float64, returned as float32)."""
    end = endpoints.double()
    start = _const(((0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)), end.device, torch.float64)
    ex, ey, one, zero = end[..., 0], end[..., 1], torch.ones_like(end[..., 0]), torch.zeros_like(end[..., 0])
    sx, sy = start[:, 0], start[:, 1]
    row_x = torch.stack([ex, ey, one, zero, zero, zero, -sx * ex, -sx * ey], dim=-1)  # (B, 4, 8)
    row_y = torch.stack([zero, zero, zero, ex, ey, one, -sy * ex, -sy * ey], dim=-1)
    a = torch.stack([row_x, row_y], dim=2).view(-1, 8, 8)
    rhs = start.reshape(1, 8, 1).expand(len(end), 8, 1)
    return torch.linalg.solve(a, rhs).squeeze(-1).float()


def perspective(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Per-sample homographies (B, 8) on (B, C, H, W), bilinear, fill 0, with torchvision's grid and fill mask."""
    b, c, h, w = x.shape
    # input pixel = (a x + b y + c, d x + e y + f) / (g x + h y + 1) at output pixel centres (x, y) = (i + 0.5, j + 0.5)
    half = _const((w / 2, h / 2, 1.0), x.device).view(1, 3, 1)  # to [0, 2]; the -1 comes last
    theta = torch.cat([coeffs, torch.ones(b, 1, device=x.device)], dim=1).view(b, 3, 3) / half
    xyz = _grid(theta, torch.arange(w, device=x.device) + 0.5, torch.arange(h, device=x.device) + 0.5)  # (B, H, W, 3)
    grid = (xyz[..., :2] / xyz[..., 2:]).sub_(1.0)
    # torchvision samples a ones channel alongside and multiplies by it: with fill 0, edge pixels fade twice
    out = F.grid_sample(torch.cat([x, x.new_ones(b, 1, h, w)], dim=1), grid, mode="bilinear", align_corners=False)
    return out[:, :c] * out[:, c:]


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma (B,) Gaussian blur of (B, C, H, W), torchvision's kernel, reflect padding, separable.
    (On CUDA, cuDNN may run the conv in TF32 (torch.backends.cudnn.allow_tf32): ~1e-3 relative error.)"""
    b, c, h, w = x.shape
    lim = (kernel_size - 1) / (2 * math.sqrt(2))
    t = torch.linspace(-lim, lim, kernel_size, device=x.device)
    kernel = torch.softmax(-(t / sigma[:, None]).pow(2), dim=1).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)  # along rows
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)  # along columns
    return y.view(b, c, h, w)


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero `count` squares per sample: rows [cy - size//2, cy + size//2) by the same columns; cy, cx (B, count)."""
    h, w = x.shape[-2:]
    half, rows, cols = size // 2, torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    mask = torch.zeros(len(x), h, w, dtype=torch.bool, device=x.device)
    for k in range(cy.shape[1]):
        in_rows = (rows >= cy[:, k, None] - half) & (rows < cy[:, k, None] + half)  # (B, H)
        in_cols = (cols >= cx[:, k, None] - half) & (cols < cx[:, k, None] + half)  # (B, W)
        mask |= in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill_(mask[:, None], 0.0)
