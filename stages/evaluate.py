"""evaluate: transcribe a validated manifest with a model and score it (CER or WER).

Batched greedy decoding sorted by duration (longest first), with the adapter's blocked-token set
and stop rule (the same as training rollouts); then normalization, jiwer alignment and error
counts through the library the score stage uses, so `python -m stages.score` on the rows file
reproduces every number. Any decoding failure (unreadable audio, model error, out of memory)
stops the stage with exit status 1 and the ids of the failed batch; nothing is written then, and
an empty prediction in the output is always what the model wrote.

Input: a validated manifest (python -m stages.validate): every row needs `text`.

Outputs:
  --output   JSONL, one row per utterance, worst first (errors, then error rate, descending; ties
             keep manifest order): id, audio, begin_time, end_time, duration, language,
             text (the reference as in the manifest), pred_text (the transcript as decoded:
             cut at the stop token, language header dropped, special tokens skipped),
             ref_norm and pred_norm (both normalized), errors, substitutions, deletions,
             insertions, ref_len, error_rate (null for an empty normalized reference),
             cer_errors or wer_errors (= errors, the name the reference recipe sorts by),
             pred_tokens (response tokens before the stop token), stopped (false: cut at
             --max-new-tokens) and pred_language (the language a Qwen3-ASR response declared
             when no header was forced, else null). The reference recipe's folders use
             test_<preset>.jsonl for this file.
  --summary  JSON: everything `stages.score` reports (metric, normalizer, rate and <metric>,
             errors, substitutions, deletions, insertions, hits, ref_len, utterances,
             empty_predictions, empty_references) plus unstopped (predictions cut at
             --max-new-tokens), generated_tokens (stop tokens included), audio_seconds (sum
             of the manifest durations), decode_seconds (audio loading + features +
             generation), load_seconds (model load), wall_seconds (the whole stage: load,
             decode, scoring), rtfx (audio_seconds / decode_seconds), model, model_name,
             family, preset, input, output, batch_size, batches, max_new_tokens,
             language_hint, device, dtype, threads, peak_gpu_memory_gib (CUDA only) and
             provenance.

Options: --device auto picks cuda when available, else cpu; --dtype auto is bfloat16 on cuda and
float32 on cpu. --language-hint (default; --no-language-hint or --language-hint off to turn it
off) prompts a Qwen3-ASR model with the manifest
language (forced `language X<asr_text>` header, as the OPD teacher is prompted); off lets it
detect the language. Audio chat LMs (GLM-ASR style) take no language either way.

Normalizers (default: zh for cer, en for wer): zh (NFKC, lower-case, punctuation removed),
en (Whisper's English normalizer; --en-spelling adds a spelling map), basic, none.

Example:
  python -m stages.evaluate --model results/models/opd_base --input results/data/aishell.jsonl \\
      --output results/eval/opd_base/test_aishell.jsonl \\
      --summary results/eval/opd_base/summary_aishell.json --metric cer --batch-size 16
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.fsutil import outputs_together
from stages.common.jsonl import write_json, write_jsonl
from stages.common.provenance import provenance
from stages.common.runtime import (
    InferenceRuntime,
    dtype_name,
    resolve_device,
    resolve_dtype,
    set_threads,
)
from stages.common.settings import add_settings, group, setting, settings_from_args
from stages.data.batching import read_utterances
from stages.eval.scoring import Scoring, score_rows
from stages.models import ModelLoading, load_adapter
from stages.models.transcribe import Decoding, TranscriptionResult, transcribe

log = logging.getLogger("stages.evaluate")


@dataclass(frozen=True, kw_only=True)
class EvaluationRun:
    """What one evaluation decodes and scores with."""

    scoring: Scoring = group("scoring")
    decoding: Decoding = group("decoding")
    language_hint: bool = setting(True, help="prompt with the manifest language where the "
                                             "family takes one")
    loading: ModelLoading = group("model")
    runtime: InferenceRuntime = group("runtime")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--input", required=True, help="validated manifest (JSONL) with references")
    p.add_argument("--output", required=True, help="per-utterance rows (JSONL), worst first")
    p.add_argument("--summary", required=True, help="summary JSON")
    add_settings(p, EvaluationRun)
    p.add_argument("--preset", default=None,
                   help="preset name for the summary (default: the manifest's file stem)")
    p.add_argument("--model-name", default=None,
                   help="model name for the summary (default: the model folder's name)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    source = Path(args.input).resolve()
    for option, path in (("--output", args.output), ("--summary", args.summary)):
        if Path(path).resolve() == source:
            raise UserError(f"{option} {path} is the input manifest; write the results elsewhere")
    if Path(args.output).resolve() == Path(args.summary).resolve():
        raise UserError(f"--output and --summary are the same file ({args.output})")


def prediction_rows(result: TranscriptionResult) -> list[dict]:
    """One unscored row per utterance, in manifest order."""
    rows = []
    for p in result.transcripts:
        u = p.utterance
        rows.append({
            "id": u.id, "audio": u.audio, "begin_time": u.begin_time, "end_time": u.end_time,
            "duration": u.duration, "language": u.language, "text": u.text,
            "pred_text": p.text, "pred_tokens": p.tokens, "stopped": p.stopped,
            "pred_language": p.language,
        })
    return rows


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = settings_from_args(EvaluationRun, args)
    _check_args(args)
    set_threads(args.threads)
    # Outputs describe the last run only: a failure must not leave an earlier summary behind.
    for path in (args.output, args.summary):
        Path(path).unlink(missing_ok=True)
    norm_name, normalize = (settings.scoring.normalizer_name(),
                            settings.scoring.make_normalizer())
    utterances = read_utterances(args.input, require_text=True)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    language_hint = settings.language_hint

    log.info("loading %s on %s (%s)", args.model, device, dtype_name(dtype))
    load_start = time.perf_counter()
    adapter = load_adapter(args.model, family=args.family, device=device, dtype=dtype,
                           trust_remote_code=args.trust_remote_code,
                           packed_audio_windows=args.packed_audio_windows)
    load_seconds = time.perf_counter() - load_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    result = transcribe(adapter, utterances, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, language_hint=language_hint,
                        loader_workers=args.loader_workers)
    scored, summary = score_rows(prediction_rows(result), args.metric, normalize,
                                 source=str(args.output))

    audio_seconds = math.fsum(u.duration for u in utterances)
    settings = {"model": str(args.model), "input": str(args.input), "metric": args.metric,
                "normalizer": norm_name, "en_spelling": args.en_spelling,
                "family": adapter.family, "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens, "language_hint": language_hint,
                "device": device.type, "dtype": dtype_name(dtype)}
    summary.update(
        normalizer=norm_name,
        en_spelling=args.en_spelling,
        unstopped=sum(1 for p in result.transcripts if not p.stopped),
        generated_tokens=sum(p.generated for p in result.transcripts),
        audio_seconds=audio_seconds,
        decode_seconds=result.decode_seconds,
        load_seconds=load_seconds,
        rtfx=audio_seconds / result.decode_seconds if result.decode_seconds > 0 else None,
        model=str(args.model),
        model_name=args.model_name or Path(str(args.model).rstrip("/")).name,
        family=adapter.family,
        preset=args.preset or Path(args.input).stem,
        input=str(args.input),
        output=str(args.output),
        batch_size=args.batch_size,
        batches=result.batches,
        max_new_tokens=args.max_new_tokens,
        language_hint=language_hint,
        device=str(adapter.device),
        dtype=settings["dtype"],
        threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    summary["wall_seconds"] = time.perf_counter() - started
    summary["provenance"] = provenance(settings)

    with outputs_together(args.output, args.summary):  # no rows left without their summary
        write_jsonl(args.output, scored)
        write_json(args.summary, summary)  # last: its presence means the evaluation completed
    if summary["unstopped"]:
        log.warning("%d of %d predictions hit --max-new-tokens %d without stopping; raise it if "
                    "references are longer", summary["unstopped"], len(scored),
                    args.max_new_tokens)
    rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.4f}"
    log.info("%s %s on %s: %s %s = %s (%d errors / %d; S=%d D=%d I=%d), %d empty predictions, "
             "%.1f s audio in %.1f s (RTFx %.1f) -> %s", summary["model_name"],
             summary["family"], summary["preset"], args.metric, norm_name, rate,
             summary["errors"], summary["ref_len"], summary["substitutions"],
             summary["deletions"], summary["insertions"], summary["empty_predictions"],
             audio_seconds, result.decode_seconds, summary["rtfx"] or 0.0, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
