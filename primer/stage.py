"""What every stage script shares: its argument parser, params loading and error handling."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from primer.errors import PrimerError
from primer.params import Sections, load_params
from primer.repro_params import check_unchanged_since_repro_began, check_unchanged_since_stage_began
from primer.tracking import StageRun, Terminated, stage_run

NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # a read-only or another user's checkout
P = TypeVar("P", bound=Sections)


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """An argparse parser whose --help is the script's docstring; adds --params."""
    summary, _, details = (doc or "").strip().partition("\n")
    parser = argparse.ArgumentParser(
        description=summary, epilog=details.strip() or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    return parser


def load_checked(params_file: Path, sections: type[P], check: Callable[[P], object] | None = None) -> P:
    """The stage's params, validated key by key and then by `check(params)`, the stage's checks across
    keys (or against its inputs); a `PrimerError` from `check` is prefixed with the params file read.
    Under DVC, a file that changed since the repro's first stage is refused (`primer.repro_params`)."""
    params = load_params(params_file, sections)
    check_unchanged_since_repro_began(Path(params_file))
    if check is not None:
        try:
            check(params)
        except PrimerError as exc:
            raise PrimerError(f"{params_file}: {exc}") from None
    return params


@contextmanager
def open_stage(
    name: str, params_file: Path, sections: type[P], system_metrics: bool = False,
    check: Callable[[P], object] | None = None,
) -> Iterator[tuple[P, StageRun]]:
    """Validate the stage's params (before any work, and before a tracking run exists to hold a
    failure), then open its tracking run. Under DVC, a params file that changed while the stage ran fails
    it, so that DVC does not record values the stage did not use."""
    params = load_checked(params_file, sections, check)
    started = check_unchanged_since_repro_began(Path(params_file))
    with stage_run(name, params.model_dump(), system_metrics, near=Path(params_file),
                   profile=params.profile or "full") as run:
        yield params, run
        check_unchanged_since_stage_began(Path(params_file), started)


def restore_hint(outputs_kept: bool) -> str:
    """Under `dvc repro` (DVC names the stage in DVC_STAGE), DVC removes a stage's outputs before it runs it,
    unless they are `persist`: how to bring back the cached ones after the stage refused to run."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or outputs_kept:
        return ""
    return (f" (DVC removed this stage's previous outputs before running it: `dvc checkout {stage}` brings back "
            "those kept in DVC's cache, and the next run that succeeds writes them all)")


def cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, outputs_kept: bool = False) -> int:
    """Run a stage's main(); user errors print one line and exit 1, interrupts exit 130/143. `outputs_kept`:
    the stage's outputs are `persist` in dvc.yaml (or it has none worth restoring), so DVC left them in place."""
    prog = Path(sys.argv[0]).stem
    try:
        main(argv)
    except PrimerError as exc:
        print(f"{prog}: error: {exc}{restore_hint(outputs_kept)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        where = Path(exc.filename or ".").resolve()  # a read-only disk refuses writes only; a permission, any use
        what = f"cannot write in {where.parent}" if exc.errno == errno.EROFS else f"no permission for {where}"
        print(f"{prog}: error: {what} ({exc.strerror}); run the stage in a checkout that you own and can write to "
              "(a read-only or another user's checkout: clone it or copy it first).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    return 0
