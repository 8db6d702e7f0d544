"""Greedy error rates of demo models on held-out preset clips: a quick check of the demo's
bootstrap and OPD settings (the evaluate stage is the proper tool for reports).

Each model decodes the first --clips utterances of each validated preset manifest (batched,
manifest language given to the prompt, blocked special tokens) and is scored with the preset's
metric and normalizer (stages.eval.scoring.score_rows). Prints one line per model and preset
(error rate, empty predictions, seconds) and a few example transcripts; --json writes all of it.

Run from the repository root:
    python -m benchmarks.bench_demo_models --data results/data \\
        --models teacher=results/models/teacher student=results/models/student_base \\
        --presets aishell=cer:zh clean=wer:en --clips 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stages.data.batching import read_utterances
from stages.eval.scoring import score_rows
from stages.models import load_adapter
from stages.models.transcribe import transcribe


def decode(adapter, utterances, batch_size: int, max_new_tokens: int) -> list[dict]:
    result = transcribe(adapter, utterances, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, progress=False)
    return [{"id": t.utterance.id, "text": t.utterance.text, "pred_text": t.text,
             "stopped": t.stopped} for t in result.transcripts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder of validated manifests")
    p.add_argument("--models", nargs="+", required=True, help="NAME=DIR ...")
    p.add_argument("--presets", nargs="+", default=["aishell=cer:zh", "clean=wer:en"],
                   help="PRESET=METRIC:NORMALIZER ...")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    p.add_argument("--examples", type=int, default=2)
    p.add_argument("--agreement-with", default=None,
                   help="NAME of a listed model: also score every other model's transcripts "
                        "against that model's (e.g. students against the teacher)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    predictions: dict[tuple[str, str], list[dict]] = {}
    for spec in args.models:
        name, model_dir = spec.split("=", 1)
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        adapter = load_adapter(model_dir, device=args.device, dtype=dtype)
        for preset in args.presets:
            preset_name, rule = preset.split("=", 1)
            metric, norm = rule.split(":", 1)
            utts = read_utterances(args.data / f"{preset_name}.jsonl")[: args.clips]
            start = time.perf_counter()
            rows = decode(adapter, utts, args.batch_size, args.max_new_tokens)
            seconds = time.perf_counter() - start
            predictions[name, preset_name] = rows
            scored, summary = score_rows(rows, metric, norm)
            stopped = sum(r["stopped"] for r in rows) / len(rows)
            print(f"{name:<14} {preset_name:<8} {metric} {summary['rate']:.3f}  empty "
                  f"{summary['empty_predictions']:>2}/{len(rows)}  stopped {stopped:.2f}  "
                  f"{seconds:.1f} s", flush=True)
            for row in scored[-args.examples:]:
                print(f"    ref {row['text']!r}\n    hyp {row['pred_text']!r}")
            results.append({"model": name, "dir": model_dir, "preset": preset_name,
                            "metric": metric, "stopped_ratio": stopped, "seconds": seconds,
                            **summary})
    if args.agreement_with:
        for (name, preset_name), rows in predictions.items():
            reference = predictions.get((args.agreement_with, preset_name))
            if name == args.agreement_with or reference is None:
                continue
            metric, norm = dict(item.split("=", 1) for item in args.presets)[preset_name].split(":")
            paired = [{**row, "teacher_text": ref["pred_text"]}
                      for row, ref in zip(rows, reference, strict=True)]
            _, summary = score_rows(paired, metric, norm, ref_key="teacher_text")
            print(f"{name:<14} {preset_name:<8} {metric} vs {args.agreement_with} "
                  f"{summary['rate']:.3f}")
            results.append({"model": name, "preset": preset_name, "metric": metric,
                            "against": args.agreement_with, **summary})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
