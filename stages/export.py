"""export: turn a training checkpoint into a verified Hugging Face model folder with a model card.

The checkpoint's weights (DCP, any number of ranks) go into a plain model built from the base
folder's config; the folder gets safetensors weights, config, and the base folder's generation
config, processor, feature extractor, tokenizer and chat template (copied unchanged), a model
card (README.md) and export_summary.json. Before anything appears at --output, the folder is
reloaded with the transformers Auto classes and checked against the checkpoint-loaded model:
every checkpoint tensor must be bitwise equal to the reloaded one (in the export dtype), and on a
probe batch both must decode the same greedy responses and give the same teacher-forced logits
(max |diff| within --tolerance). A failed check exits with status 1 and the numbers; the report
then goes to <output>.failed.json and --output is left as it was.

Inputs:
  --checkpoint DIR   a step_<n> checkpoint, a checkpoints/ folder or a training run folder
                     (the latter two: the newest complete checkpoint)
  --base DIR         the model folder (or cached hub id) the run started from: architecture and
                     processor files. Default: base_model of the run's train_summary.json
  --probe-manifest M a validated manifest; its first --probe-clips clips form the probe batch
                     (default: synthetic clips)
  --results-dir DIR  an evaluation folder of this model (summary_<preset>.json): its results go
                     into the model card
Outputs:
  --output HF_DIR    the model folder (written under a temporary name, renamed when verified):
                     model.safetensors, config.json, generation_config.json, processor and
                     tokenizer files, README.md (provenance: base model, checkpoint step, train
                     config hash, git commits, versions; verification; results) and
                     export_summary.json (checkpoint, weight and logit checks, provenance)

Example:
  python -m stages.export --checkpoint results/train/opd_base \\
      --base results/models/student_base --output results/export/opd_base \\
      --probe-manifest results/data/aishell.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.jsonl import atomic_writer, write_json
from stages.common.provenance import provenance
from stages.common.runtime import Threads, resolve_device, set_threads
from stages.common.settings import add_settings, as_dict, group, settings_from_args
from stages.reporting.results import read_model_summaries
from stages.train.checkpoint_export import (
    SUMMARY_FILE,
    ExportResult,
    ExportSettings,
    export_checkpoint,
    export_summary,
    manifest_probe,
    model_card,
    resolve_checkpoint,
    synthetic_probe,
)

log = logging.getLogger("stages.export")


@dataclass(frozen=True, kw_only=True)
class ExportRun:
    """What one export writes and checks with."""

    export: ExportSettings = group("export and its reload check")
    threads: Threads = group("runtime")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="checkpoint folder, checkpoints/ folder or training run folder")
    p.add_argument("--base", default=None,
                   help="model folder the run started from (default: from train_summary.json)")
    p.add_argument("--output", required=True, type=Path, help="the exported model folder")
    p.add_argument("--probe-manifest", type=Path, default=None,
                   help="validated manifest for the probe batch (default: synthetic clips)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="evaluation folder of this model: results for the model card")
    p.add_argument("--name", default=None, help="model name in the card (default: --output's)")
    add_settings(p, ExportRun)
    return p


def _results(results_dir: Path | None) -> list[dict]:
    if results_dir is None:
        return []
    found = read_model_summaries(results_dir)
    if not found:
        log.warning("--results-dir %s holds no summary_<preset>.json: no results in the card",
                    results_dir)
    return [{**summary, "preset": summary.get("preset") or preset}
            for preset, (_, summary) in sorted(found.items())]


def main(args: argparse.Namespace) -> int:
    run = settings_from_args(ExportRun, args)
    set_threads(run.threads.threads)
    settings = replace(run.export, device=str(resolve_device(run.export.device)))
    ckpt = resolve_checkpoint(args.checkpoint)
    base = args.base or ckpt.recorded_base
    if base is None:
        raise UserError(f"{ckpt.path}: the run folder has no train_summary.json naming its base "
                        "model; pass --base (the model folder training started from)")
    if args.base and ckpt.recorded_base and str(args.base) != ckpt.recorded_base:
        log.warning("--base %s differs from the run's recorded base model %s", args.base,
                    ckpt.recorded_base)
    probe = (manifest_probe(args.probe_manifest, settings.probe_clips) if args.probe_manifest
             else synthetic_probe(settings.probe_clips))
    results = _results(args.results_dir)
    name = args.name or args.output.resolve().name
    record = {"settings": as_dict(settings), "checkpoint": str(ckpt.path), "base": str(base),
              "probe": probe.source}
    stamp = provenance({k: str(v) for k, v in record.items()})

    def finish(result: ExportResult, folder: Path) -> None:
        summary = export_summary(result, settings) | {"provenance": stamp}
        write_json(folder / SUMMARY_FILE, summary)
        with atomic_writer(folder / "README.md") as handle:
            handle.write(model_card(summary, stamp, name=name, location=str(args.output),
                                    results=results))

    failed = args.output.with_name(f"{args.output.name}.failed.json")
    result = export_checkpoint(ckpt, base, args.output, probe, settings, finish=finish)
    if not result.passed:
        write_json(failed, export_summary(result, settings) | {"provenance": stamp})
        raise UserError(f"the export of {ckpt.path} does not reproduce the checkpoint; nothing "
                        f"was written to {args.output} (report: {failed}):\n  - "
                        + "\n  - ".join(result.failures())
                        + "\nCheck that --base is the folder the run started from")
    failed.unlink(missing_ok=True)
    log.info("exported step %d of %s to %s: weights equal, max |logit diff| %.3g over %d "
             "positions (tolerance %g), %.1f s", ckpt.step, ckpt.path, args.output,
             result.probe["max_abs_diff"], result.probe["positions"], settings.tolerance,
             result.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
