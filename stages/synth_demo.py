"""Synthesize the embedded demo speech corpus with espeak-ng (no download needed).

Renders multilingual sentences from small per-language grammars (or, with --grammar large, a
large zh and en one) with espeak-ng voices, applies each split's degradations, and writes
16 kHz mono 16-bit wavs plus manifests:

  train     multilingual mix (zh and en 40 % each, the rest shared by de fr ko ja), mild noise /
            reverberation / speed augmentation on about half of the clips (--telephone-share:
            also the telephone codec on that share of them)
  td_pool   same distribution as train, different sentences (keeps the reference text)
  aishell   zh clean                       meeting  zh, noise 10-20 dB SNR + reverberation
  net       zh, speed 0.85-1.15, pitch, telephone codec (8 kHz band + 8-bit mu-law)
  clean     en clean                       other    en, harder voices + noise 10-20 dB SNR
  dev_<preset>  a preset's conditions over td_pool-partition sentences, for choosing settings
            without the presets (empty unless --sizes names them)

Evaluation sentences never occur in train or td_pool. The same seed gives byte-identical wavs
and manifests, whatever --workers.

Outputs under --output-dir:
  wavs/<split>/<id>.wav       audio
  manifests/<split>.jsonl     {"audio": "../wavs/<split>/<id>.wav", "text", "task": "asr",
                              "begin_time": -1, "end_time": -1, "language", "id"}
  details/<split>.jsonl       each clip's voice, rate, pitch, degradations and duration
  corpus.json                 counts and hours per split and language, settings, provenance

Example:
  python -m stages.synth_demo --output-dir results/demo/corpus --seed 1234 \\
      --sizes train=1100 td_pool=300 aishell=40 meeting=40 net=40 clean=40 other=40 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import sys

from stages.common.cli import parser, run_stage
from stages.common.settings import add_settings, settings_from_args
from stages.demo.corpus import CorpusSettings, build_corpus

log = logging.getLogger("stages.synth_demo")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--output-dir", required=True, help="corpus folder (created if missing)")
    add_settings(p, CorpusSettings)
    return p


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(CorpusSettings, args)
    corpus = build_corpus(args.output_dir, settings.sizes, settings.seed,
                          settings.train_languages, workers=settings.workers,
                          progress=settings.progress, grammar=settings.grammar,
                          telephone_share=settings.telephone_share)
    for split, summary in corpus["splits"].items():
        languages = ", ".join(f"{lang} {block['clips']}"
                              for lang, block in summary["languages"].items())
        log.info("%-8s %4d clips %7.3f h  (%s)", split, summary["clips"], summary["hours"],
                 languages)
    log.info("wrote %s/corpus.json: %d clips, %.3f h in %.1f s", args.output_dir,
             corpus["total"]["clips"], corpus["total"]["hours"], corpus["run"]["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
