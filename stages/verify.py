"""Verify the images: fully decode every file under each class folder, in parallel on all cores.

Keeps every image that converts to RGB (grey, CMYK, palette, RGBA, 16-bit; EXIF orientation applied)
and rejects, with a reason, files that are empty, truncated, not images (Thumbs.db, HTML saved as
.jpg), undecodable, decompression bombs (over verify.max_image_pixels) or unreadable. Writes the
manifest of kept images (path, label, width, height), the rejects (path, reason, detail) and a JSON
summary of the counts. Class labels are the folder names.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from primer.atomic import write_text
from primer.data.table import write_table
from primer.data.verify import Verify, summarize, verify_images
from primer.params import Sections
from primer.stage import cli, open_stage, stage_parser


class Params(Sections):
    verify: Verify


MANIFEST_COLUMNS = ["path", "label", "width", "height"]
REJECT_COLUMNS = ["path", "label", "reason", "detail"]


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--images", required=True, help="folder holding one sub-folder of images per class")
    parser.add_argument("--manifest", required=True, help="CSV of kept images to write")
    parser.add_argument("--rejects", required=True, help="CSV of rejected files to write")
    parser.add_argument("--summary", required=True, help="JSON of counts to write (DVC metrics)")
    args = parser.parse_args(argv)
    with open_stage("verify", args.params, Params) as (params, run):
        checked = verify_images(args.images, params.verify.num_workers, params.verify.max_image_pixels)
        write_table(args.manifest, [asdict(r) for r in checked if not r.reason], MANIFEST_COLUMNS)
        write_table(args.rejects, [asdict(r) for r in checked if r.reason], REJECT_COLUMNS)
        summary = summarize(checked)
        write_text(args.summary, json.dumps(summary, indent=2) + "\n")
        run.log_metrics(summary)
        run.log_artifact(args.rejects)
        print("verify: " + ", ".join(f"{k}={v}" for k, v in summary.items() if v), flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
