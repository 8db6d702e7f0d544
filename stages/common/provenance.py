"""Provenance attached to every output: what produced it, from which code and which settings."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose versions change results; reported as installed (or "absent").
TRACKED_PACKAGES = (
    "audio-opd",
    "torch",
    "transformers",
    "tokenizers",
    "snakemake",
    "jiwer",
    "numpy",
    "soundfile",
    "soxr",
    "espeakng-loader",
    "datasets",
)


def config_hash(config: Any) -> str:
    """A short stable hash of a JSON-able settings object (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@cache
def git_commit() -> str:
    """The commit of the project checkout (``-dirty`` when it has local changes), or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@cache
def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance(settings: Any = None) -> dict[str, Any]:
    """The provenance block: config hash of ``settings``, git commit, versions, time, command."""
    return {
        "config_hash": config_hash(settings if settings is not None else {}),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
