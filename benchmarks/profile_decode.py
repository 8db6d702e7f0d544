"""Where a transcription batch spends its time: encoding (prompts and features) against
decoding, next to plain transformers ``generate`` on the same prebuilt inputs.

For the real-size teacher and student of benchmarks/bench_opd_step.py and one batch
(--batch clips of 10 s, or 8-12 s with --varied-too), timed after a warm-up, best of 3:

- ``encode_per_clip_s``: the adapter's encoding with one processor call per clip (the CPU path)
- ``encode_batched_s``: the adapter's encoding with batched features (stages.models.features,
  the CUDA default); prompts are cached per audio length, warm after the first call
- ``processor_batched_s``: one processor call for the whole batch (not what the adapter does: a
  clip's features would depend on its batch mates; for reference only)
- ``generate_s``: the adapter's ``generate`` from raw clips (encoding included, default path)
- ``hf_static_s``: transformers ``generate`` with a static cache on the prebuilt inputs
- ``decode_only_s`` = generate_s - encode_batched_s, the figure to hold against hf_static_s

    python -m benchmarks.profile_decode --json profile_decode.json     # real size, CUDA
    python -m benchmarks.profile_decode --small --batch 4              # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from benchmarks.bench_opd_step import device_and_models, sync
from stages.models import load_adapter


def best_time(device, function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        function()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def profile(adapter, clips, languages, max_new_tokens: int, logprobs: bool, device) -> dict:
    # Fresh arrays per call: an adapter keeps a clip's encoding as long as the array lives.
    def fresh():
        return [c.copy() for c in clips]

    adapter.batched_features = False
    per_clip = best_time(device, lambda: adapter.build_batch(fresh(), languages), 3)
    adapter.batched_features = None  # the default: batched on CUDA
    encode = best_time(device, lambda: adapter.build_batch(fresh(), languages), 3)
    texts = [adapter._prompt_text(c, lang) for c, lang in zip(clips, languages, strict=True)]
    extra = {"device": str(device)} if device.type == "cuda" else {}
    batched = best_time(device, lambda: adapter.processor(
        text=texts, audio=clips, return_tensors="pt", **extra), 3)
    adapter.generate(fresh(), languages, max_new_tokens=max_new_tokens, output_logprobs=logprobs)
    generate = best_time(device, lambda: adapter.generate(
        fresh(), languages, max_new_tokens=max_new_tokens, output_logprobs=logprobs), 2)
    inputs = {k: v for k, v in adapter.build_batch(clips, languages).inputs.items()
              if k != "position_ids"}
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=adapter.stop_token_id,
                              pad_token_id=adapter.pad_token_id,
                              cache_implementation="static" if device.type == "cuda" else None)
    with torch.no_grad():
        adapter._generate(inputs, generation_config=config)  # the family's generate
        hf = best_time(device, lambda: adapter._generate(inputs, generation_config=config),
                       2)
    audio_seconds = sum(len(c) for c in clips) / 16000
    return {"encode_per_clip_s": per_clip, "encode_batched_s": encode,
            "processor_batched_s": batched, "generate_s": generate,
            "hf_static_s": hf, "decode_only_s": generate - encode,
            "rtfx_project": audio_seconds / generate, "rtfx_hf_static": audio_seconds / hf}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke check)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--varied-too", action="store_true",
                   help="also a batch of 8-12 s clips (padding, per-clip prompt lengths)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_models"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device, dtype = device_and_models(args.workdir, args.small)
    rng = np.random.default_rng(0)
    shapes = {"equal": np.full(args.batch, 10.0)}
    if args.varied_too:
        shapes["varied"] = rng.uniform(8, 12, args.batch)
    batches = {name: [(0.05 * rng.standard_normal(int(16000 * s))).astype(np.float32)
                      for s in seconds] for name, seconds in shapes.items()}
    languages = ["zh" if i % 2 == 0 else "en" for i in range(args.batch)]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch,
              "max_new_tokens": args.max_new_tokens}
    for name in ("teacher", "student"):
        adapter = load_adapter(str(args.workdir / name), device=device, dtype=dtype)
        for shape, clips in batches.items():
            row = profile(adapter, clips, languages, args.max_new_tokens,
                          logprobs=name == "teacher", device=device)
            result[f"{name}_{shape}"] = row
            print(f"{name}_{shape}", json.dumps({k: round(v, 4) for k, v in row.items()}),
                  flush=True)
        del adapter
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
