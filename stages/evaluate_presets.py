"""evaluate_presets: one model on several evaluation sets in one process.

The model loads once and warms up once; each set is then decoded and scored exactly as
`python -m stages.evaluate` does it on its own (the same rows and summary, see its --help).
The workflow runs one such job per model instead of one per model and preset: an evaluation
job is mostly model load and warm-up, so this saves most of the evaluation time at demo and
GPU-study sizes and leaves GPU slots to the training jobs (README "The GPU study").

The sets are --preset NAME=MANIFEST ... (validated manifests with references); each needs
--metric NAME=cer|wer; --normalizer NAME=zh|en|basic|none is optional (default: zh for cer,
en for wer). Results go to the reference recipe's names in --output-dir:
test_<NAME>.jsonl (rows, worst first) and summary_<NAME>.json. In a summary, load_seconds is
the one shared load and wall_seconds the set's own decoding and scoring.

Every manifest is read and checked before the model loads; a set that fails stops the stage
with exit status 1, after the sets before it were written.

Example:
  python -m stages.evaluate_presets --model results/models/opd_base \\
      --output-dir results/eval/opd_base \\
      --preset aishell=results/data/aishell.jsonl clean=results/data/clean.jsonl \\
      --metric aishell=cer clean=wer --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.runtime import set_threads
from stages.common.settings import add_settings, setting, settings_from_args
from stages.eval.normalize import NormalizerName
from stages.eval.scoring import METRICS, Scoring
from stages.evaluate import (
    EvaluationSet,
    ModelDecoding,
    evaluate_set,
    load_model,
    read_sets,
)

NORMALIZERS = get_args(NormalizerName)


@dataclass(frozen=True, kw_only=True)
class PresetsRun(ModelDecoding):
    """The sets to evaluate, and how the model decodes them all."""

    preset: dict[str, str] = setting({}, metavar="NAME=MANIFEST", help="the sets: each one's "
                                     "name and validated manifest (with references)")
    metric: dict[str, str] = setting({}, metavar="NAME=METRIC", help="each set's metric: "
                                     f"{' or '.join(METRICS)}")
    normalizer: dict[str, str] = setting({}, metavar="NAME=NORMALIZER", help="a set's "
                                         f"normalizer: {', '.join(NORMALIZERS)} (default: zh "
                                         "for cer, en for wer)")
    en_spelling: str | None = setting(None, metavar="JSON", help="spelling map for the en "
                                      "normalizer (e.g. a Whisper normalizer.json)")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--output-dir", required=True, type=Path,
                   help="where test_<NAME>.jsonl and summary_<NAME>.json go")
    add_settings(p, PresetsRun)
    p.add_argument("--model-name", default=None,
                   help="model name for the summaries (default: the model folder's name)")
    return p


def evaluation_sets(run: PresetsRun, output_dir: Path) -> list[EvaluationSet]:
    """The sets in --preset order, each with its own scoring; bad names and values are
    UserErrors."""
    if not run.preset:
        raise UserError("no set to evaluate: give --preset NAME=MANIFEST ...")
    for option, named, choices in (("--metric", run.metric, METRICS),
                                   ("--normalizer", run.normalizer, NORMALIZERS)):
        unknown = sorted(set(named) - set(run.preset))
        if unknown:
            raise UserError(f"{option} names {', '.join(unknown)}, which no --preset gives")
        for name, value in named.items():
            if value not in choices:
                raise UserError(f"{option} {name}={value}: {value!r} is not one of "
                                f"{', '.join(choices)}")
    missing = [name for name in run.preset if name not in run.metric]
    if missing:
        raise UserError(f"no --metric for {', '.join(missing)}; give NAME=cer or NAME=wer for "
                        "every --preset")
    return [EvaluationSet(preset=name, input=Path(manifest),
                          output=output_dir / f"test_{name}.jsonl",
                          summary=output_dir / f"summary_{name}.json",
                          scoring=Scoring(metric=run.metric[name],
                                          normalizer=run.normalizer.get(name),
                                          en_spelling=run.en_spelling))
            for name, manifest in run.preset.items()]


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(PresetsRun, args)
    sets = evaluation_sets(settings, args.output_dir)
    set_threads(settings.runtime.threads)
    inputs = read_sets(sets)
    loaded = load_model(args.model, settings, name=args.model_name)
    for target, given in zip(sets, inputs, strict=True):
        evaluate_set(loaded, target, given, settings, started=time.perf_counter())
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
