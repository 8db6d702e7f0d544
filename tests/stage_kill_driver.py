"""Run a training stage (``sft`` or ``train_opd``) and SIGKILL it right after a given step.

Fault injection for tests/test_train_stages.py, through the training loop's step hooks (the same
mechanism as tests/train_driver.py), so the library carries no test switches::

    python tests/stage_kill_driver.py train_opd --kill-after-step 3 -- <stage arguments>
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from stages.common.cli import setup_logging
from stages.common.settings import settings_from_args


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("stage", choices=["sft", "train_opd"])
    p.add_argument("--kill-after-step", type=int, required=True)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    stage_args = argv[cut + 1:]
    if args.stage == "sft":
        from stages import sft as stage
        settings_class = stage.SftRun
    else:
        from stages import train_opd as stage
        settings_class = stage.OpdRun

    def kill(step: int, row: dict) -> None:
        if step == args.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)

    setup_logging()
    parsed = stage.build_parser().parse_args(stage_args)
    stage.run(settings_from_args(settings_class, parsed), hooks=[kill])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
