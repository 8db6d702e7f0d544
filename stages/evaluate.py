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
from stages.data.batching import Utterance, read_utterances
from stages.eval.normalize import Normalizer
from stages.eval.scoring import Scoring, score_rows
from stages.models import ModelLoading, load_adapter
from stages.models.base import AsrAdapter
from stages.models.transcribe import Decoding, TranscriptionResult, transcribe

log = logging.getLogger("stages.evaluate")


@dataclass(frozen=True, kw_only=True)
class ModelDecoding:
    """How an evaluation loads its model and decodes with it (all but the scoring)."""

    decoding: Decoding = group("decoding")
    language_hint: bool = setting(True, help="prompt with the manifest language where the "
                                             "family takes one")
    loading: ModelLoading = group("model")
    runtime: InferenceRuntime = group("runtime")


@dataclass(frozen=True, kw_only=True)
class EvaluationRun(ModelDecoding):
    """What one evaluation decodes and scores with."""

    scoring: Scoring = group("scoring")


@dataclass(frozen=True)
class EvaluationSet:
    """One manifest to transcribe and score, and where its rows and summary go."""

    preset: str
    input: Path
    output: Path
    summary: Path
    scoring: Scoring


@dataclass(frozen=True)
class LoadedModel:
    model: str  # folder or hub id, as given
    name: str  # the summary's model_name
    adapter: AsrAdapter
    load_seconds: float


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


def check_sets(sets: list[EvaluationSet]) -> None:
    """No output overwrites an input manifest or another output."""
    inputs = {Path(s.input).resolve(): s.preset for s in sets}
    written: dict[Path, str] = {}
    for s in sets:
        for option, path in (("output", s.output), ("summary", s.summary)):
            resolved = Path(path).resolve()
            if resolved in inputs:
                raise UserError(f"{s.preset}: {option} {path} is the input manifest of "
                                f"{inputs[resolved]}; write the results elsewhere")
            if resolved in written:
                raise UserError(f"{s.preset}: {option} {path} is also {written[resolved]}")
            written[resolved] = f"the {option} of {s.preset}"


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


@dataclass(frozen=True)
class SetInput:
    """A set's utterances and its normalizer, made before the model loads."""

    utterances: list[Utterance]
    normalize: Normalizer


def read_sets(sets: list[EvaluationSet]) -> list[SetInput]:
    """Every set's utterances and normalizer, made before any model loads (a bad manifest or
    spelling map fails fast); the sets' old outputs are removed (outputs describe the last run
    only: a failure must not leave an earlier summary behind)."""
    check_sets(sets)
    for s in sets:
        for path in (s.output, s.summary):
            Path(path).unlink(missing_ok=True)
    return [SetInput(read_utterances(s.input, require_text=True), s.scoring.make_normalizer())
            for s in sets]


def load_model(model: str, settings: ModelDecoding, *, name: str | None = None) -> LoadedModel:
    device = resolve_device(settings.runtime.device)
    dtype = resolve_dtype(settings.runtime.dtype, device)
    log.info("loading %s on %s (%s)", model, device, dtype_name(dtype))
    load_start = time.perf_counter()
    loading = settings.loading
    adapter = load_adapter(model, family=loading.family, device=device, dtype=dtype,
                           trust_remote_code=loading.trust_remote_code,
                           packed_audio_windows=loading.packed_audio_windows)
    return LoadedModel(model, name or Path(str(model).rstrip("/")).name, adapter,
                       time.perf_counter() - load_start)


def evaluate_set(loaded: LoadedModel, target: EvaluationSet, given: SetInput,
                 settings: ModelDecoding, *, started: float) -> dict:
    """Transcribe and score one set; write its rows and summary. ``started``: when the work the
    summary's wall_seconds counts began."""
    adapter, scoring, decoding = loaded.adapter, target.scoring, settings.decoding
    utterances, norm_name = given.utterances, scoring.normalizer_name()
    device = adapter.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = transcribe(adapter, utterances, batch_size=decoding.batch_size,
                        max_new_tokens=decoding.max_new_tokens,
                        language_hint=settings.language_hint,
                        loader_workers=decoding.loader_workers)
    scored, summary = score_rows(prediction_rows(result), scoring.metric, given.normalize,
                                 source=str(target.output))

    audio_seconds = math.fsum(u.duration for u in utterances)
    dtype = dtype_name(adapter.model.dtype)
    provenance_settings = {
        "model": str(loaded.model), "input": str(target.input), "metric": scoring.metric,
        "normalizer": norm_name, "en_spelling": scoring.en_spelling, "family": adapter.family,
        "batch_size": decoding.batch_size, "max_new_tokens": decoding.max_new_tokens,
        "language_hint": settings.language_hint, "device": device.type, "dtype": dtype}
    summary.update(
        normalizer=norm_name,
        en_spelling=scoring.en_spelling,
        unstopped=sum(1 for p in result.transcripts if not p.stopped),
        generated_tokens=sum(p.generated for p in result.transcripts),
        audio_seconds=audio_seconds,
        decode_seconds=result.decode_seconds,
        load_seconds=loaded.load_seconds,
        rtfx=audio_seconds / result.decode_seconds if result.decode_seconds > 0 else None,
        model=str(loaded.model),
        model_name=loaded.name,
        family=adapter.family,
        preset=target.preset,
        input=str(target.input),
        output=str(target.output),
        batch_size=decoding.batch_size,
        batches=result.batches,
        max_new_tokens=decoding.max_new_tokens,
        language_hint=settings.language_hint,
        device=str(device),
        dtype=dtype,
        threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    summary["wall_seconds"] = time.perf_counter() - started
    summary["provenance"] = provenance(provenance_settings)

    with outputs_together(target.output, target.summary):  # no rows without their summary
        write_jsonl(target.output, scored)
        write_json(target.summary, summary)  # last: its presence means the evaluation completed
    if summary["unstopped"]:
        log.warning("%s: %d of %d predictions hit --max-new-tokens %d without stopping; raise "
                    "it if references are longer", target.preset, summary["unstopped"],
                    len(scored), decoding.max_new_tokens)
    rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.4f}"
    log.info("%s %s on %s: %s %s = %s (%d errors / %d; S=%d D=%d I=%d), %d empty predictions, "
             "%.1f s audio in %.1f s (RTFx %.1f) -> %s", summary["model_name"],
             summary["family"], summary["preset"], scoring.metric, norm_name, rate,
             summary["errors"], summary["ref_len"], summary["substitutions"],
             summary["deletions"], summary["insertions"], summary["empty_predictions"],
             audio_seconds, result.decode_seconds, summary["rtfx"] or 0.0, target.output)
    return summary


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = settings_from_args(EvaluationRun, args)
    target = EvaluationSet(preset=args.preset or Path(args.input).stem, input=Path(args.input),
                           output=Path(args.output), summary=Path(args.summary),
                           scoring=settings.scoring)
    set_threads(settings.runtime.threads)
    (given,) = read_sets([target])
    loaded = load_model(args.model, settings, name=args.model_name)
    evaluate_set(loaded, target, given, settings, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
