"""Where in the distribution does TD adaptation move a student toward its teacher? VUSS by k.

VUSS (the valid union size of the teacher's and the student's top-k sets) is what the paper
reports falling after TD adaptation (53.06 -> 51.61 at k = 32). In this project's GPU study
it did not fall (README "The GPU study"), while top-1 agreement rose. This measures the union
and the overlap of the two top-k sets for several k, for each student against the same
teacher, with calibration's own forward passes (``stages.opd.calibration.forward_batches``:
the student's greedy rollouts on the same batches, forward only):

- ``vuss``: mean valid union size over used positions (the metric at that k);
- ``overlap``: 2k - vuss, the ids both top-k sets share (every id is valid when the two models
  share a tokenizer, as the demo's and the study's do);
- ``teacher_mass``: the teacher's probability on the union;
- ``top1_agree``: the student's top id is the teacher's.

A falling overlap with a rising top-1 agreement says TD aligned the head of the distribution,
and the ranks beyond it, which hold next to no probability, are ordered independently.

    python -m benchmarks.vuss_by_k --teacher results/models/teacher \\
        --student base=results/models/student_base \\
        --student td=results/models/student_td_adapted@seed0 \\
        --manifest results/data/td_pool.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from stages.common.cli import parser
from stages.common.runtime import resolve_device, resolve_dtype, set_threads
from stages.data.batching import read_utterances
from stages.models import load_adapter
from stages.opd.calibration import forward_batches, summarize
from stages.opd.config import OpdConfig
from stages.opd.step import prepare_teacher
from stages.opd.vocab import build_vocab_map


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--student", action="append", required=True, metavar="NAME=FOLDER",
                   help="a student to compare (repeat: e.g. base=... td=...)")
    p.add_argument("--manifest", required=True,
                   help="validated manifest whose audio the students roll out on")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="which clips form the batches")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    return p


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    utterances = read_utterances(args.manifest)
    teacher = prepare_teacher(load_adapter(args.teacher, device=device, dtype=dtype))
    rows = []
    print(f"{'student':10} {'k':>3} {'vuss':>7} {'overlap':>8} {'teacher_mass':>12} "
          f"{'top1_agree':>10} {'positions':>9}")
    for named in args.student:
        name, _, folder = named.partition("=")
        if not folder:
            raise SystemExit(f"--student {named!r}: expected NAME=FOLDER")
        student = load_adapter(folder, device=device, dtype=dtype)
        student.model.eval()
        vocab_map = build_vocab_map(student, teacher).to(device)
        for k in args.ks:
            cfg = replace(OpdConfig(), top_k=k, max_new_tokens=args.max_new_tokens)
            merged, _ = forward_batches(student, teacher, vocab_map, utterances, cfg,
                                        batches=args.batches, batch_size=args.batch_size,
                                        seed=args.seed)
            metrics = summarize(merged)
            row = {"student": name, "model": folder, "k": k, "vuss": metrics["vuss"],
                   "overlap": 2 * k - metrics["vuss"], "teacher_mass": metrics["teacher_mass"],
                   "top1_agree": metrics["top1_agree"], "positions": metrics["positions"]}
            rows.append(row)
            print(f"{name:10} {k:3d} {row['vuss']:7.2f} {row['overlap']:8.2f} "
                  f"{row['teacher_mass']:12.5f} {row['top1_agree']:10.3f} "
                  f"{row['positions']:9d}", flush=True)
    if args.json:
        settings = {key: value for key, value in vars(args).items() if key != "json"}
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
