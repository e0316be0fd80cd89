"""Verify + augment throughput on real photos, beside a single-process `Image.open(p).load()` loop.

Runs, in one process and in turn (median of --repeats rounds):
  baseline  a single-process loop of Image.open(p).load() over the photos (a plain full decode)
  verify    primer.data.verify.verify_images on all cores (full decode, EXIF, RGB check, classification)
  augment   primer.vision.image_arrays.write_image_array at the train size (150) on all cores
            (decode once, resize, write the uint8 .npy)
and prints images/s and the ratio to the baseline for each, with 1-worker rows for scale. The last
line, `ratio=X.XX`, is the slower stage over the baseline (target: >= 0.8 x cores).

    python benchmarks/prepare_throughput.py [--images ../shared/datasets/petimages] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from primer.data.parallel import resolve_workers
from primer.data.verify import verify_images
from primer.vision.image_arrays import write_image_array

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "petimages"


def baseline(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as img:
            img.load()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="class folders of photos")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = sorted(p for p in args.images.glob("*/*") if p.is_file())
    if not paths:
        raise SystemExit(f"no photos under {args.images}")
    rel = [p.relative_to(args.images).as_posix() for p in paths]
    cores = resolve_workers(0)
    out = Path(tempfile.mkdtemp()) / "train_images.npy"
    cases = {
        "baseline: Image.open(p).load(), 1 process": lambda: baseline(paths),
        "verify, 1 worker": lambda: verify_images(args.images, num_workers=1),
        f"verify, {cores} workers": lambda: verify_images(args.images, num_workers=cores),
        "augment (decode+resize+write), 1 worker":
            lambda: write_image_array(args.images, rel, 150, out, 1, 2, "augment"),
        f"augment (decode+resize+write), {cores} workers":
            lambda: write_image_array(args.images, rel, 150, out, cores, 2, "augment"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved rounds, so drifting machine load hits every case alike
        for name, fn in cases.items():
            seconds[name].append(timed(fn))
    rate = {name: len(paths) / statistics.median(s) for name, s in seconds.items()}
    base = rate["baseline: Image.open(p).load(), 1 process"]
    print(f"\n{len(paths)} photos from {args.images}; {cores} cores ({platform.processor() or platform.machine()}); "
          f"median of {args.repeats} rounds\n")
    print(f"| {'case':<48} | {'img/s':>7} | {'x baseline':>10} |")
    print(f"|{'-' * 50}|{'-' * 9}|{'-' * 12}|")
    for name in cases:
        print(f"| {name:<48} | {rate[name]:>7.0f} | {rate[name] / base:>10.2f} |")
    verify_all, augment_all = rate[f"verify, {cores} workers"], rate[f"augment (decode+resize+write), {cores} workers"]
    both = 1 / (1 / verify_all + 1 / augment_all)
    print(f"| {'verify then augment, both passes, ' + str(cores) + ' workers':<48} "
          f"| {both:>7.0f} | {both / base:>10.2f} |")
    print(f"\ntarget: slower stage >= 0.8 x cores = {0.8 * cores:.2f} x baseline")
    print(f"ratio={min(verify_all, augment_all) / base:.2f}")


if __name__ == "__main__":
    main()
