"""Qwen3-ASR's audio encoder: transformers' attention, one call per attention window, against
the same windows packed into one padded SDPA call. Prints the encoder's forward and backward
time for both and their largest output difference.

Why: without flash attention, ``Qwen3ASRAudioAttention`` loops in Python over the batch's
windows (``cu_seqlens``), every layer, forward and backward, so its cost grows with the number
of clips (the GPU study's teacher bootstrap: 202 ms a step at 64 clips, 546 ms at 256;
benchmarks/results/h200/gpu_study_bootstrap_batch.txt). The packed variant is
``stages.models.window_attention`` (measured here: 3.3x at 64 clips and 4.0x at 256 on an H200,
0.95x-1.06x on a 2-core CPU; why it is off by default: that module's docstring).

    python -m benchmarks.bench_audio_windows --model results/models/teacher --batch-sizes 16 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import Qwen3ASRForConditionalGeneration

from stages.models.window_attention import use_packed_window_attention


def encoder_inputs(model, batch: int, seconds: tuple[float, float], seed: int):
    """Random log-mel features of ``batch`` clips of uniform random length, padded as the
    processor pads them (frame axis a multiple of the encoder's chunk)."""
    tower = model.model.audio_tower
    chunk = tower.n_window * 2
    generator = torch.Generator().manual_seed(seed)
    frames = (torch.empty(batch).uniform_(*seconds, generator=generator) * 100).long()
    width = int(-(-frames.max() // chunk) * chunk)
    features = torch.randn(batch, tower.config.num_mel_bins, width, generator=generator)
    mask = (torch.arange(width)[None, :] < frames[:, None]).long()
    return features, mask


def timed(model, features, mask, repeats: int) -> tuple[float, torch.Tensor]:
    tower = model.model.audio_tower
    out = None
    for attempt in range(repeats + 1):  # the first is a warm-up
        if attempt == 1:
            if features.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        out = tower(features, input_features_mask=mask).last_hidden_state
        out.float().pow(2).mean().backward()
    if features.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, out.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Qwen3-ASR model folder")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--seconds", type=float, nargs=2, default=[1.0, 4.0],
                   help="clip length range (default: 1 4, the demos' clips)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = Qwen3ASRForConditionalGeneration.from_pretrained(args.model).to(args.device).train()
    tower = model.model.audio_tower
    default = tower.config._attn_implementation
    results = []
    for batch in args.batch_sizes:
        features, mask = (t.to(args.device) for t in encoder_inputs(model, batch, args.seconds, 0))
        tower.config._attn_implementation = default
        looped, reference = timed(model, features, mask, args.repeats)
        use_packed_window_attention(model)
        packed, out = timed(model, features, mask, args.repeats)
        tower.config._attn_implementation = default
        row = {"batch": batch, "device": args.device, "attention": default,
               "looped_s": round(looped, 4), "packed_s": round(packed, 4),
               "speedup": round(looped / packed, 2),
               "max_abs_diff": float((out - reference).abs().max())}
        print(json.dumps(row))
        results.append(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
