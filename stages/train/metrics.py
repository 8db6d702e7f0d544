"""Per-step metrics: reduction over micro-steps and ranks, ``metrics.jsonl``, TensorBoard, progress.

Stat naming convention (what an objective returns from ``loss`` as its stats dict):

- ``<name>_sum`` together with ``<name>_count``: a mean. Both are summed over micro-steps and
  ranks and reported once, as ``<name>`` = total sum / total count (null when the count is 0).
  Use it for per-unit averages, e.g. ``vuss_sum``/``vuss_count``.
- ``time_<phase>``: seconds. Summed over micro-steps, then the maximum over ranks (the slowest
  rank sets the pace of a synchronous step).
- ``<name>_max`` / ``<name>_min``: maximum / minimum over micro-steps and ranks.
- anything else: a count or total, summed over micro-steps and ranks (e.g. ``tokens``,
  ``lang_zh``, ``unmapped_tokens``). Ranks may return different keys; a missing key counts as
  absent, not zero, for max/min.

Non-finite values are written as JSON ``null`` (JSON has no NaN).

``metrics.jsonl`` is written by rank 0 only, one object per loop step, flushed as it is written,
plus event rows (``{"step", "event", "warning", ...}``: a corrupt checkpoint set aside, a new lr
schedule) at the step they happened after. A resumed run first reconciles the file with the
checkpoint it resumes: rows after its step are dropped (a killed run may have logged steps past
its last checkpoint), and the rows up to it are the history saved in the checkpoint, when there
is one, plus the event rows logged since; without one, the file's own rows up to the step, one
per step. Every step therefore appears once, whatever was killed, duplicated or lost before.
A fresh run starts an empty file.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.jsonl import dumps_row, iter_lines, read_jsonl, write_jsonl

log = logging.getLogger(__name__)


def _kind(key: str) -> str:
    if key.startswith("time_"):
        return "max"
    if key.endswith("_max"):
        return "max"
    if key.endswith("_min"):
        return "min"
    return "sum"


def accumulate(total: dict[str, float], stats: dict[str, Any]) -> None:
    """Fold one micro-step's stats (floats or 0-d tensors) into this rank's running ``total``."""
    for key, value in stats.items():
        value = float(value)
        kind = "sum" if key.startswith("time_") else _kind(key)  # a rank's time adds up
        if key not in total:
            total[key] = value
        elif kind == "max":
            total[key] = max(total[key], value)
        elif kind == "min":
            total[key] = min(total[key], value)
        else:
            total[key] += value


def combine_rank_stats(per_rank: Iterable[dict[str, float]]) -> dict[str, float | None]:
    """Reduce every rank's accumulated stats into the reported values (see module docstring)."""
    merged: dict[str, float] = {}
    for stats in per_rank:
        for key, value in stats.items():
            if key not in merged:
                merged[key] = value
            elif _kind(key) == "max":
                merged[key] = max(merged[key], value)
            elif _kind(key) == "min":
                merged[key] = min(merged[key], value)
            else:
                merged[key] += value
    out: dict[str, float | None] = {}
    for key, value in merged.items():
        if key.endswith("_sum") and key[:-4] + "_count" in merged:
            count = merged[key[:-4] + "_count"]
            out[key[:-4]] = value / count if count else None
        elif key.endswith("_count") and key[:-6] + "_sum" in merged:
            continue
        else:
            out[key] = value
    return out


def _one_row_per_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a step's last row only (two writers, or a resume that was itself killed, can
    leave several); event rows are kept."""
    last = {r.get("step"): index for index, r in enumerate(rows) if "event" not in r}
    return [r for index, r in enumerate(rows)
            if "event" in r or last[r.get("step")] == index]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Writes one row per step to ``metrics.jsonl`` (and TensorBoard), shows progress; rank 0 only.

    ``resume_step``: the step the run continues after (0 for a fresh run). ``history``: the
    metrics rows saved with the checkpoint it resumes (module docstring).
    """

    def __init__(self, output_dir: str | Path, *, resume_step: int, total_steps: int,
                 enabled: bool, tensorboard: bool = True, progress: bool = True,
                 history: Path | None = None) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.resume_step = resume_step
        self._handle = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reconcile(resume_step, history)
        self._handle = self.path.open("a", encoding="utf-8")
        if tensorboard:
            self._tb = _summary_writer(Path(output_dir) / "tensorboard", resume_step)
        self._bar = tqdm(total=total_steps, initial=resume_step, desc="train", unit="step",
                         file=sys.stderr, dynamic_ncols=True, disable=not progress)

    def _read_rows(self, *, tolerate_damage: bool) -> tuple[list[dict[str, Any]], bool]:
        """(the file's rows, whether every line was one)."""
        if not self.path.exists():
            return [], True
        lines = [(number, line) for number, line in iter_lines(self.path) if line.strip()]
        rows = []
        for index, (number, line) in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                if index == len(lines) - 1:  # a row cut short by a kill: it is after the ckpt
                    log.warning("%s:%d: dropping a partly written last row", self.path, number)
                    return rows, False
                if tolerate_damage:
                    log.warning("%s:%d: not a JSON row (%s); the history comes from the "
                                "checkpoint", self.path, number, err.msg)
                    return [], False
                raise UserError(f"{self.path}:{number}: not a JSON row ({err.msg}); the metrics "
                                "file is damaged: move it away and resume again") from err
        return rows, True

    def _reconcile(self, resume_step: int, history: Path | None) -> None:
        saved = read_jsonl(history) if history is not None and history.is_file() else None
        current, clean = self._read_rows(tolerate_damage=saved is not None)
        if resume_step == 0:
            rows: list[dict[str, Any]] = []
        elif saved is not None:
            rows = [r for r in saved if r.get("step", 0) <= resume_step]
            seen = {dumps_row(r) for r in rows}
            rows += [r for r in current if "event" in r and r.get("step", 0) <= resume_step
                     and dumps_row(r) not in seen]
            rows.sort(key=lambda r: r.get("step", 0))  # stable: events after their step's row
        else:
            rows = _one_row_per_step([r for r in current if r.get("step", 0) <= resume_step])
        if rows == current and clean:
            return
        restored = ({r.get("step") for r in rows if "event" not in r}
                    - {r.get("step") for r in current if "event" not in r})
        log.info("%s: reconciled with step %d: %d row(s) before, %d after%s", self.path,
                 resume_step, len(current), len(rows),
                 f" ({len(restored)} step(s) restored from the checkpoint)" if restored else "")
        write_jsonl(self.path, rows)

    def event(self, row: dict[str, Any]) -> None:
        """Write an event row (a warning worth keeping with the curves) at the resumed step."""
        if not self.enabled:
            return
        self._write(dumps_row({"step": self.resume_step, **row}))

    def _write(self, line: str) -> None:
        try:
            self._handle.write(line + "\n")
            self._handle.flush()
        except OSError as err:  # a full disk: name the file (a failed write names none)
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {key: _json_safe(value) for key, value in row.items()}
        self._write(dumps_row(clean))
        step = int(row["step"])
        if self._tb is not None:
            for key, value in clean.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._bar is not None:
            shown = {k: row[k] for k in ("loss", "grad_norm", "lr") if row.get(k) is not None}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _summary_writer(log_dir: Path, resume_step: int):
    """A TensorBoard writer, or None when tensorboard is not installed. ``purge_step`` makes
    TensorBoard hide events a killed run wrote past the resumed step."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(log_dir),
                         purge_step=resume_step + 1 if resume_step > 0 else None)
