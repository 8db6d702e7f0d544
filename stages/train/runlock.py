"""One writer per run folder: a lock file that names its holder.

Two runs writing one output folder overwrite each other's checkpoints and interleave their
metrics rows. ``OUTPUT/run.lock`` is created exclusively (``O_EXCL``) by rank 0 of the run that
writes the folder and holds its host, pid, the pid's start time and the start time of the run; a
thread touches it every :data:`HEARTBEAT_SECONDS`. A second run is refused with a message that
names the first.

A lock whose holder is gone is stale and taken over with a warning: on the same host when the
pid no longer runs (or runs another program: its start time differs, or it is a zombie); from
another host, which cannot see the pid, when the heartbeat stopped :data:`STALE_AFTER_SECONDS`
ago (a crashed node: the retry of a cluster job then proceeds on its own). The lock is removed
when the run ends; a killed run leaves it behind for the next start to take over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stages.common.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 15.0
STALE_AFTER_SECONDS = 120.0


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pid_alive(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` of this host still runs the program that took the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if _process_state(pid) == "Z":  # killed, waiting to be reaped
        return False
    now = process_start_ticks(pid)
    return started is None or now is None or now == started


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class RunLock:
    """The lock of ``folder`` (see the module docstring); ``acquire`` then ``release``."""

    def __init__(self, folder: str | Path, *, heartbeat: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_AFTER_SECONDS) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the run that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "pid_started": process_start_ticks(os.getpid()),
                  "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.record = record
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                            daemon=True)
            self._thread.start()
            return
        raise UserError(f"{self.path}: could not take the run lock (another run keeps taking "
                        "it); make sure one run writes this folder")

    def _holder(self) -> tuple[dict[str, Any] | None, float | None]:
        """(the lock file's record or None when unreadable, seconds since its heartbeat)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        return _read_record(self.path), age

    def _stale_reason(self, holder: dict[str, Any] | None, age: float) -> str | None:
        if holder is None or not isinstance(holder.get("pid"), int):
            # Being written right now, or garbage: only an old one is abandoned.
            return "unreadable and old" if age > self.stale_after else None
        if holder.get("host") == socket.gethostname():
            if holder["pid"] == os.getpid():
                return None  # this process holds it (a second acquire is a mistake)
            if not pid_alive(holder["pid"], holder.get("pid_started")):
                return f"process {holder['pid']} is gone"
            return None
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _take_over_if_stale(self) -> None:
        holder, age = self._holder()
        if age is None:
            return  # released meanwhile: try again
        reason = self._stale_reason(holder, age)
        if reason is None:
            raise UserError(self._held_message(holder, age))
        log.warning("%s: taking over a stale run lock (%s; it named host %s, pid %s, started "
                    "%s)", self.path, reason, (holder or {}).get("host"),
                    (holder or {}).get("pid"), (holder or {}).get("started_utc"))
        aside = self.path.with_name(f".{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first
        if _read_record(aside) != holder:  # a fresh lock, not the one judged stale: put back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def _held_message(self, holder: dict[str, Any] | None, age: float) -> str:
        who = ("a run whose lock file is being written" if holder is None else
               f"host {holder.get('host')}, pid {holder.get('pid')}, started "
               f"{holder.get('started_utc')}")
        return (f"{self.folder} is being written by another run ({who}; lock file {self.path}, "
                f"heartbeat {age:.0f} s ago). Two runs on one folder corrupt each other's "
                "checkpoints and metrics: wait for it to finish or stop it, or write this run to "
                "another --output-dir. If it is gone, the lock turns stale by itself (at once on "
                f"the same host, after {self.stale_after:.0f} s without heartbeat from another "
                f"one), or delete {self.path}")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError as err:
                log.warning("%s: heartbeat failed (%s)", self.path, err)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder, _ = self._holder()
        if holder == self.record:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("%s: the run lock was taken over by another run (%s); left in place",
                        self.path, holder)
        self.record = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
