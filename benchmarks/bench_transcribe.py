"""Transcription throughput of the shared decoding path (stages.models.transcribe): teacher data
with a Qwen3-ASR-1.7B-size teacher and evaluation with the 0.6 B GLM-ASR-style student.

The models are the random-weight real-size ones of benchmarks/bench_opd_step.py (the demo's
model code at the published shapes; 151,936-wide vocabulary, ids past the small demo tokenizer
blocked as a real checkpoint's unused rows are). Clips of --seconds are written as WAV files and
transcribed exactly as the stages do: audio loading, features, greedy decoding with the
blocked-token mask and stop rule (static KV cache and transformers' compiled step on CUDA), the
teacher also recording each token's log-prob (teacher data's filters need it). Random weights
rarely stop, so nearly every clip generates --max-new-tokens tokens: the worst case.

For each model, --batch-sizes value and --loader-workers value, after one warm-up pass over the
same clips: audio seconds per second (= RTFx), generated tokens per second, seconds per batch,
peak GPU memory; with --compare, plain transformers generate (dynamic and static cache) on the
same first batch, features prebuilt, for the ratio.

    python -m benchmarks.bench_transcribe --json transcribe.json            # real size, CUDA
    python -m benchmarks.bench_transcribe --small --batch-sizes 2 --batches 1   # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from benchmarks.bench_opd_step import PAIRS, device_and_models, sync
from stages.data.audio import TARGET_SAMPLE_RATE, write_wav
from stages.data.batching import Utterance, load_batch
from stages.models import load_adapter
from stages.models.transcribe import transcribe


def make_clips(folder: Path, count: int, seconds: float) -> list[Utterance]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    clips = []
    for index in range(count):
        path = folder / f"clip{index:04d}.wav"
        write_wav(path, (0.05 * rng.standard_normal(int(TARGET_SAMPLE_RATE * seconds))
                         ).astype(np.float32))
        clips.append(Utterance(id=f"clip{index:04d}", audio=str(path), duration=seconds,
                               language="zh" if index % 2 == 0 else "en"))
    return clips


def hf_generate(adapter, utterances, max_new_tokens: int, cache: str | None, device) -> float:
    """Seconds of plain transformers generate on prebuilt inputs (after a warm-up call)."""
    batch = load_batch(utterances)
    inputs = {k: v for k, v in adapter.build_batch(batch.audios, batch.languages).inputs.items()
              if k != "position_ids"}
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=adapter.stop_token_id,
                              pad_token_id=adapter.pad_token_id, cache_implementation=cache)
    times = []
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            adapter._generate(inputs, generation_config=config)  # the family's generate
        sync(device)
        times.append(time.perf_counter() - start)
    return times[-1]


def measure(name: str, adapter, clips, batch_sizes, batches: int, max_new_tokens: int,
            logprobs: bool, compare: bool, device, loader_workers: list[int]) -> list[dict]:
    rows = []
    for size in batch_sizes:
        utterances = clips[: size * batches]
        compared = {}
        if compare:
            first = utterances[:size]
            seconds = size * first[0].duration
            for cache, key in ((None, "hf_dynamic"), ("static", "hf_static")):
                spent = hf_generate(adapter, first, max_new_tokens, cache, device)
                compared[f"{key}_audio_seconds_per_second"] = seconds / spent
        for workers in loader_workers:
            options = {"batch_size": size, "max_new_tokens": max_new_tokens,
                       "logprobs": logprobs, "progress": False, "loader_workers": workers}
            transcribe(adapter, utterances, **options)  # warm-up: compilation, allocator
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            result = transcribe(adapter, utterances, **options)
            sync(device)
            audio = sum(u.duration for u in utterances)
            tokens = sum(t.generated for t in result.transcripts)
            row = {"model": name, "batch_size": size, "loader_workers": workers,
                   "clips": len(utterances),
                   "audio_seconds_per_second": audio / result.decode_seconds,
                   "tokens_per_second": tokens / result.decode_seconds,
                   "seconds_per_batch": result.decode_seconds / result.batches,
                   "generated_tokens": tokens,
                   "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30
                                       if device.type == "cuda" else None),
                   **compared}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke check)")
    p.add_argument("--pair", choices=PAIRS, default="qwen3_glm",
                   help="the models (benchmarks/bench_opd_step.py --pair)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--batches", type=int, default=4,
                   help="batches timed per batch size (the first one's loading and encoding "
                        "is not overlapped: a real run has thousands)")
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 4],
                   help="loader processes (stages.models.transcribe.prefetched); each value "
                        "is timed")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--models", nargs="+", choices=["teacher", "student"],
                   default=["teacher", "student"])
    p.add_argument("--compare", action="store_true",
                   help="also time plain transformers generate (dynamic and static cache)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_models"),
                   help="model folder; models already there (bench_opd_step --keep) are reused")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device, dtype = device_and_models(args.workdir, args.small, args.pair)
    clips = make_clips(args.workdir / "clips", max(args.batch_sizes) * args.batches,
                       args.seconds)
    rows = []
    for name in args.models:
        adapter = load_adapter(str(args.workdir / name), device=device, dtype=dtype)
        rows += measure(name, adapter, clips, args.batch_sizes, args.batches,
                        args.max_new_tokens, logprobs=name == "teacher", compare=args.compare,
                        device=device, loader_workers=args.loader_workers)
        if args.json:  # what is measured so far survives a time limit
            args.json.write_text(json.dumps({"rows": rows}, indent=2))
        del adapter
        if device.type == "cuda":
            torch.cuda.empty_cache()
    shutil.rmtree(args.workdir, ignore_errors=True)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "seconds": args.seconds,
              "max_new_tokens": args.max_new_tokens, "rows": rows,
              "best": {name: max((r for r in rows if r["model"] == name),
                                 key=lambda r: r["audio_seconds_per_second"])
                       for name in args.models}}
    print(json.dumps({name: round(row["audio_seconds_per_second"], 1)
                      for name, row in result["best"].items()}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
