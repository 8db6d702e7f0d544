"""Training core across processes (CPU, gloo): 2-rank vs 1-rank loss parity, resuming a 2-rank
checkpoint on 1 rank, and SIGKILL during training and during a save followed by a bitwise
identical resume. Each run is tests/train_driver.py in a subprocess (torchrun for 2 ranks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from stages.train import latest_checkpoint

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("train_driver.py")
DETERMINISTIC = ("loss", "grad_norm", "lr", "acc", "id_total", "id_sq_total", "units",
                 "optimizer_step", "epoch", "skipped")


def launch(out: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    command = [sys.executable, str(DRIVER), "--out", str(out), *args]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoint_tensors(ckpt: Path, tmp: Path) -> dict:
    """Every entry of a DCP checkpoint (model and optimizer), as full tensors and values."""
    target = tmp / f"{ckpt.parent.parent.name}_{ckpt.name}.pt"
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
    assert a.keys() == b.keys()
    assert any(".exp_avg_sq" in key for key in a)  # optimizer state is part of the comparison
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("train_runs")


@pytest.fixture(scope="module")
def one_rank(runs):
    out = runs / "one_rank"
    ok(launch(out, "--grad-accum", "2"))
    return out


@pytest.fixture(scope="module")
def two_ranks(runs):
    out = runs / "two_ranks"
    ok(launch(out, "--grad-accum", "2", ranks=2))
    return out


def test_two_ranks_match_one_rank(one_rank, two_ranks):
    single, double = rows(one_rank), rows(two_ranks)
    assert [r["step"] for r in single] == [r["step"] for r in double] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(single, double, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
        assert a["lr"] == b["lr"]
        assert (a["id_total"], a["id_sq_total"], a["units"]) == (
            b["id_total"], b["id_sq_total"], b["units"])
    assert single[-1]["loss"] < single[0]["loss"]  # it does learn
    meta = json.loads((two_ranks / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert len(list((two_ranks / "checkpoints" / "step_00000006" / "rng").iterdir())) == 2


def test_two_rank_checkpoint_resumes_on_one_rank(runs, one_rank, two_ranks):
    out = runs / "resharded"
    proc = ok(launch(out, "--grad-accum", "2", "--resume",
                     str(two_ranks / "checkpoints" / "step_00000004")))
    assert "saved by 2 rank(s) on 1 rank(s): DCP reshards" in proc.stderr
    assert "re-seeded from (seed, step, rank)" in proc.stderr
    resumed = rows(out)
    assert [r["step"] for r in resumed] == [5, 6]
    for a, b in zip(rows(one_rank)[4:], resumed, strict=True):
        assert (a["id_total"], a["id_sq_total"]) == (b["id_total"], b["id_sq_total"])  # same data
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
        assert a["lr"] == b["lr"]


def test_sigkill_during_save_and_training_resumes_bitwise(runs, tmp_path):
    # Dropout on: the continued run also depends on the restored RNG states.
    reference = runs / "reference_dropout"
    ok(launch(reference, "--dropout", "0.1"))

    out = runs / "killed"
    ckpts = out / "checkpoints"
    # 1) killed after step 4's checkpoint is fully written but before its rename
    proc = launch(out, "--dropout", "0.1", "--kill-in-save-step", "4")
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(ckpts) == ckpts / "step_00000002"
    assert (ckpts / ".step_00000004.tmp" / "meta.json").is_file()
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]

    # 2) resumed from step 2, killed right after step 5 (step 4 was saved again on the way)
    proc = launch(out, "--dropout", "0.1", "--resume", "latest", "--kill-after-step", "5")
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(ckpts) == ckpts / "step_00000004"
    assert not (ckpts / ".step_00000004.tmp").exists()
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4, 5]

    # 3) resumed from step 4 to the end
    ok(launch(out, "--dropout", "0.1", "--resume", "latest"))
    final = rows(out)
    assert [r["step"] for r in final] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows(reference), final, strict=True):
        assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}
    assert_identical(checkpoint_tensors(reference / "checkpoints" / "step_00000006", tmp_path),
                     checkpoint_tensors(ckpts / "step_00000006", tmp_path))
