"""Build the embedded demo's tiny models: shared tokenizer, Qwen3-ASR teacher, GLM-ASR student.

A byte-level BPE tokenizer (all 256 bytes, so any language encodes) is trained on the `text`
field of the given manifests; a tiny Qwen3-ASR teacher and a tiny GLM-ASR student are built with
transformers' own classes, randomly initialised from --seed, and saved as ordinary HF folders
that AutoModelForSeq2SeqLM / AutoProcessor load offline. Each folder is reloaded through the
model adapters and decodes a second of silence before the stage reports success.

Inputs:
  --manifests   one or more JSONL manifests (train, TD pool); rows without text are skipped
Outputs (under --output-dir):
  tokenizer/        the shared tokenizer
  teacher_init/     Qwen3-ASR (model, generation config, processor, chat template)
  student_init/     GLM-ASR (same)
  tiny_models.json  spec, seed, parameter counts, vocabulary sizes, stop tokens, provenance
Options:
  --spec JSON   size overrides merged into the defaults (below), e.g.
                '{"vocab_size": 1024, "teacher": {"layers": 2}}'
  --seed N      weight initialisation seed (teacher uses N, student N+1)

Default spec:
{defaults}

Example:
  python -m stages.tiny_models --manifests demo/train.jsonl demo/td_pool.jsonl \\
      --output-dir results/tiny --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.jsonl import write_json
from stages.common.provenance import provenance
from stages.data.audio import TARGET_SAMPLE_RATE
from stages.demo.tiny import DEFAULT_SPEC, build_tiny_models
from stages.models import load_adapter

log = logging.getLogger("stages.tiny_models")


def build_parser() -> argparse.ArgumentParser:
    defaults = json.dumps(DEFAULT_SPEC, indent=2)
    p = parser(__doc__.replace("{defaults}", "  " + defaults.replace("\n", "\n  ")))
    p.add_argument("--manifests", nargs="+", required=True, help="JSONL manifests with `text`")
    p.add_argument("--output-dir", required=True, type=Path, help="folder for the three dirs")
    p.add_argument("--spec", default="{}", help="JSON object of size overrides")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    return p


def _parse_spec(text: str) -> dict:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--spec: invalid JSON at column {err.colno} ({err.msg}); pass an "
                        "object such as '{\"teacher\": {\"layers\": 2}}'") from err
    if not isinstance(spec, dict):
        raise UserError(f"--spec: expected a JSON object, got {type(spec).__name__}")
    return spec


def main(args: argparse.Namespace) -> int:
    spec = _parse_spec(args.spec)
    start = time.perf_counter()
    summary = build_tiny_models(args.manifests, args.output_dir, spec, seed=args.seed)
    # Reload exactly as the pipeline will, so a folder that does not load never counts as built.
    for side in ("teacher", "student"):
        adapter = load_adapter(str(args.output_dir / summary[side]["dir"]))
        adapter.generate([np.zeros(TARGET_SAMPLE_RATE, dtype=np.float32)], [None],
                         max_new_tokens=2)
        summary[side].update(
            family=adapter.family, stop_token=adapter.tokenizer.convert_ids_to_tokens(
                adapter.stop_token_id),
            stop_token_id=adapter.stop_token_id, blocked_token_ids=len(adapter.blocked_token_ids))
        log.info("%s: %s, %.2fM parameters, stop %s", side, summary[side]["class"],
                 summary[side]["parameters"]["total"] / 1e6, summary[side]["stop_token"])
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["provenance"] = provenance({"spec": summary["spec"], "seed": args.seed,
                                        "manifests": summary["corpus"]["manifests"]})
    write_json(args.output_dir / "tiny_models.json", summary)
    log.info("tokenizer: %d tokens; wrote %s", summary["tokenizer"]["length"], args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
