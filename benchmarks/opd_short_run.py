"""A short OPD run on CPU with the tiny demo models: does the student move toward the teacher?

Builds the tiny tokenizer, teacher (Qwen3-ASR) and student (GLM-ASR) from espeak-synthesized
multilingual sentences, fine-tunes the teacher well and the student briefly on them (a plain
local SFT loop, so the teacher knows the transcripts and the student does not yet), then runs
OPD steps (``stages.opd.step.opd_step``) with plain AdamW on the student, one fixed batch per
step cycling over the corpus.

Prints one line per OPD step (loss per used position, VUSS, teacher mass, top-1 agreement,
rollout length, stopped ratio) and, before and after OPD, the student's greedy CER against the
references and against the teacher's own greedy transcripts. ``--json`` writes all of it.

Run from the repository root:
    python -m benchmarks.opd_short_run
    python -m benchmarks.opd_short_run --utterances 24 --opd-steps 80 --json /tmp/opd.json

The pieces (corpus, models, SFT loop, OPD loop) are ``tests.short_run``;
tests/test_opd_step.py runs a reduced version with them.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import jiwer
import torch

from stages.data.batching import AudioBatch
from stages.models import load_adapter
from stages.models.base import AsrAdapter
from stages.opd.config import OpdConfig
from stages.opd.vocab import build_vocab_map
from tests.short_run import batch_of, build_models, run_opd, sft, synthesize_corpus


def transcripts(adapter: AsrAdapter, batches: Sequence[AudioBatch], max_new_tokens: int
                ) -> list[str]:
    out = []
    for batch in batches:
        responses = adapter.generate(batch.audios, batch.languages,
                                     max_new_tokens=max_new_tokens)
        out += [adapter.decode_response(r) for r in responses]
    return out


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate with whitespace removed (empty hypotheses count as deletions)."""
    refs = ["".join(r.split()) for r in references]
    hyps = ["".join(h.split()) for h in hypotheses]
    return float(jiwer.cer(refs, hyps))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--teacher-sft-steps", type=int, default=150)
    p.add_argument("--student-sft-steps", type=int, default=100)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--opd-steps", type=int, default=60)
    p.add_argument("--opd-lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the settings and all rows here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    corpus = synthesize_corpus(args.utterances, args.seed)
    batches = [batch_of(corpus[i:i + args.batch_size])
               for i in range(0, len(corpus), args.batch_size)]
    references = [u.text for u in corpus]
    cfg = OpdConfig(top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(tmp, references, seed=args.seed)
        teacher = load_adapter(str(models / "teacher_init"))
        student = load_adapter(str(models / "student_init"))
    teacher_sft = sft(teacher, corpus, steps=args.teacher_sft_steps, lr=args.sft_lr,
                      batch_size=args.batch_size, seed=args.seed)
    student_sft = sft(student, corpus, steps=args.student_sft_steps, lr=args.sft_lr,
                      batch_size=args.batch_size, seed=args.seed + 1)
    teacher_text = transcripts(teacher, batches, args.max_new_tokens)
    before = transcripts(student, batches, args.max_new_tokens)
    print(f"SFT losses: teacher {teacher_sft[0]:.3f} -> {teacher_sft[-1]:.3f}, "
          f"student {student_sft[0]:.3f} -> {student_sft[-1]:.3f}")
    print(f"{'step':>4} {'loss':>7} {'vuss':>6} {'t_mass':>6} {'top1':>6} {'len':>5} "
          f"{'stop':>5} {'s':>5}")

    def log(row):
        print(f"{row['step']:>4} {row['loss']:7.4f} {row['vuss']:6.2f} "
              f"{row['teacher_mass']:6.3f} {row['top1_agree']:6.3f} {row['rollout_len']:5.1f} "
              f"{row['stopped']:5.2f} {row['seconds']:5.2f}", flush=True)

    rows = run_opd(student, teacher, build_vocab_map(student, teacher), batches, cfg,
                   steps=args.opd_steps, lr=args.opd_lr, log=log)
    after = transcripts(student, batches, args.max_new_tokens)
    summary = {
        "teacher_cer_vs_reference": cer(references, teacher_text),
        "student_cer_vs_reference_before": cer(references, before),
        "student_cer_vs_reference_after": cer(references, after),
        "student_cer_vs_teacher_before": cer(teacher_text, before),
        "student_cer_vs_teacher_after": cer(teacher_text, after),
        "wall_seconds": time.perf_counter() - start,
    }
    n = max(1, min(5, len(rows) // 4))

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    for key in ("loss", "vuss", "teacher_mass", "top1_agree"):
        summary[f"{key}_first{n}"] = mean(key, rows[:n])
        summary[f"{key}_last{n}"] = mean(key, rows[-n:])
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) and math.isfinite(value)
              else f"{key}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {**vars(args), "json": str(args.json)},
                                         "opd": asdict(cfg), "rows": rows, "summary": summary,
                                         "sft": {"teacher": teacher_sft, "student": student_sft},
                                         "examples": [{"reference": r, "teacher": t,
                                                       "before": b, "after": a}
                                                      for r, t, b, a in zip(
                                                          references, teacher_text, before,
                                                          after, strict=True)][:8]},
                                        ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
