"""Checksums of a checkpoint's files, written before it is published and verified before it is
resumed or exported.

``checksums.json`` (in ``step_<n>/``) lists every file of the checkpoint with its size and
SHA-256: the DCP shards and ``.metadata``, each rank's RNG file, ``meta.json`` and the metrics
history. It is the last file written before the folder is renamed into place, so a published
checkpoint either carries it or predates it. Verification reports a listed file that is missing,
has another size (truncated, or grown) or other bytes (bit rot, an overwrite of the same size).

Hashing is split over the ranks, on save and on verification (rank r takes every r-th file), so
each rank reads 1/N of a large checkpoint; the per-rank results are gathered, so every rank
reaches the same verdict. Every function here is collective when a process group exists: all
ranks call it, in the same order.

A checkpoint written before checksums existed (no ``checksums.json``) is checked for structure
only: its DCP metadata must load and every shard it names must exist and be long enough.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp

from stages.common.errors import UserError
from stages.common.fsutil import file_sha256
from stages.common.jsonl import read_json, write_json
from stages.train.distributed import broadcast_object, dist_rank, dist_world, gather_objects

CHECKSUM_FILE = "checksums.json"
ALGORITHM = "sha256"


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def hash_files(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: {"size", "sha256"}} of ``folder/name`` for every name (this process alone)."""
    return {name: {"size": os.path.getsize(folder / name), ALGORITHM: file_sha256(folder / name)}
            for name in names}


def hash_files_shared(folder: Path, names: Sequence[str]) -> tuple[dict[str, dict], str | None]:
    """:func:`hash_files` split over the ranks: (every file's entry, the first rank's error)."""
    rank, world = dist_rank(), dist_world()
    try:
        mine: dict | str = hash_files(folder, list(names)[rank::world])
    except OSError as err:
        mine = f"rank {rank}: {describe(err)}"
    entries: dict[str, dict] = {}
    for part in gather_objects(mine):
        if isinstance(part, str):
            return {}, part
        entries.update(part)
    return entries, None


def write_checksums(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    write_json(folder / CHECKSUM_FILE, {"algorithm": ALGORITHM,
                                        "files": dict(sorted(entries.items()))})


def _listed(folder: Path) -> dict[str, dict] | str | None:
    """The checksum list (rank 0 reads it): entries, a problem, or None when there is none."""
    path = folder / CHECKSUM_FILE
    if not path.is_file():
        return None
    try:
        listed = read_json(path)
    except UserError as err:
        return f"{CHECKSUM_FILE} is damaged ({err})"
    files = listed.get("files") if isinstance(listed, dict) else None
    if not isinstance(files, dict) or not files or listed.get("algorithm") != ALGORITHM:
        return f"{CHECKSUM_FILE} is damaged (no {ALGORITHM} file list)"
    return files


def _check(folder: Path, entries: dict[str, dict]) -> list[str]:
    problems = []
    for name, want in entries.items():
        path = folder / name
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if size != want.get("size"):
            problems.append(f"{name} has {size} bytes, {want.get('size')} were written "
                            "(truncated or overwritten)")
        elif file_sha256(path) != want.get(ALGORITHM):
            problems.append(f"{name}: {ALGORITHM} differs from the one recorded at save "
                            "(bytes changed on disk)")
    return problems


def structure_problems(folder: Path) -> list[str]:
    """For a checkpoint without checksums: the DCP metadata loads and names shards that exist
    and are long enough (this process alone)."""
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a missing or garbled .metadata, whatever DCP raises
        return [f"the DCP metadata (.metadata) cannot be read ({describe(err)})"]
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    problems = []
    for name, end in sorted(needed.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size < end:
            problems.append(f"{name} has {path.stat().st_size} bytes, the metadata needs "
                            f"{end} (truncated)")
    return problems


def verify_files(folder: str | Path) -> tuple[list[str], bool]:
    """(problems, checksummed) for the files of checkpoint ``folder``; collective."""
    folder = Path(folder)
    listed = broadcast_object(_listed(folder) if dist_rank() == 0 else None)
    if listed is None:  # written before checksums existed
        problems = structure_problems(folder) if dist_rank() == 0 else []
        return broadcast_object(problems), False
    if isinstance(listed, str):
        return [listed], True
    rank, world = dist_rank(), dist_world()
    mine = dict(sorted(listed.items())[rank::world])
    try:
        local = _check(folder, mine)
    except OSError as err:
        local = [f"rank {rank} cannot read the files ({describe(err)})"]
    problems = sorted(p for part in gather_objects(local) for p in part)
    return problems, True
