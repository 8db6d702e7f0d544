"""score: (re)score a predictions JSONL without a model: normalize, align, count, sort worst first.

Input: a JSONL file whose rows carry the reference (--ref-key, default "text") and the prediction
(--hyp-key, default "pred_text") as strings; "" is a valid (empty) prediction. A row that lacks
either field, or holds a non-string there, is an error naming the file and line.

Outputs:
  --output   the input rows with ref_norm, pred_norm, errors, substitutions, deletions, insertions,
             ref_len, error_rate (null when the normalized reference is empty) and cer_errors or
             wer_errors (= errors) added; sorted worst first (errors, then error rate, descending;
             ties keep input order).
  --summary  JSON: metric, normalizer, rate (= total errors / total reference length, not a mean
             of per-utterance rates; also under the metric's name), errors, substitutions,
             deletions, insertions, hits, ref_len, utterances, empty_predictions (normalized
             prediction empty), empty_references, input, provenance.

Metrics: cer counts characters with all whitespace removed (a reference with spaces between
Chinese characters scores like one without; each Latin letter is a character); wer counts
whitespace-separated words. Both align through jiwer.

Normalizers (default: zh for cer, en for wer):
  zh     NFKC (full-width to half-width), lower-case, punctuation and symbols removed
  en     Whisper's English normalizer (transformers); --en-spelling adds a British-to-American
         spelling map such as a Whisper checkpoint's normalizer.json
  basic  Whisper's basic normalizer (lower-case, symbols and punctuation removed)
  none   the text as it is (stripped)

Example:
  python -m stages.score --input results/eval/student/test_aishell.jsonl \\
      --output rescored/test_aishell.jsonl --summary rescored/aishell.json --metric cer
"""

from __future__ import annotations

import argparse
import logging
import sys

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.fsutil import outputs_together
from stages.common.jsonl import iter_jsonl, write_json, write_jsonl
from stages.common.provenance import provenance
from stages.common.settings import add_settings, settings_from_args
from stages.eval.scoring import Scoring, score_rows

log = logging.getLogger("stages.score")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--input", required=True, help="predictions JSONL")
    p.add_argument("--output", required=True, help="scored JSONL, worst first")
    p.add_argument("--summary", required=True, help="summary JSON")
    add_settings(p, Scoring)
    p.add_argument("--ref-key", default="text", help="reference field (default: text)")
    p.add_argument("--hyp-key", default="pred_text", help="prediction field (default: pred_text)")
    return p


def main(args: argparse.Namespace) -> int:
    scoring = settings_from_args(Scoring, args)
    name, normalize = scoring.normalizer_name(), scoring.make_normalizer()
    numbered = list(iter_jsonl(args.input))  # line numbers for error messages
    if not numbered:
        raise UserError(f"{args.input}: no rows to score; check that the predictions were "
                        "written completely")
    line_numbers = [number for number, _ in numbered]
    rows = [row for _, row in numbered]

    scored, summary = score_rows(rows, args.metric, normalize, args.ref_key, args.hyp_key,
                                 source=str(args.input), line_numbers=line_numbers)
    summary["normalizer"] = name
    summary["en_spelling"] = args.en_spelling
    summary["input"] = str(args.input)
    settings = {key: summary[key] for key in
                ("metric", "normalizer", "ref_key", "hyp_key", "en_spelling")}
    summary["provenance"] = provenance(settings)

    with outputs_together(args.output, args.summary):  # no scored file without its summary
        write_jsonl(args.output, scored)
        write_json(args.summary, summary)
    rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.4f}"
    log.info("%s %s = %s (%d errors / %d; S=%d D=%d I=%d) over %d utterances, %d empty "
             "predictions -> %s", args.metric, name, rate, summary["errors"], summary["ref_len"],
             summary["substitutions"], summary["deletions"], summary["insertions"],
             summary["utterances"], summary["empty_predictions"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
