"""The command-line options of a finished training run, replayed from its train_summary.json.

    python -m benchmarks.replay_options SUMMARY [KEY=VALUE ...]

Prints one token per line (for bash's `mapfile`): the run's recorded settings as `--key value`
(`--key` / `--no-key` for booleans, unset ones left out), `--max-steps` the steps it trained
and, for an OPD run, `--calibration` the calibration it checked against (recorded beside the
settings). KEY=VALUE arguments replace or add settings; `true` and `false` are booleans.
Used by benchmarks/convention_mismatch.sh (stages.sft) and demo_opd_dev.sh (stages.train_opd).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def replayed_settings(summary: dict[str, Any], replacements: Sequence[str]) -> dict[str, Any]:
    settings = {k: v for k, v in summary["settings"].items() if k != "input_fingerprints"}
    settings["max_steps"] = summary["steps"]
    if summary.get("calibration"):
        settings["calibration"] = summary["calibration"]
    for item in replacements:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"replay_options: {item!r} is not KEY=VALUE")
        lowered = value.lower()
        settings[key] = lowered == "true" if lowered in ("true", "false") else value
    return settings


def as_options(settings: dict[str, Any]) -> list[str]:
    tokens = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            tokens.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            tokens += [f"--{flag}", str(value)]
    return tokens


def main(argv: Sequence[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    summary = json.loads(Path(argv[0]).read_text())
    print("\n".join(as_options(replayed_settings(summary, argv[1:]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
