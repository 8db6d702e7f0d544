"""Atomic folder publishing, outputs that appear together, file checksums.

A folder output (a checkpoint, a Hugging Face model folder) is complete or absent: a killed writer
leaves only a hidden ``.<name>.*.tmp`` sibling behind, never a half-written folder under the
final name that a later stage or rule would take as done. A stage whose outputs come in a set
(a manifest and its report) writes them inside :func:`outputs_together`, so a failure half-way
(a full disk) never leaves an output without its report.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Exported models are read by other users of a cluster file system, whatever the writer's
# umask; ``mkstemp``-based writers (safetensors) would otherwise leave them 0600.
SHARED_FILE_MODE = 0o644
SHARED_DIR_MODE = 0o755


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


def old_copy(target: str | Path) -> Path:
    """Where :func:`publish_dir` parks the folder it replaces (``.<name>.old``)."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def publish_dir(staging: str | Path, target: str | Path, *, normalize_files: bool = False,
                shared: bool = False) -> None:
    """Rename the finished folder ``staging`` to its sibling ``target`` (the commit point),
    replacing an earlier ``target``.

    The folder gets the default folder mode (``mkdtemp`` makes 0700 folders); with
    ``normalize_files`` everything inside gets the default modes too (some writers make 0600
    files); with ``shared`` every entry gets 0644 (folders 0755) whatever the umask. A replaced
    ``target`` is first renamed to ``.<name>.old`` and removed after the new one is in place, so
    the name is never missing for longer than between two renames (a kill in between leaves the
    old copy, which the next publish removes; checkpoints restore it, see
    ``stages.train.checkpoint``).
    """
    staging, target = Path(staging), Path(target)
    if shared:
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, SHARED_DIR_MODE if path.is_dir() else SHARED_FILE_MODE)
    else:
        os.chmod(staging, default_mode(directory=True))
        if normalize_files:
            for path in staging.rglob("*"):
                os.chmod(path, default_mode(directory=path.is_dir()))
    old = old_copy(target)
    shutil.rmtree(old, ignore_errors=True)  # left by a publish that was killed between renames
    if target.exists():
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    else:
        os.rename(staging, target)
    fsync_dir(target.parent)


def remove_path(path: str | Path) -> None:
    """Remove a file or a folder tree; nothing when it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def outputs_together(*paths: str | Path | None) -> Iterator[None]:
    """Write a set of outputs (e.g. a manifest, then its report) inside this block: if the block
    fails, every one of ``paths`` is removed, so a later step never finds an output without
    its report or marker. ``None`` entries are ignored."""
    try:
        yield
    except BaseException:
        for path in paths:
            if path is not None:
                with contextlib.suppress(OSError):  # a read-only folder: the error above says it
                    remove_path(path)
        raise


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(path: str | Path) -> str:
    """A short hash of a file's or folder's (relative name, size, mtime) entries; a hub id (no
    such path) fingerprints as its name. Cheap, and changes when an upstream stage rewrites it."""
    path = Path(path)
    if not path.exists():
        return f"id:{path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == path else str(file.relative_to(path))
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
