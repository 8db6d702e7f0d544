"""What a calibration vouches for: the two models' weights and the OPD step settings it ran with.

``calibration.json`` records a fingerprint of each (``stages.calibrate``), and ``stages.train_opd``
recomputes them before training (``stages.opd.calibration.require_calibration``): a student
retrained into the same folder, a swapped teacher or a changed ``--top-k`` makes the report
stale, and training refuses it. Fingerprints hash file *contents*, so a model copied to another
disk (same bytes) still matches, and a rewritten one in place (same path) does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stages.common.fsutil import file_sha256
from stages.common.provenance import config_hash
from stages.opd.config import OpdConfig
from stages.train.hf_save import resolve_model_dir

# The files that define a model's computation: its architecture and its weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_FILES = frozenset({"config.json"})
# OPD options that change speed or memory, not what the step computes.
EXECUTION_ONLY = frozenset({"reshard_during_decode"})


def weights_fingerprint(path_or_id: str | Path) -> str:
    """SHA-256 over the names and bytes of a model folder's config.json and weight files (a
    cached hub id is read from its local snapshot)."""
    folder = resolve_model_dir(path_or_id)
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".")
                                              for part in p.relative_to(folder).parts)
                   and (p.name in _CONFIG_FILES or p.name.endswith(_WEIGHT_SUFFIXES)))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(folder)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def checked_settings(cfg: OpdConfig) -> dict[str, Any]:
    """The OPD step settings a calibration's verdict depends on."""
    return {key: value for key, value in sorted(asdict(cfg).items())
            if key not in EXECUTION_ONLY}


def settings_fingerprint(cfg: OpdConfig) -> str:
    return config_hash(checked_settings(cfg))
