"""Where the report's evaluations live: model folders (one per model, or one per training seed)
and the per-utterance edit counts the intervals are computed from.

Layout under the evaluation folder (``--eval-dir``), as ``python -m stages.evaluate`` writes it::

    <model>/summary_<preset>.json          one evaluation of a model (base, teacher, ...)
    <model>/test_<preset>.jsonl            its rows: id, errors, ref_len, ... per utterance
    <model>@seed<k>/summary_<preset>.json  one evaluation per training seed k (k an integer)
    <model>@seed<k>/test_<preset>.jsonl

A model is either single (a ``<model>`` folder) or seeded (``<model>@seed<k>`` folders), never
both: which of the two would the table show? Seeded folders form one table row whose cells are
the mean over seeds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import UserError
from stages.common.jsonl import iter_jsonl

SEEDED = re.compile(r"^(?P<model>.+)@seed(?P<seed>\d+)$")
_RESCORE = ("rescore it with python -m stages.score (which adds the per-utterance counts), or "
            "evaluate again")


@dataclass(frozen=True)
class Run:
    """One evaluation folder: a model's only evaluation (``seed`` None) or one seed's."""

    model: str
    seed: int | None
    folder: str  # its name under the evaluation folder

    def rows_file(self, eval_dir: Path, preset: str) -> Path:
        return eval_dir / self.folder / f"test_{preset}.jsonl"


def run_of(folder: str) -> Run:
    """``opd_base@seed2`` → Run("opd_base", 2, ...); any other name is a single evaluation."""
    match = SEEDED.match(folder)
    if match:
        return Run(match.group("model"), int(match.group("seed")), folder)
    return Run(folder, None, folder)


def group_runs(eval_dir: Path, folders: Sequence[str], *, seeds: Sequence[int] | None = None
               ) -> dict[str, list[Run]]:
    """Model → its runs (seeds ascending) from the names of the folders holding summaries.

    ``seeds``: the training seeds of this study; seeded models keep exactly those (a folder of
    another seed, e.g. left from an earlier config, is ignored) and each must be present.
    """
    models: dict[str, list[Run]] = {}
    for folder in folders:
        run = run_of(folder)
        models.setdefault(run.model, []).append(run)
    for model, runs in models.items():
        kinds = {run.seed is None for run in runs}
        if len(kinds) > 1:
            seeded = ", ".join(r.folder for r in runs if r.seed is not None)
            raise UserError(f"{eval_dir}: {model} has both a single evaluation ({model}/) and "
                            f"seeded ones ({seeded}); remove the one that is stale")
        if seeds is not None and runs[0].seed is not None:
            absent = [s for s in seeds if s not in {r.seed for r in runs}]
            if absent:
                raise UserError(
                    f"{eval_dir}: {model} has no evaluation of seed(s) "
                    f"{', '.join(map(str, absent))} (expected folders "
                    f"{', '.join(f'{model}@seed{s}' for s in absent)}); evaluate them or "
                    "leave them out of --seeds")
            runs[:] = [r for r in runs if r.seed in set(seeds)]
        runs.sort(key=lambda r: -1 if r.seed is None else r.seed)
    return models


@dataclass(frozen=True)
class UtteranceCounts:
    """Per-utterance edit counts of one evaluation on one preset, sorted by utterance id (the
    rows file is worst first; sorting gives every evaluation of a preset one common order)."""

    path: Path
    ids: np.ndarray  # str, sorted, unique
    errors: np.ndarray  # int64
    ref_len: np.ndarray  # int64


def _count(row: Mapping[str, Any], key: str) -> int | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def read_counts(path: str | Path, summary: Mapping[str, Any] | None = None) -> UtteranceCounts:
    """Read ``id``, ``errors`` and ``ref_len`` of every row of an evaluation's rows file.

    ``summary``: the evaluation's summary; its ``errors`` and ``ref_len`` totals must equal the
    rows' sums (otherwise one of the two files is stale).
    """
    path = Path(path)
    ids: list[str] = []
    errors: list[int] = []
    ref_len: list[int] = []
    for number, row in iter_jsonl(path, hint="give the test_<preset>.jsonl stages.evaluate "
                                              "writes"):
        utt, e, n = row.get("id"), _count(row, "errors"), _count(row, "ref_len")
        if not isinstance(utt, str) or not utt:
            raise UserError(f"{path}:{number}: no utterance `id`; the paired bootstrap matches "
                            "utterances by id, so every row needs one")
        if e is None or n is None:
            raise UserError(f"{path}:{number}: `errors` and `ref_len` must be integers >= 0 "
                            f"(got {row.get('errors')!r} and {row.get('ref_len')!r}); the "
                            f"intervals resample these per-utterance counts; {_RESCORE}")
        ids.append(utt)
        errors.append(e)
        ref_len.append(n)
    if not ids:
        raise UserError(f"{path}: no rows; an evaluation without utterances has no rate")
    id_array = np.asarray(ids)
    order = np.argsort(id_array, kind="stable")
    id_array = id_array[order]
    dupes = id_array[1:][id_array[1:] == id_array[:-1]]
    if dupes.size:
        raise UserError(f"{path}: utterance id {dupes[0]!r} appears more than once; ids must "
                        "be unique to pair utterances across evaluations")
    counts = UtteranceCounts(path, id_array, np.asarray(errors, dtype=np.int64)[order],
                             np.asarray(ref_len, dtype=np.int64)[order])
    if summary is not None:
        for key, rows_total in (("errors", int(counts.errors.sum())),
                                ("ref_len", int(counts.ref_len.sum()))):
            if key in summary and summary[key] != rows_total:
                raise UserError(f"{path}: the rows sum to {key} = {rows_total} but the summary "
                                f"beside them says {summary[key]}; one of the two is stale: "
                                "evaluate again")
    return counts


def align(cells: Mapping[str, Sequence[UtteranceCounts]]) -> tuple[np.ndarray,
                                                                     dict[str, np.ndarray]]:
    """One preset's evaluations on one common utterance order.

    ``cells``: model → its evaluations (one per seed). Every evaluation must cover the same
    utterance ids with the same reference lengths (same manifest, same normalizer). Returns
    (ref_len (N,), model → errors (S, N)).
    """
    first: UtteranceCounts | None = None
    errors: dict[str, np.ndarray] = {}
    for model, runs in cells.items():
        for counts in runs:
            if first is None:
                first = counts
                continue
            if counts.ids.shape != first.ids.shape or not np.array_equal(counts.ids, first.ids):
                only = np.setdiff1d(counts.ids, first.ids)
                missing = np.setdiff1d(first.ids, counts.ids)
                detail = (f"{only.size} id(s) only in the first (e.g. {only[0]!r})" if only.size
                          else f"{missing.size} id(s) only in the second (e.g. "
                               f"{missing[0]!r})")
                raise UserError(f"{counts.path} and {first.path} cover different utterances "
                                f"({counts.ids.size} vs {first.ids.size} rows; {detail}); "
                                "evaluate every model and seed on the same manifest")
            if not np.array_equal(counts.ref_len, first.ref_len):
                where = int(np.flatnonzero(counts.ref_len != first.ref_len)[0])
                raise UserError(f"{counts.path} and {first.path}: utterance "
                                f"{first.ids[where]!r} has reference length "
                                f"{counts.ref_len[where]} vs {first.ref_len[where]}; score "
                                "both with the same metric and normalizer")
        errors[model] = np.stack([c.errors for c in runs])
    if first is None:
        raise ValueError("no evaluations to align")
    return first.ref_len, errors
