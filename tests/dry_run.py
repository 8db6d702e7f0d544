"""The jobs a Snakemake dry run plans, and their shell commands parsed by the stages' own parsers.

``planned_jobs`` runs ``snakemake -n -p --forceall`` and returns every job's rule, shell
command and input files; ``stage_call`` finds the ``-m stages.<name>`` call inside a command
(after any launcher such as ``torchrun`` or ``srun``) and parses its arguments with that stage's
``build_parser()``, exactly as the job would. The workflow contract tests use them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BIN, ROOT

# Cores of the dry run: a job's threads (and options fed from them) are capped at it.
CORES = 4
_JOB = re.compile(r"^rule (\w+):\n((?:(?!^rule ).*\n)*?)Shell command: (.*)$", re.M)
_INPUT = re.compile(r"^\s+input: (.*)$", re.M)


@dataclass(frozen=True)
class Job:
    rule: str
    command: str
    # The job's input files, as the dry run lists them.
    inputs: tuple[str, ...] = ()


def planned_jobs(env: dict[str, str], *configfiles: Path, targets: tuple[str, ...] = ()
                 ) -> list[Job]:
    """Every job of a forced dry run (``--configfile`` each of ``configfiles``)."""
    args = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "-n", "-p",
            "--forceall", "--cores", str(CORES)]
    if configfiles:
        args += ["--configfile", *map(str, configfiles)]
    done = subprocess.run([*args, *targets], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"dry run failed:\n{output[-4000:]}")
    jobs = []
    for match in _JOB.finditer(output):
        listed = _INPUT.search(match[2])
        inputs = tuple(listed[1].split(", ")) if listed else ()
        jobs.append(Job(match[1], match[3].strip(), inputs))
    return jobs


def stage_argv(command: str) -> tuple[str, list[str]]:
    """(stage module, its argv) of the ``-m stages.<name>`` call in a shell command; the log
    redirection at the end is dropped."""
    match = re.search(r"(?:^|\s)-m (stages\.\w+)(.*)$", command)
    if match is None:
        raise AssertionError(f"no `-m stages.<name>` call in: {command}")
    argv = shlex.split(match[2])
    if "2>" in argv:
        argv = argv[:argv.index("2>")]
    return match[1], argv


def stage_call(command: str) -> tuple[str, argparse.Namespace]:
    """(stage module, parsed arguments): a flag the stage does not know is an AssertionError
    that names it."""
    module, argv = stage_argv(command)
    parser = importlib.import_module(module).build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return module, parser.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{module} refuses the workflow's arguments: "
                             f"{errors.getvalue().strip()}\n  command: {command}") from None
