"""CLI plumbing shared by the stage modules: logging setup and the user-error exit path."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from stages.common.errors import UserError, storage_error, storage_failure
from stages.common.gpu_slots import claim_gpu_slot, wants_slot

log = logging.getLogger("stages")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr (Snakemake redirects it to the rule's log file)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help keeps the stage docstring's line breaks."""
    p = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def run_stage(main: Callable[[argparse.Namespace], int | None], p: argparse.ArgumentParser,
              argv: Sequence[str] | None = None) -> int:
    """Parse args, run ``main``; a ``UserError`` becomes a clear message and exit status 1, and
    so does a full, read-only or forbidden output folder (one line naming the path; any other
    error keeps its traceback). A stage whose ``--device`` leaves the GPU open first takes one
    of the machine's GPUs (``stages.common.gpu_slots``)."""
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if wants_slot(getattr(args, "device", None)):
        claim_gpu_slot()
    try:
        status = main(args)
    except UserError as err:
        return _fail(err)
    except BaseException as err:  # also DCP's CheckpointException, a BaseException
        if isinstance(err, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        problem = storage_failure(err)
        if problem is None:
            raise
        return _fail(storage_error(problem))
    return int(status or 0)


def _fail(err: UserError) -> int:
    log.error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    return 1
