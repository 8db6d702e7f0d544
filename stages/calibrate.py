"""Calibrate an OPD pair before training: the whole OPD step, forward only, on a few batches.

Checks that a student/teacher pair and its settings make sense before any GPU hours go into
training: the vocabulary map covers the tokens in play (a teacher whose tokenizer spells tokens
differently fails here), the student's rollouts are mostly non-empty and stop, few rollout
tokens lack a teacher counterpart, the initial loss is finite and not absurd, and the valid union
size (VUSS, `opd_valid_topk_mean` in the reference recipe) is large enough. Batches are the first
--batches global batches training with the same --seed and --batch-size will see.

Inputs:
  --student DIR / --teacher DIR   model folders or cached hub ids (adapter family from config)
  --train MANIFEST                validated training manifest (python -m stages.validate)
Output:
  --output calibration.json   written ONLY when every check passes (the file train_opd and the
                              workflow require). On failure the same report goes to
                              <stem>.failed.json beside it (e.g. calibration.failed.json), a stale
                              --output is removed, the failed checks are listed on stderr and the
                              exit status is 1. The report holds: passed, checks (name, value,
                              threshold, passed, message), failed, metrics (loss, vuss,
                              opd_valid_topk_mean, teacher_mass, top1_agree, kl, rollout_len,
                              nonempty_ratio, stopped_ratio, unmapped_tokens,
                              unmapped_fraction, positions, languages, language sources),
                              vocabulary (the map's coverage report), timings, thresholds,
                              opd settings, student/teacher, provenance.

Thresholds (a check whose threshold is not given uses its default):
  --min-vocab-coverage F    distinct student ids of the training transcripts (tokenized) and the
                            stop token that map to the teacher (default 0.95). When it fails the
                            forward passes are skipped: nothing else can be trusted
  --min-nonempty-ratio F    rollouts holding a transcript token (default 0.5)
  --min-stopped-ratio F     rollouts that reached the stop token (default 0.5)
  --max-unmapped-fraction F rollout tokens without a teacher id (default 0.01)
  --max-initial-loss X      τ² · mean KL over the used positions (default 50)
  --min-vuss X              mean valid union size (default: --top-k; the union holds the teacher's
                            k ids when they are all valid)
  and always: the loss is finite and at least one position was used.

The student runs in the dtype training computes in (bf16 on CUDA, fp32 on CPU); the teacher in
bf16 on CUDA, fp32 on CPU.

Example:
  python -m stages.calibrate --student results/models/student_base \\
      --teacher results/models/teacher --train results/data/train.jsonl \\
      --output results/calibrate/base/calibration.json --batches 4 --batch-size 8 --top-k 32
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.jsonl import write_json
from stages.common.provenance import provenance
from stages.common.runtime import (
    add_runtime_arguments,
    dtype_name,
    resolve_device,
    resolve_dtype,
    set_threads,
)
from stages.data.batching import Utterance, load_batch, read_utterances
from stages.models import load_adapter
from stages.models.base import AsrAdapter
from stages.opd.step import OpdConfig, opd_step, prepare_teacher
from stages.opd.vocab import VocabMap
from stages.train.data import ResumableSampler
from stages.train.metrics import accumulate, combine_rank_stats
from stages.train.objectives import add_opd_arguments, build_vocab_map, opd_config_from_args

log = logging.getLogger("stages.calibrate")

DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "min_vocab_coverage": 0.95,
    "min_nonempty_ratio": 0.5,
    "min_stopped_ratio": 0.5,
    "max_unmapped_fraction": 0.01,
    "max_initial_loss": 50.0,
    "min_vuss": None,  # None: the run's top_k
}
# Transcripts tokenized for the coverage check (a sample keeps huge manifests cheap).
COVERAGE_SAMPLE = 20_000


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--student", required=True, help="student model folder or cached hub id")
    p.add_argument("--teacher", required=True, help="teacher model folder or cached hub id")
    p.add_argument("--train", required=True, type=Path, help="validated training manifest")
    p.add_argument("--output", required=True, type=Path,
                   help="calibration.json (written only when every check passes)")
    p.add_argument("--batches", type=int, default=4, help="batches to run (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="data-order seed; use training's to preview its first batches")
    add_runtime_arguments(p, devices=("auto", "cpu", "cuda"))
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow checkpoints that ship their own model code")
    add_opd_arguments(p)
    g = p.add_argument_group("thresholds")
    for name, default in DEFAULT_THRESHOLDS.items():
        g.add_argument("--" + name.replace("_", "-"), type=float, default=default,
                       help=f"(default {default if default is not None else 'top-k'})")
    return p


def failed_path(output: Path) -> Path:
    """Where a failed calibration's report goes: ``<stem>.failed.json`` beside ``output``."""
    return output.with_name(f"{output.stem}.failed.json")


def _check(name: str, value: float | None, threshold: float, *, minimum: bool,
           what: str) -> dict[str, Any]:
    ok = value is not None and math.isfinite(value) and (
        value >= threshold if minimum else value <= threshold)
    sign = ">=" if minimum else "<="
    shown = "n/a" if value is None else f"{value:.4g}"
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(ok),
            "message": f"{what} is {shown}, needs {sign} {threshold:g}"}


def coverage_check(vocab_map: VocabMap, student: AsrAdapter, utterances: list[Utterance],
                   min_fraction: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(check, coverage report) for the student ids of the training transcripts + stop token."""
    texts = [u.text for u in utterances[:COVERAGE_SAMPLE] if u.text]
    ids = [i for row in student.tokenizer(texts, add_special_tokens=False)["input_ids"]
           for i in row]
    ids.append(student.stop_token_id)
    try:
        report = vocab_map.require_coverage(ids, required_ids=[student.stop_token_id],
                                            min_fraction=min_fraction)
        message = None
    except UserError as err:
        report = vocab_map.require_coverage(ids, min_fraction=0.0)
        message = str(err)
    check = _check("vocab_coverage", report["in_play_fraction"], min_fraction, minimum=True,
                   what="vocabulary coverage of the tokens in play")
    if message is not None:
        check["passed"] = False
        check["message"] = message
    report["transcripts_tokenized"] = len(texts)
    return check, report


def forward_batches(student: AsrAdapter, teacher: AsrAdapter, vocab_map: VocabMap,
                    utterances: list[Utterance], cfg: OpdConfig, *, batches: int,
                    batch_size: int, seed: int) -> tuple[dict[str, Any], list[float]]:
    """Run the OPD step forward-only on the first ``batches`` batches; (reduced stats incl.
    ``loss_sum``/``positions``, seconds per batch)."""
    sampler = ResumableSampler(len(utterances), batch_size, rank=0, world_size=1, seed=seed)
    totals: dict[str, float] = {}
    seconds = []
    loss_sum = 0.0
    for index in range(batches):
        start = time.perf_counter()
        batch = load_batch([utterances[i] for i in sampler.next_indices()])
        generator = None
        if cfg.do_sample:
            generator = torch.Generator(device=student.device).manual_seed(seed + index)
        loss, positions, stats = opd_step(student, teacher, vocab_map, batch, cfg,
                                          synced_gpus=False, generator=generator,
                                          compute_grad=False)
        loss_sum += float(loss)
        accumulate(totals, stats)
        seconds.append(time.perf_counter() - start)
        log.info("batch %d/%d: loss %.4g over %d positions, %.1f s", index + 1, batches,
                 float(loss) / positions if positions else float("nan"), positions,
                 seconds[-1])
    merged = combine_rank_stats([totals])
    positions = merged.get("positions_used", 0)
    merged["loss"] = loss_sum / positions if positions else None
    return merged, seconds


def run_checks(metrics: dict[str, Any], thresholds: dict[str, float]) -> list[dict[str, Any]]:
    loss = metrics.get("loss")
    checks = [{
        "name": "loss_finite", "value": loss, "threshold": None,
        "passed": loss is not None and math.isfinite(loss) and metrics["positions"] > 0,
        "message": (f"initial loss is {loss} over {metrics['positions']} used positions; needs "
                    "a finite loss on at least one position"),
    }]
    checks.append(_check("nonempty_ratio", metrics["nonempty_ratio"],
                         thresholds["min_nonempty_ratio"], minimum=True,
                         what="share of rollouts with a transcript token"))
    checks.append(_check("stopped_ratio", metrics["stopped_ratio"],
                         thresholds["min_stopped_ratio"], minimum=True,
                         what="share of rollouts that reached the stop token"))
    checks.append(_check("unmapped_fraction", metrics["unmapped_fraction"],
                         thresholds["max_unmapped_fraction"], minimum=False,
                         what="share of rollout tokens without a teacher id"))
    checks.append(_check("initial_loss", loss, thresholds["max_initial_loss"], minimum=False,
                         what="initial OPD loss"))
    checks.append(_check("vuss", metrics["vuss"], thresholds["min_vuss"], minimum=True,
                         what="mean valid union size (VUSS)"))
    return checks


def summarize(merged: dict[str, Any]) -> dict[str, Any]:
    tokens = merged.get("tokens", 0)
    languages = {k.removeprefix("lang_"): int(v) for k, v in merged.items()
                 if k.startswith("lang_") and not k.startswith("lang_source_")}
    sources = {k.removeprefix("lang_source_"): int(v) for k, v in merged.items()
               if k.startswith("lang_source_")}
    return {
        "loss": merged["loss"],
        "vuss": merged.get("vuss"),
        "opd_valid_topk_mean": merged.get("opd_valid_topk_mean"),
        "teacher_mass": merged.get("teacher_mass"),
        "top1_agree": merged.get("top1_agree"),
        "kl": merged.get("kl"),
        "used_fraction": merged.get("used_fraction"),
        "positions": int(merged.get("positions_used", 0)),
        "positions_scored": int(merged.get("positions_scored", 0)),
        "rows": int(merged.get("rows", 0)),
        "rollout_len": merged.get("rollout_len"),
        "rollout_len_max": merged.get("rollout_len_max"),
        "nonempty_ratio": merged.get("nonempty"),
        "stopped_ratio": merged.get("stopped"),
        "rollout_tokens": int(tokens),
        "unmapped_tokens": int(merged.get("unmapped_tokens", 0)),
        "unmapped_fraction": merged.get("unmapped_tokens", 0) / tokens if tokens else 0.0,
        "unmapped_masked_positions": int(merged.get("unmapped_masked_positions", 0)),
        "languages": languages,
        "language_sources": sources,
    }


def main(args: argparse.Namespace) -> int:
    if args.batches < 1 or args.batch_size < 1:
        raise UserError("--batches and --batch-size must be >= 1")
    set_threads(args.threads)
    cfg = opd_config_from_args(args)
    thresholds = {k: getattr(args, k) for k in DEFAULT_THRESHOLDS}
    if thresholds["min_vuss"] is None:
        thresholds["min_vuss"] = float(cfg.top_k)
    device = resolve_device(args.device)
    compute_dtype = resolve_dtype("auto", device)
    started = time.perf_counter()

    utterances = read_utterances(args.train)
    student = load_adapter(args.student, family=args.student_family, device=device,
                           dtype=compute_dtype, trust_remote_code=args.trust_remote_code)
    teacher = prepare_teacher(load_adapter(args.teacher, family=args.teacher_family,
                                           device=device, dtype=compute_dtype,
                                           trust_remote_code=args.trust_remote_code))
    student.model.eval()
    loaded = time.perf_counter()
    vocab_map = build_vocab_map(student, teacher)
    vocab_check, vocabulary = coverage_check(vocab_map, student, utterances,
                                             thresholds["min_vocab_coverage"])

    metrics: dict[str, Any] = {}
    batch_seconds: list[float] = []
    checks = [vocab_check]
    if vocab_check["passed"]:
        merged, batch_seconds = forward_batches(
            student, teacher, vocab_map.to(student.device), utterances, cfg,
            batches=args.batches, batch_size=args.batch_size, seed=args.seed)
        metrics = summarize(merged)
        checks += run_checks(metrics, thresholds)
    else:
        log.error("vocabulary check failed: the forward passes are skipped")

    failed = [c["name"] for c in checks if not c["passed"]]
    report = {
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "metrics": metrics,
        "vocabulary": vocabulary,
        "thresholds": thresholds,
        "opd": asdict(cfg),
        "student": {"path": str(args.student), "resolved": _resolved(args.student),
                    "family": student.family, "stop_token_id": student.stop_token_id,
                    "vocab_size": student.vocab_size},
        "teacher": {"path": str(args.teacher), "resolved": _resolved(args.teacher),
                    "family": teacher.family, "stop_token_id": teacher.stop_token_id,
                    "vocab_size": teacher.vocab_size},
        "data": {"train": str(args.train), "utterances": len(utterances),
                 "batches": args.batches, "batch_size": args.batch_size, "seed": args.seed},
        "timings": {"load_seconds": round(loaded - started, 3),
                    "batch_seconds": [round(s, 3) for s in batch_seconds],
                    "total_seconds": round(time.perf_counter() - started, 3),
                    "device": str(device), "dtype": dtype_name(compute_dtype)},
    }
    report["provenance"] = provenance({k: report[k] for k in ("thresholds", "opd", "data")}
                                      | {"student": args.student, "teacher": args.teacher})
    if not failed:
        failed_path(args.output).unlink(missing_ok=True)
        write_json(args.output, report)
        log.info("calibration passed (%d checks): loss %.4g, VUSS %.3g; wrote %s", len(checks),
                 metrics["loss"], metrics["vuss"], args.output)
        return 0
    args.output.unlink(missing_ok=True)
    write_json(failed_path(args.output), report)
    lines = "\n".join(f"  - {c['name']}: {c['message']}" for c in checks if not c["passed"])
    raise UserError(f"calibration failed {len(failed)} of {len(checks)} checks; the report is "
                    f"{failed_path(args.output)} ({args.output} is not written):\n{lines}\n"
                    "Fix the models or settings, or relax the thresholds (calibrate: in the "
                    "config) if the values are expected")


def _resolved(path_or_id: str) -> str:
    path = Path(path_or_id)
    return str(path.resolve()) if path.exists() else str(path_or_id)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
