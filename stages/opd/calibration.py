"""Calibration of an OPD pair: the whole OPD step, forward only, on the first batches of
training, checked against thresholds before any GPU hours go into training.

Checks: the vocabulary map covers the tokens in play (distinct student ids of the training
transcripts and the stop token), the whole training manifest's languages are ones the teacher
can be prompted with (all but ``max_unpromptable_fraction`` of the rows, and the fallback
language; when either check fails the forward passes are skipped, nothing else can be trusted),
the rollouts are mostly non-empty and stop, few rollout tokens lack a teacher id,
the initial loss is finite (on at least one used position) and not absurd, and the valid union
size (VUSS, ``opd_valid_topk_mean`` in the reference recipe) is large enough. The report also
lists both models' stop and blocked token sets and where each teacher language came from.

This module also owns the ``calibration.json`` contract: :func:`calibrate` builds the report,
:func:`publish_report` writes it (``calibration.json`` only when every check passed, else
``<stem>.failed.json``), and :func:`require_calibration` is what ``stages.train_opd`` reads it
with.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stages.common.errors import UserError
from stages.common.jsonl import read_json, write_json
from stages.common.settings import setting
from stages.data.batching import Utterance, load_batch
from stages.models.base import AsrAdapter
from stages.opd.config import OpdConfig
from stages.opd.identity import checked_settings, settings_fingerprint, weights_fingerprint
from stages.opd.step import opd_step
from stages.opd.vocab import VocabMap, build_vocab_map
from stages.train.data import ResumableSampler
from stages.train.metrics import accumulate, combine_rank_stats

log = logging.getLogger(__name__)

# Transcripts tokenized for the coverage check (a sample keeps huge manifests cheap).
COVERAGE_SAMPLE = 20_000


@dataclass(frozen=True, kw_only=True)
class CalibrationThresholds:
    """thresholds (a failed check stops the pipeline before training)"""

    min_vocab_coverage: float = setting(
        0.95, help="distinct student ids of the training transcripts (tokenized) and the stop "
                   "token that map to the teacher")
    min_nonempty_ratio: float = setting(0.5, help="rollouts holding a transcript token")
    min_stopped_ratio: float = setting(0.5, help="rollouts that reached the stop token")
    max_unmapped_fraction: float = setting(0.01, help="rollout tokens without a teacher id")
    max_initial_loss: float = setting(50.0, help="τ² · mean KL over the used positions")
    max_unpromptable_fraction: float = setting(
        0.01, help="training rows (whole manifest) whose language the teacher has no prompt for")
    min_vuss: float | None = setting(None, help="mean valid union size (default: --top-k; the "
                                                "union holds the teacher's k ids when they are "
                                                "all valid)")

    def resolved(self, top_k: int) -> dict[str, float]:
        """Every threshold as a number (``min_vuss`` none → ``top_k``)."""
        values = asdict(self)
        if values["min_vuss"] is None:
            values["min_vuss"] = float(top_k)
        return values


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
    # An OPD pool needs no transcripts; without any, the stop token is what is known in play
    # (the rollouts' own tokens are checked by unmapped_fraction).
    rows = student.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids = [i for row in rows for i in row]
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
        if cfg.sample:
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
                 if k.startswith("lang_") and not k.startswith("lang_source_")
                 and k != "lang_unpromptable"}
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
        "student_header_rows": int(merged.get("student_header_rows", 0)),
        "nonfinite_student_positions": int(merged.get("nonfinite_student_positions", 0)),
        "nonfinite_teacher_positions": int(merged.get("nonfinite_teacher_positions", 0)),
    }


def language_check(utterances: list[Utterance], teacher: AsrAdapter, fallback: str,
                   max_fraction: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(check, report) of the whole training manifest's languages against what the teacher can
    be prompted with: training falls back to detection for the others, but a corpus full of
    them trains with guessed headers."""
    counts = Counter(u.language for u in utterances if u.language)
    unpromptable = {code: n for code, n in sorted(counts.items())
                    if not teacher.can_prompt(code)}
    fraction = sum(unpromptable.values()) / len(utterances) if utterances else 0.0
    check = _check("teacher_languages", fraction, max_fraction, minimum=False,
                   what="share of training rows whose language the teacher has no prompt for")
    if unpromptable:
        check["message"] += (f" ({', '.join(f'{c} {n}' for c, n in unpromptable.items())}; "
                             "those rows get a detected language)")
    if not teacher.can_prompt(fallback):
        check["passed"] = False
        check["message"] = (f"the fallback language {fallback!r} is not one the teacher can be "
                            "prompted with; set opd.step.fallback_language to one it can")
    report = {"manifest": dict(sorted(counts.items())), "rows_without_language":
              sum(1 for u in utterances if not u.language), "unpromptable": unpromptable,
              "teacher_prompt_languages": (sorted(teacher.prompt_languages)
                                           if teacher.prompt_languages is not None else "any")}
    return check, report


def token_sets(adapter: AsrAdapter, shown: int = 50) -> dict[str, Any]:
    """The ids an adapter stops on and never emits, for the report."""
    def names(ids):
        return adapter.tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    blocked = adapter.blocked_token_ids.tolist()
    in_tokenizer = [i for i in blocked if i < len(adapter.tokenizer)]
    return {"stop_token_ids": list(adapter.stop_token_ids),
            "stop_tokens": names(adapter.stop_token_ids),
            "blocked": len(blocked),
            "blocked_past_tokenizer": len(blocked) - len(in_tokenizer),
            "blocked_tokens": names(in_tokenizer[:shown])}


def calibrate(student: AsrAdapter, teacher: AsrAdapter, utterances: list[Utterance],
              cfg: OpdConfig, thresholds: CalibrationThresholds, *, batches: int,
              batch_size: int, seed: int) -> dict[str, Any]:
    """Run the checks; the report (``passed``, ``failed``, ``checks``, ``metrics``,
    ``vocabulary``, ``thresholds``, ``opd``, ``timings``). The caller adds who and what."""
    if batches < 1 or batch_size < 1:
        raise UserError("--batches and --batch-size must be >= 1")
    limits = thresholds.resolved(cfg.top_k)
    vocab_map = build_vocab_map(student, teacher)
    vocab_check, vocabulary = coverage_check(vocab_map, student, utterances,
                                             limits["min_vocab_coverage"])
    language, languages = language_check(utterances, teacher, cfg.fallback_language,
                                         limits["max_unpromptable_fraction"])
    metrics: dict[str, Any] = {}
    batch_seconds: list[float] = []
    checks = [vocab_check, language]
    if vocab_check["passed"] and language["passed"]:
        merged, batch_seconds = forward_batches(
            student, teacher, vocab_map.to(student.device), utterances, cfg,
            batches=batches, batch_size=batch_size, seed=seed)
        metrics = summarize(merged)
        checks += run_checks(metrics, limits)
    else:
        log.error("%s check failed: the forward passes are skipped",
                  "vocabulary" if not vocab_check["passed"] else "language")
    failed = [c["name"] for c in checks if not c["passed"]]
    return {
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "metrics": metrics,
        "vocabulary": vocabulary,
        "languages": languages,
        "tokens": {"student": token_sets(student), "teacher": token_sets(teacher)},
        "thresholds": limits,
        "opd": asdict(cfg),
        "timings": {"batch_seconds": [round(s, 3) for s in batch_seconds]},
    }


def publish_report(report: dict[str, Any], output: Path) -> None:
    """Write ``output`` if the report passed; else ``<stem>.failed.json`` (``output`` removed)
    and a UserError listing the failed checks."""
    if report["passed"]:
        failed_path(output).unlink(missing_ok=True)
        write_json(output, report)
        return
    output.unlink(missing_ok=True)
    write_json(failed_path(output), report)
    checks = report["checks"]
    lines = "\n".join(f"  - {c['name']}: {c['message']}" for c in checks if not c["passed"])
    raise UserError(f"calibration failed {len(report['failed'])} of {len(checks)} checks; the "
                    f"report is {failed_path(output)} ({output} is not written):\n{lines}\n"
                    "Fix the models or settings, or relax the thresholds (calibrate: in the "
                    "config) if the values are expected")


def model_record(path_or_id: str, adapter: AsrAdapter) -> dict[str, Any]:
    """Who a calibrated model was: as given, resolved to an absolute path, its adapter, and a
    fingerprint of its weights (what :func:`require_calibration` compares)."""
    path = Path(path_or_id)
    return {"path": str(path_or_id),
            "resolved": str(path.resolve()) if path.exists() else str(path_or_id),
            "family": adapter.family, "stop_token_id": adapter.stop_token_id,
            "vocab_size": adapter.vocab_size,
            "weights_sha256": weights_fingerprint(path_or_id)}


def _same_model(fingerprint: str, recorded: dict[str, Any]) -> bool:
    """The same weights (by content: a copied folder matches, one retrained in place not)."""
    return fingerprint == recorded.get("weights_sha256")


def require_calibration(path: Path, student: str, teacher: str,
                        opd: OpdConfig | None = None) -> dict[str, Any]:
    """The calibration report, if it passed for these student and teacher weights and (when
    ``opd`` is given) these OPD step settings; else a UserError that says what changed."""
    if not path.is_file():
        failed = path.with_name(f"{path.stem}.failed.json")
        hint = (f"; {failed} exists: calibration ran and failed, read its `checks`"
                if failed.is_file() else "; run python -m stages.calibrate first")
        raise UserError(f"{path}: no calibration report{hint}. OPD training starts only after a "
                        "passing calibration")
    report = read_json(path)
    if not isinstance(report, dict) or "passed" not in report:
        raise UserError(f"{path}: not a calibration report (no `passed`); give the "
                        "calibration.json written by python -m stages.calibrate")
    if report["passed"] is not True:
        failed = ", ".join(report.get("failed") or []) or "unknown checks"
        raise UserError(f"{path}: the calibration did not pass (failed: {failed}); OPD "
                        "training refuses to start. Fix the pair or the settings and calibrate "
                        "again")
    again = ("calibrate again (python -m stages.calibrate; in the workflow: snakemake "
             "--forcerun calibrate)")
    for role, given in (("student", student), ("teacher", teacher)):
        recorded = report.get(role) or {}
        if "weights_sha256" not in recorded:
            raise UserError(f"{path}: records no fingerprint of the {role}'s weights (written "
                            f"by an older version), so it cannot vouch for {given!r}; {again}")
        now = weights_fingerprint(given)
        if not _same_model(now, recorded):
            changed = ("its weights changed since" if recorded.get("path") == str(given)
                       else f"calibrated with {recorded.get('path')!r},")
            raise UserError(f"{path}: the {role} {given!r} is not the one calibrated ({changed} "
                            f"weights {recorded['weights_sha256'][:12]} then, {now[:12]} now); "
                            f"calibrate this pair first: {again}")
    if opd is not None:
        saved = report.get("opd_settings_sha256")
        if saved != settings_fingerprint(opd):
            then = report.get("opd") or {}
            differing = [f"{key} {then.get(key, 'unrecorded')} then, {value} now"
                         for key, value in checked_settings(opd).items()
                         if then.get(key, "unrecorded") != value]
            what = "; ".join(differing) if saved is not None and differing else (
                "no settings fingerprint recorded (an older version)")
            raise UserError(f"{path}: calibrated with other OPD step settings ({what}); the "
                            f"checks do not carry over, {again} with this run's settings")
    return report


