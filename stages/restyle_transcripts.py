"""restyle_transcripts: a manifest's transcripts rewritten in another convention (demo only).

The bootstrap of a demo role with `convention: restyled` trains on this copy of the train
manifest: every row as it was, its `text` without the final full stop (. or 。) and with a
capital first letter ("the cat was big." -> "The cat was big"). The student base then writes
another convention than the teacher, as real models trained on different data do, and TD
adaptation has a convention to move it onto (README "The GPU study", VUSS).

Example:
  python -m stages.restyle_transcripts --input results/data/train.jsonl \\
      --output results/data/train_restyled.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.jsonl import atomic_writer, dumps_row, iter_jsonl
from stages.demo.conventions import restyled

log = logging.getLogger("stages.restyle_transcripts")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--input", required=True, help="validated manifest (JSONL)")
    p.add_argument("--output", required=True, help="the restyled copy (JSONL, written atomically)")
    return p


def main(args: argparse.Namespace) -> int:
    rows = changed = 0
    with atomic_writer(args.output) as out:
        for number, row in iter_jsonl(args.input):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{args.input}:{number}: no transcript in `text` to restyle")
            row["text"] = restyled(text)
            rows += 1
            changed += row["text"] != text
            out.write(dumps_row(row) + "\n")
    if rows == 0:
        raise UserError(f"{args.input}: no rows to restyle")
    log.info("restyled %d of %d transcripts -> %s", changed, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
