"""Atomic folder publishing: write a folder under a temporary name, then rename it into place.

A folder output (a checkpoint, a Hugging Face model folder) is complete or absent: a killed writer
leaves only a hidden ``.<name>.*.tmp`` sibling behind, never a half-written folder under the
final name that a later stage or rule would take as done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """The mode a plain ``open()`` (or ``mkdir``) would give a new file (folder); ``mkstemp``
    and ``mkdtemp`` alone give 0600 and 0700."""
    return (0o777 if directory else 0o666) & ~umask()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A fresh hidden temporary folder beside ``target`` (same file system, so the final rename
    is atomic). Removed on leaving the block unless :func:`publish_dir` moved it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left to remove once published


def publish_dir(staging: str | Path, target: str | Path, *, normalize_files: bool = False
                ) -> None:
    """Rename the finished folder ``staging`` to its sibling ``target`` (the commit point),
    replacing an earlier ``target``.

    The folder gets the default folder mode (``mkdtemp`` makes 0700 folders); with
    ``normalize_files`` everything inside gets the default modes too (some writers make 0600
    files). A replaced ``target`` is first renamed to ``.<name>.old`` and removed after the new
    one is in place, so the name is never missing for longer than between two renames.
    """
    staging, target = Path(staging), Path(target)
    os.chmod(staging, default_mode(directory=True))
    if normalize_files:
        for path in staging.rglob("*"):
            os.chmod(path, default_mode(directory=path.is_dir()))
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    else:
        os.rename(staging, target)
    fsync_dir(target.parent)
