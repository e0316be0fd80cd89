"""Fetch the raw data: the PetImages photos, The Time Machine and the fra-eng sentence pairs.

Each source in params.yaml (fetch.sources.NAME) has a `url` (http(s)://, file:// or a local path to
a file or folder), a `sha1` (checked for files; "" skips the check) and a `member` (the folder inside
an archive to keep; "" keeps all). Archives are extracted safely; a folder is copied as it is.
Downloads are cached in --downloads, resumed after an interruption and retried on network errors.
Example (offline): dvc exp run -S fetch.sources.petimages.url=/data/PetImages
"""

from __future__ import annotations

import time
from pathlib import Path

from primer.data.fetch import fetch_source
from primer.errors import PrimerError
from primer.params import Section, Sections, run_only
from primer.stage import cli, open_stage, stage_parser


class Source(Section):
    url: str  # http(s)://, file:// or a local path
    sha1: str  # "" skips the check
    member: str  # the folder inside an archive to keep; "" keeps all


class Sources(Section):
    petimages: Source
    timemachine: Source
    fra_eng: Source


class Fetch(Section):
    retries: int = run_only(ge=0, le=20)
    timeout: float = run_only(ge=1, le=3600)
    sources: Sources


class Params(Sections):
    fetch: Fetch


def parse_targets(pairs: list[str], names: list[str]) -> dict:
    targets = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    if len(targets) != len(pairs) or set(targets) != set(names):
        raise PrimerError(f"give exactly one --target NAME=PATH for each source ({', '.join(names)}); got {pairs}.")
    return targets


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--downloads", required=True, help="folder caching downloaded files (not a DVC output)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=PATH", help="where source NAME goes")
    args = parser.parse_args(argv)
    targets = parse_targets(args.target, list(Sources.model_fields))
    with open_stage("fetch", args.params, Params) as (params, run):
        p = params.fetch
        for name, source in p.sources:  # a model iterates over its (key, value) pairs
            start = time.perf_counter()
            out = fetch_source(
                f"fetch.sources.{name}", source.url, source.sha1, source.member, targets[name],
                downloads=Path(args.downloads), retries=p.retries, timeout=p.timeout,
                params_file=str(args.params),
            )
            files = [f for f in ([out] if out.is_file() else out.rglob("*")) if f.is_file()]
            run.log_metrics({
                f"{name}/files": len(files),
                f"{name}/bytes": sum(f.stat().st_size for f in files),
                f"{name}/seconds": time.perf_counter() - start,
            })
            print(f"fetch: {name}: {len(files)} file(s) -> {out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
