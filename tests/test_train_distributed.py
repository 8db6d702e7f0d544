"""Training core across processes (CPU, gloo): 2-rank vs 1-rank loss parity, resuming a 2-rank
checkpoint on 1 rank, SIGKILL during training and during a save followed by a bitwise
identical resume, and a killed launcher taking its workers with it. Each run is
tests/train_driver.py in a subprocess (torchrun for 2 ranks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.train import latest_checkpoint
from stages.train.runlock import pid_alive
from tests.helpers import ROOT, assert_identical, checkpoint_tensors, launch, metric_rows, ok

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("train_driver.py")
DETERMINISTIC = ("loss", "grad_norm", "lr", "acc", "id_total", "id_sq_total", "units",
                 "optimizer_step", "epoch", "skipped")


def run_driver(out: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return launch([DRIVER, "--out", out, *args], ranks=ranks, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("train_runs")


@pytest.fixture(scope="module")
def one_rank(runs):
    out = runs / "one_rank"
    ok(run_driver(out, "--grad-accum", "2"))
    return out


@pytest.fixture(scope="module")
def two_ranks(runs):
    out = runs / "two_ranks"
    ok(run_driver(out, "--grad-accum", "2", ranks=2))
    return out


def test_two_ranks_match_one_rank(one_rank, two_ranks):
    single, double = metric_rows(one_rank), metric_rows(two_ranks)
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
    proc = ok(run_driver(out, "--grad-accum", "2", "--resume",
                     str(two_ranks / "checkpoints" / "step_00000004")))
    assert "saved by 2 rank(s) on 1 rank(s): DCP reshards" in proc.stderr
    assert "re-seeded from (seed, step, rank)" in proc.stderr
    resumed = metric_rows(out)
    assert [r["step"] for r in resumed] == [5, 6]
    for a, b in zip(metric_rows(one_rank)[4:], resumed, strict=True):
        assert (a["id_total"], a["id_sq_total"]) == (b["id_total"], b["id_sq_total"])  # same data
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
        assert a["lr"] == b["lr"]


def test_sigkill_during_save_and_training_resumes_bitwise(runs, tmp_path):
    # Dropout on: the continued run also depends on the restored RNG states.
    reference = runs / "reference_dropout"
    ok(run_driver(reference, "--dropout", "0.1"))

    out = runs / "killed"
    ckpts = out / "checkpoints"
    # 1) killed after step 4's checkpoint is fully written but before its rename
    proc = run_driver(out, "--dropout", "0.1", "--kill-in-save-step", "4")
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(ckpts) == ckpts / "step_00000002"
    assert (ckpts / ".step_00000004.tmp" / "meta.json").is_file()
    assert [r["step"] for r in metric_rows(out)] == [1, 2, 3, 4]

    # 2) resumed from step 2, killed right after step 5 (step 4 was saved again on the way)
    proc = run_driver(out, "--dropout", "0.1", "--resume", "latest", "--kill-after-step", "5")
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(ckpts) == ckpts / "step_00000004"
    assert not (ckpts / ".step_00000004.tmp").exists()
    assert [r["step"] for r in metric_rows(out)] == [1, 2, 3, 4, 5]

    # 3) resumed from step 4 to the end
    ok(run_driver(out, "--dropout", "0.1", "--resume", "latest"))
    final = metric_rows(out)
    assert [r["step"] for r in final] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(metric_rows(reference), final, strict=True):
        assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}
    assert_identical(checkpoint_tensors(reference / "checkpoints" / "step_00000006", tmp_path),
                     checkpoint_tensors(ckpts / "step_00000006", tmp_path))


def test_two_ranks_skip_a_corrupt_shard_of_rank_one(runs, two_ranks):
    out = runs / "corrupt_two_ranks"
    ckpts = out / "checkpoints"
    proc = run_driver(out, "--grad-accum", "2", "--kill-after-step", "5", ranks=2)
    assert proc.returncode != 0 and latest_checkpoint(ckpts) == ckpts / "step_00000004"
    shard = ckpts / "step_00000004" / "__1_0.distcp"  # rank 1 verifies it: files are split
    with shard.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\xff\xff\x7f\x7f" * 16)

    proc = ok(run_driver(out, "--grad-accum", "2", ranks=2))
    assert "step_00000004 is corrupt (__1_0.distcp: sha256 differs" in proc.stderr
    assert "resuming " + str(ckpts / "step_00000002") in proc.stderr
    assert (out / "checkpoints.corrupt" / "step_00000004" / "__1_0.distcp").is_file()
    rows = [r for r in metric_rows(out) if "event" not in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(metric_rows(two_ranks), rows, strict=True):
        assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}


def test_killing_the_launcher_group_kills_every_worker(tmp_path):
    pids = tmp_path / "pids"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(DRIVER), "--out", str(tmp_path / "run"),
               "--steps", "100000", "--save-every", "100000", "--step-sleep", "0.1",
               "--pid-dir", str(pids)]
    launcher = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(list(pids.glob("rank_*"))) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "no workers"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in sorted(pids.glob("rank_*"))]
        # torchrun puts each worker in a session of its own: a group kill misses them
        assert all(os.getsid(w) != launcher.pid for w in workers)
        time.sleep(1)  # training, not starting up
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(pid_alive(w, None) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [w for w in workers if pid_alive(w, None)] == []
    finally:
        for pid in [launcher.pid, *workers]:
            if pid_alive(pid, None):
                os.kill(pid, signal.SIGKILL)
