"""Prepare training-ready arrays: decode each kept image once, resize, and store uint8 .npy files.

Train images are stored at augment.train_size (the primer's pre-crop Resize((150, 150))), val and
test at augment.eval_size (its Resize((128, 128))), as memory-mappable uint8 arrays (N, S, S, 3) in
split-file order, with int64 labels and meta.json (classes in label order, sizes, counts). JPEGs
are decoded in draft mode at >= draft_oversample x the stored size (0 = full-size decode).
The augmentation policy (augment.policy, 0 turns a step off) is applied at training time; this stage
draws --preview: real training images beside each enabled step, and the policy as trained.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from primer.atomic import atomic_path, refuse_without_room
from primer.data.split import SPLITS
from primer.data.table import read_table
from primer.params import Sections, Seed
from primer.stage import cli, open_stage, stage_parser
from primer.vision.augment_policy import Augment, check_augment
from primer.vision.image_arrays import write_image_array
from primer.vision.preview import augmentation_preview


class Params(Sections):
    seed: Seed
    augment: Augment


def write_split(images: Path, rows: list[dict], classes: list[str], size: int, out: Path, split: str,
                p: Augment) -> None:
    paths = [r["path"] for r in rows]
    write_image_array(images, paths, size, out / f"{split}_images.npy", p.num_workers, p.draft_oversample, split)
    labels = np.array([classes.index(r["label"]) for r in rows], dtype=np.int64)
    with open(out / f"{split}_labels.npy", "wb") as f:
        np.save(f, labels)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--images", required=True, type=Path, help="class folders of raw images (fetch output)")
    parser.add_argument("--split", required=True, help="split CSV written by the split stage")
    parser.add_argument("--out", required=True, type=Path, help="folder of arrays to write")
    parser.add_argument("--preview", required=True, type=Path, help="augmentation preview PNG to write")
    args = parser.parse_args(argv)
    with open_stage("augment", args.params, Params,
                    check=lambda params: check_augment(params.augment.policy, params.augment.train_size)) as (
            params, run):
        p = params.augment
        policy = p.policy
        rows = read_table(args.split, ["path", "label", "split"], "split")
        classes = sorted({r["label"] for r in rows})
        counts = {}
        start = time.perf_counter()
        sizes = {split: p.train_size if split == "train" else p.eval_size for split in SPLITS}
        refuse_without_room(args.out, sum(sizes[r["split"]] ** 2 * 3 for r in rows if r["split"] in sizes))
        with atomic_path(args.out, is_dir=True) as tmp:
            for split in SPLITS:
                chosen = [r for r in rows if r["split"] == split]
                write_split(args.images, chosen, classes, sizes[split], tmp, split, p)
                counts[split] = len(chosen)
            seconds = time.perf_counter() - start
            meta = {"classes": classes, "counts": counts, "train_size": p.train_size, "eval_size": p.eval_size}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        # The preview lives outside the arrays folder: redrawing it must not look like new training data.
        train = np.load(args.out / "train_images.npy", mmap_mode="r")
        picks = sorted(random.Random(params.seed).sample(range(len(train)), min(p.preview_images, len(train))))
        augmentation_preview(train[picks], policy, args.preview, params.seed)
        run.log_artifact(args.preview)
        total = sum(counts.values())
        disk = sum(f.stat().st_size for f in args.out.iterdir())
        run.log_metrics({**{f"images/{k}": v for k, v in counts.items()}, "images_per_s": total / seconds,
                         "disk_mb": disk / 2**20})
        print(f"augment: {total} images in {seconds:.1f}s ({total / seconds:.0f} img/s), {disk / 2**20:.0f} MiB",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
