"""JSON and JSONL reading and atomic writing.

Outputs are written to a temporary file in the destination folder and renamed into place, so a
killed stage never leaves a half-written file that a later rule would take as complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stages.common.errors import UserError
from stages.common.fsutil import default_mode


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its newline) for every line of a UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with path.open("r", encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\r\n")


def iter_jsonl(path: str | Path, *, hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for every non-blank line of a JSONL file of objects,
    failing with file and line on the first malformed one (``hint``: what to do, appended to
    the message after a semicolon)."""
    suffix = f"; {hint}" if hint else ""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: invalid JSON ({err.msg}){suffix}") from err
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got "
                            f"{type(row).__name__}{suffix}")
        yield number, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects, failing with file and line on the first malformed line.

    Blank lines are skipped. For user manifests use the validate stage, which reports every bad
    line instead of stopping at the first one.
    """
    return [row for _, row in iter_jsonl(path)]


def dumps_row(row: Any) -> str:
    """One JSONL line (no newline): UTF-8 text kept readable, no ASCII escaping."""
    return json.dumps(row, ensure_ascii=False)


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, default_mode())  # mkstemp alone gives 0600
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write or flush names no file: say which
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write rows as JSONL; returns the number of rows written."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(dumps_row(row) + "\n")
            count += 1
    return count


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write an indented JSON document."""
    with atomic_writer(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
