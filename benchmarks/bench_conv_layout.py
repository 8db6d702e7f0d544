"""Qwen3-ASR's audio encoder forward and backward with its convolution weights in the default
(contiguous) layout against channels_last, side by side in one run; prints both times, their
ratio and the largest output difference (inputs and timing: bench_audio_windows's).

Why: on the CPU the demo teacher's bootstrap is most of `make demo` (717 s of ~27 min), its
audio encoder 0.8 s of a 1.1 s step and the encoder's three stride-2 convolutions ~60 % of
that (README "The demo, measured"). oneDNN's convolutions can be faster on channels_last
tensors. A measurement, not the pipeline's code path.

    python -m benchmarks.bench_conv_layout --model results/models/teacher --batch 16 --seconds 3
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import Qwen3ASRForConditionalGeneration

from benchmarks.bench_audio_windows import encoder_inputs, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Qwen3-ASR model folder")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="length of every clip")
    p.add_argument("--rounds", type=int, default=4, help="alternations of the two layouts")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = Qwen3ASRForConditionalGeneration.from_pretrained(args.model).train()
    tower = model.model.audio_tower
    features, mask = encoder_inputs(model, args.batch, (args.seconds, args.seconds), 0)
    rows = []
    for round_ in range(args.rounds):
        tower.to(memory_format=torch.contiguous_format)
        plain, reference = timed(model, features, mask, args.repeats)
        tower.to(memory_format=torch.channels_last)
        last, out = timed(model, features, mask, args.repeats)
        row = {"round": round_, "contiguous_s": round(plain, 4), "channels_last_s": round(last, 4),
               "speedup": round(plain / last, 2),
               "max_abs_diff": float((out - reference).abs().max())}
        print(json.dumps(row))
        rows.append(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
