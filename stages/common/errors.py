"""The one exception type stages raise for problems the user can fix (bad input, bad config), and
how file-system failures the user fixes outside the program become one.

Stage CLIs turn it into a one-paragraph message and exit status 1, without a traceback: the message
itself must name the file, the line where there is one, the reason, and what to do.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# File-system failures that are the machine's state, not a bug: what the user can do about each.
STORAGE_ERRNOS = {
    errno.ENOSPC: "free space there or write the outputs elsewhere",
    errno.EDQUOT: "free space within your quota or write the outputs elsewhere",
    errno.EROFS: "the file system is mounted read-only: write the outputs to a writable folder",
    errno.EACCES: "check the owner and mode of the folder, or write the outputs elsewhere",
    errno.EPERM: "check the owner and mode of the folder, or write the outputs elsewhere",
    errno.EFBIG: "the file system refuses a file this large: write the outputs elsewhere",
}
# Rust and C++ writers (safetensors, torch.save) report the errno only in their message, or
# not at all (torch.save on a full disk: "unexpected pos 704 vs 598").
_OS_ERROR_TEXT = re.compile(r"os error (\d+)|errno[ =:]*(\d+)", re.IGNORECASE)
LOW_SPACE_BYTES = 1 << 20  # below this a failed write is taken for a full file system


class UserError(Exception):
    """A problem with the user's input or configuration, reported without a traceback."""


def storage_failure(err: BaseException, path: str | Path | None = None) -> OSError | None:
    """The full-disk / read-only / permission OSError behind ``err`` (itself, its causes and
    contexts, or the per-rank failures of a DCP ``CheckpointException``), if there is one.
    ``path``: where the failed write went; when no errno says why, the file system there is
    asked (read-only, nearly full, not writable)."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        if not isinstance(current, OSError):
            match = _OS_ERROR_TEXT.search(str(current))
            code = int(next(g for g in match.groups() if g)) if match else None
            if code in STORAGE_ERRNOS:
                return OSError(code, errno.errorcode.get(code, str(code)))
        failures = getattr(current, "failures", None)  # DCP: {rank: (exception, traceback)}
        if isinstance(failures, dict):
            stack.extend(value[0] if isinstance(value, tuple) else value
                         for value in failures.values())
        stack.extend([current.__cause__, current.__context__])
    return probe_storage(path) if path is not None else None


def probe_storage(path: str | Path) -> OSError | None:
    """An OSError describing why writes under ``path`` fail (read-only, out of space, not
    writable), or None when the file system looks fine."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    for code, failing in ((errno.EROFS, stats.f_flag & os.ST_RDONLY),
                          (errno.ENOSPC, stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES),
                          (errno.EACCES, not os.access(folder, os.W_OK))):
        if failing:
            return OSError(code, os.strerror(code), str(folder))
    return None


def storage_error(err: OSError, *, path: object = None, doing: str = "") -> UserError:
    """One line for a storage failure: the path, the reason and what to do."""
    where = err.filename if err.filename is not None else path
    reason = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
    prefix = f"{where}: " if where is not None else ""
    action = f"{doing}: " if doing else ""
    return UserError(f"{prefix}{action}{reason} ({errno.errorcode.get(err.errno or 0, '?')}); "
                     f"{STORAGE_ERRNOS.get(err.errno, 'check the file system')}")
