"""Batched, resumable teacher transcription of one shard of the teacher-data pool.

Sharding: the whole pool is cut into duration-sorted batches (``duration_sorted_batches``,
longest first) and batch k belongs to shard k mod n. A batch is therefore the same set of
clips whatever n is, so every clip sees the same batch mates and padding, and the teacher's
outputs (text and log-probs, to the last bit on a deterministic device) do not depend on the
number of shards; each shard also gets a fair mix of long and short batches. The price: results
depend on the batch size, which every shard of a run must share (the merge checks it).

Restart safety: after every batch its raw teacher outputs (before any filtering) are appended
to ``<output>.partial`` and flushed to disk (fsync). On start the partial file is read back, a
torn last line (the process died mid-write) is cut off, and batches whose ids are all done are
skipped; a batch only partly written is transcribed again (same inputs, same outputs). The first
line of the partial file records what the outputs depend on (pool checksum, shard, batch size,
token cap, teacher and its weight files, dtype, device type); a partial file written under
other settings is moved aside to ``<output>.partial.stale`` with a warning, never mixed in.
Filters are not in that list: they run on the raw outputs at the end, so a shard resumed with
other thresholds needs no new transcription.

Test hook: with the environment variable ``AUDIO_OPD_TD_KILL_AFTER_BATCHES=K`` the process
kills itself (SIGKILL, no cleanup) right after writing its K-th batch to the partial file; the
resume tests use it to interrupt a run at a known point.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.jsonl import dumps_row
from stages.data.batching import AudioBatch, Utterance, duration_sorted_batches
from stages.models.base import AsrAdapter
from stages.models.transcribe import DecodeError, prefetched, transcribe_batch

log = logging.getLogger(__name__)

KILL_HOOK_ENV = "AUDIO_OPD_TD_KILL_AFTER_BATCHES"
PARTIAL_FORMAT = "audio-opd teacher-data partial v1"
# Fields a partial record holds besides the id (the teacher's raw output for one clip).
RECORD_FIELDS = ("text", "teacher_text_raw", "language", "language_source",
                 "teacher_mean_logprob", "teacher_tokens", "teacher_stopped")
LOGPROB_DECIMALS = 6  # stored rounded: readable manifests; filters read the stored value


# ---- sharding ----------------------------------------------------------------------------------

def shard_batches(utterances: Sequence[Utterance], batch_size: int, shard: int,
                  num_shards: int) -> list[list[Utterance]]:
    """The batches of shard ``shard`` of ``num_shards``: every n-th duration-sorted batch."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    return list(duration_sorted_batches(utterances, batch_size))[shard::num_shards]


# ---- partial file ------------------------------------------------------------------------------

class PartialLog:
    """The append-only progress file of a shard: a header line, then one raw record per clip."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = {"format": PARTIAL_FORMAT, **header}

    def load(self) -> dict[str, dict[str, Any]]:
        """Records already written (id -> record); prepares the file for appending."""
        if not self.path.exists():
            self._start()
            return {}
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            log.warning("%s: dropping a torn last line (%d bytes; the run was interrupted "
                        "mid-write)", self.path, len(data) - cut)
        lines = data[:cut].decode("utf-8").splitlines()
        header = self._parse(lines[0], 1) if lines else None
        if header is None or header.get("format") != PARTIAL_FORMAT:
            log.warning("%s: no valid header line; starting this shard over", self.path)
            self._start()
            return {}
        if header != self.header:
            changed = sorted(k for k in set(header) | set(self.header)
                             if header.get(k) != self.header.get(k))
            stale = self.path.with_name(self.path.name + ".stale")
            log.warning("%s was written with other settings (%s differ); moved it to %s and "
                        "starting this shard over", self.path, ", ".join(changed), stale)
            os.replace(self.path, stale)
            self._start()
            return {}
        records = {}
        for number, line in enumerate(lines[1:], start=2):
            record = self._parse(line, number)
            if record is None or not isinstance(record.get("id"), str):
                raise UserError(f"{self.path}:{number}: not a teacher-data record; the progress "
                                "file is corrupt. Delete it to transcribe this shard again")
            records[record["id"]] = record  # a re-transcribed batch supersedes a partial one
        with self.path.open("r+b") as handle:  # cut the torn tail before appending
            handle.truncate(cut)
        return records

    @staticmethod
    def _parse(line: str, number: int) -> dict[str, Any] | None:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as handle:
            handle.write(dumps_row(self.header) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append whole lines and force them to disk before the next batch starts."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(dumps_row(r) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ---- transcription -----------------------------------------------------------------------------

def transcribe_records(adapter: AsrAdapter, utterances: Sequence[Utterance], *,
                       max_new_tokens: int, loader: Callable[[], AudioBatch] | None = None
                       ) -> list[dict[str, Any]]:
    """Greedy teacher transcripts of one batch: one raw record per clip (see RECORD_FIELDS).

    A manifest language is forced into the prompt (Qwen3-ASR's ``language X<asr_text>``
    header); without one the teacher writes the header and ``response_language`` reads it.
    The mean log-prob covers every generated token: header (when generated), text and stop.
    """
    records = []
    for t in transcribe_batch(adapter, utterances, max_new_tokens=max_new_tokens, logprobs=True,
                              loader=loader):
        utt = t.utterance
        if utt.language is not None:
            language, source = utt.language, "manifest"
        else:
            language = t.language
            source = "detected" if language is not None else "none"
        records.append({
            "id": utt.id,
            "text": t.text,
            "teacher_text_raw": t.raw_text,
            "language": language,
            "language_source": source,
            "teacher_mean_logprob": round(t.mean_logprob, LOGPROB_DECIMALS),
            "teacher_tokens": t.generated,
            "teacher_stopped": t.stopped,
        })
    return records


def teacher_row(utterance: Utterance, record: dict[str, Any]) -> dict[str, Any]:
    """The pool row with the teacher's transcript as ``text``; a pool reference moves to
    ``reference_text``. Every other input field is kept, so the row stays a valid manifest row."""
    row = dict(utterance.row)
    reference = row.get("text")
    if isinstance(reference, str) and reference.strip():
        row["reference_text"] = reference
    row.update({key: record[key] for key in RECORD_FIELDS})
    if utterance.language is not None:  # the manifest's language always wins
        row["language"] = utterance.language
    return row


@dataclass
class ShardRun:
    """What one process did for a shard (resumed work is counted apart)."""

    records: dict[str, dict[str, Any]]
    batches: int  # the shard's batches
    batches_run: int  # transcribed by this process
    rows_run: int
    resumed_rows: int
    audio_seconds_run: float
    transcribe_seconds: float


def pending_batches(batches: Sequence[Sequence[Utterance]], done: dict[str, Any]
                    ) -> list[Sequence[Utterance]]:
    return [b for b in batches if not all(u.id in done for u in b)]


def transcribe_shard(adapter_factory, batches: Sequence[Sequence[Utterance]],
                     partial: PartialLog, *, max_new_tokens: int,
                     progress: bool = True, loader_workers: int = 0) -> ShardRun:
    """Transcribe the batches not yet in ``partial``, appending each one as it completes.

    ``adapter_factory()`` loads the teacher; it is only called when work remains, so a shard
    that died after its last batch finishes without loading the model. ``loader_workers``: see
    :func:`stages.models.transcribe.prefetched`.
    """
    records = partial.load()
    todo = pending_batches(batches, records)
    total = sum(len(b) for b in batches)
    # Clips of finished batches; a partly written batch is transcribed again in full.
    resumed = total - sum(len(b) for b in todo)
    if records:
        log.info("resuming: %d of %d clips already transcribed, %d of %d batches to go",
                 resumed, total, len(todo), len(batches))
    kill_after = int(os.environ.get(KILL_HOOK_ENV, "0") or 0)
    run = ShardRun(records, len(batches), 0, 0, resumed, 0.0, 0.0)
    if not todo:
        return run
    adapter = adapter_factory()
    bar = tqdm(total=sum(len(b) for b in todo), unit="utt", desc="teacher", file=sys.stderr,
               disable=not progress, mininterval=5, dynamic_ncols=True)
    start = time.perf_counter()
    with bar:
        for batch, loader in prefetched(todo, adapter, workers=loader_workers):
            try:
                new = transcribe_records(adapter, batch, max_new_tokens=max_new_tokens,
                                         loader=loader)
            except DecodeError as err:
                raise UserError(
                    f"teacher {err} Finished batches are kept in {partial.path}; fix the cause "
                    "(a smaller --batch-size restarts the shard) and rerun to continue") from err
            partial.append(new)
            for record in new:
                run.records[record["id"]] = record
            run.batches_run += 1
            run.rows_run += len(batch)
            run.audio_seconds_run += sum(u.duration for u in batch)
            bar.update(len(batch))
            if kill_after and run.batches_run == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    run.transcribe_seconds = time.perf_counter() - start
    return run
