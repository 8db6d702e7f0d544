"""Helpers several test modules share: running stage CLIs in-process and in subprocesses
(torchrun for several ranks), reading training runs, comparing DCP checkpoints, synthetic clips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from stages.common.cli import run_stage
from stages.common.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


_HOLD_LOCK = ("import sys, time; from stages.train.runlock import RunLock; "
              "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def hold_run_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run lock of ``folder`` (kill it to end the hold)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str):
    """A tmpfs of ``size`` (mount's -o size) at the new folder ``mount``, for disk-full tests;
    root only: the test skips, saying why, where it cannot be mounted."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def stage(module: ModuleType, argv: list) -> int:
    """Run a stage module's CLI in this process (exit status; errors printed as the CLI does)."""
    return run_stage(module.main, module.build_parser(), [str(a) for a in argv])


def launch(command: list, *, ranks: int = 1, timeout: float = 600
           ) -> subprocess.CompletedProcess:
    """``python COMMAND...`` (a script path or ``-m module`` and its arguments) in the
    repository, or under torchrun with ``ranks`` processes; one torch thread each, no hub."""
    command = [str(c) for c in command]
    if ranks > 1:
        command = ["-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *command], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metric_rows(run_dir: Path) -> list[dict]:
    """A training run's ``metrics.jsonl`` rows."""
    return read_jsonl(run_dir / "metrics.jsonl")


def checkpoint_tensors(ckpt: Path, scratch: Path) -> dict:
    """Every entry of a DCP checkpoint (model and optimizer) as full tensors and values,
    flattened to dotted keys (``scratch``: where the single-file copy goes)."""
    target = scratch / f"{ckpt.parent.parent.name}_{ckpt.name}.pt"
    dcp_to_torch_save(ckpt, target)
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = value

    walk("", torch.load(target, weights_only=False))
    return flat


def assert_identical(a: dict, b: dict) -> None:
    """Two :func:`checkpoint_tensors` results are bitwise equal, optimizer state included."""
    assert a.keys() == b.keys()
    assert any(".exp_avg_sq" in key for key in a)  # the optimizer state is compared too
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def tone(seconds: float, hz: float, *, amplitude: float, noise: float,
         rng: np.random.Generator) -> np.ndarray:
    """A 16 kHz sine of ``amplitude`` plus Gaussian noise of std ``noise`` (float64)."""
    t = np.arange(int(16000 * seconds)) / 16000
    return amplitude * np.sin(2 * np.pi * hz * t) + noise * rng.standard_normal(t.size)


def assert_computes_like(exported, trained, initial, *, seed: int) -> None:
    """Adapter ``exported`` gives bitwise the response logits of ``trained`` (the checkpoint's
    weights) and not those of ``initial`` (the base before training), on two noise clips of
    ``seed`` and two responses."""
    rng = np.random.default_rng(seed)
    clips = [0.1 * rng.standard_normal(16000 * s).astype(np.float32) for s in (1, 2)]
    responses = [trained.encode_response("hello world"), trained.encode_response("你好")]
    with torch.no_grad():
        got, mask = exported.response_logits(clips, [None, None], responses)
        want, _ = trained.response_logits(clips, [None, None], responses)
        before, _ = initial.response_logits(clips, [None, None], responses)
    assert torch.equal(got[mask], want[mask])
    assert not torch.allclose(got[mask], before[mask])  # training did change the weights


def greedy_by_full_forwards(adapter, inputs: dict, max_new_tokens: int, extend) -> list[list]:
    """The plainest decoder, the reference for ``AsrAdapter.generate``: a full forward over the
    whole sequence for every new token (no cache), blocked ids at -inf, argmax. A row is
    recorded up to its stop and then left alone. ``extend(inputs, chosen)`` returns the inputs
    with the chosen ids [B] appended (how depends on the family's layout)."""
    rows = len(next(iter(inputs.values())))
    out, done = [[] for _ in range(rows)], [False] * rows
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = adapter.model(**inputs, use_cache=False).logits[:, -1].float()
            logits[:, adapter.blocked_token_ids] = float("-inf")
            chosen = logits.argmax(-1)
            for row, token in enumerate(chosen.tolist()):
                if not done[row]:
                    out[row].append(token)
                    done[row] = token in adapter.stop_token_ids
            if all(done):
                break
            inputs = extend(inputs, chosen)
    return out
