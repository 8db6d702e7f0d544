"""GPU slots: single-GPU jobs on a machine with several GPUs spread over them, a slot is freed
when its process ends (also when killed), and jobs with an assigned GPU are left alone.

Real processes and real flock locks; the GPUs are CUDA_VISIBLE_DEVICES entries, which is all
the choice reads, so this runs without a GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.common import cli, gpu_slots

ROOT = Path(__file__).resolve().parents[1]

# Takes a slot (at once, or when told "go" with WAIT set), prints what it got, holds it until
# its stdin closes.
HOLDER = """
import json, os, sys
from stages.common.gpu_slots import claim_gpu_slot
if os.environ.get("WAIT"):
    sys.stdin.readline()
claim = claim_gpu_slot()
print(json.dumps({"claim": claim and claim.__dict__,
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}), flush=True)
sys.stdin.read()
"""


class Holders:
    def __init__(self, slots: Path):
        self.slots = slots
        self.procs: list[subprocess.Popen] = []

    def spawn(self, visible: str = "0,1", **env: str) -> subprocess.Popen:
        environ = {**os.environ, "PYTHONPATH": str(ROOT), gpu_slots.SLOTS_DIR_ENV: str(self.slots),
                   "CUDA_VISIBLE_DEVICES": visible, **env}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=environ, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def start(self, visible: str = "0,1", **env: str) -> tuple[subprocess.Popen, dict]:
        proc = self.spawn(visible, **env)
        return proc, json.loads(proc.stdout.readline())

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=30)


@pytest.fixture
def holders(tmp_path):
    made = Holders(tmp_path / "slots")
    yield made
    made.close()


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_jobs_spread_over_gpus_and_a_finished_job_frees_its_slot(holders):
    first, got = holders.start()
    assert got == {"visible": "0", "claim": {"gpu": "0", "slot": 0, "others": 0, "candidates": 2}}
    second, got = holders.start()
    assert got["visible"] == "1" and got["claim"]["others"] == 0
    _, got = holders.start()
    assert got["visible"] == "0" and got["claim"] == {"gpu": "0", "slot": 1, "others": 1,
                                                      "candidates": 2}
    # GPU 1 is free again: the next job goes there, not to GPU 0 with its one job.
    release(second)
    _, got = holders.start()
    assert got["visible"] == "1" and got["claim"]["slot"] == 0
    # The first job's slot on GPU 0 is reused once it ends.
    release(first)
    _, got = holders.start()
    assert got["visible"] == "0" and got["claim"] == {"gpu": "0", "slot": 0, "others": 1,
                                                      "candidates": 2}


def test_jobs_starting_together_still_spread(holders):
    # Six jobs started at once (as Snakemake starts ready jobs): the choice is serialized, so
    # they do not all see two idle GPUs and pick the first.
    procs = [holders.spawn("0,1,2", WAIT="1") for _ in range(6)]
    time.sleep(3)  # all of them imported and waiting
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    chosen = [json.loads(proc.stdout.readline())["visible"] for proc in procs]
    assert sorted(chosen) == ["0", "0", "1", "1", "2", "2"]


def test_a_killed_job_frees_its_slot(holders):
    killed, got = holders.start()
    assert got["visible"] == "0"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    _, got = holders.start()
    assert got["visible"] == "0" and got["claim"]["others"] == 0


def test_gpu_entries_are_kept_as_given(holders):
    # GPU UUIDs (as Slurm or a user may list them) name the slot files safely.
    _, got = holders.start("GPU-aa/1,GPU-bb")
    assert got["visible"] == "GPU-aa/1"
    _, got = holders.start("GPU-aa/1,GPU-bb")
    assert got["visible"] == "GPU-bb"
    assert sorted(p.name for p in holders.slots.glob("gpu*")) == ["gpuGPU-aa_1.slot0",
                                                                 "gpuGPU-bb.slot0"]


def test_one_gpu_or_an_assigned_rank_changes_nothing(holders):
    _, got = holders.start("3")
    assert got == {"claim": None, "visible": "3"}
    # A torchrun rank keeps CUDA_VISIBLE_DEVICES (it picks cuda:LOCAL_RANK itself) and holds
    # its GPU's slot, so a single-GPU job goes to the other GPU.
    _, got = holders.start("0,1", LOCAL_RANK="0")
    assert got["visible"] == "0,1" and got["claim"]["gpu"] == "0"
    _, got = holders.start()
    assert got["visible"] == "1"


def test_run_stage_claims_only_when_the_device_is_left_open(holders, monkeypatch):
    monkeypatch.setenv(gpu_slots.SLOTS_DIR_ENV, str(holders.slots))
    monkeypatch.setattr(gpu_slots, "_held", None)
    seen = []

    def main(args):
        seen.append((args.device, os.environ["CUDA_VISIBLE_DEVICES"]))

    p = cli.parser("a stage")
    p.add_argument("--device", default="auto")
    for device in ("cpu", "cuda:1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        assert cli.run_stage(main, p, ["--device", device]) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    holders.start()  # another job on GPU 0
    assert cli.run_stage(main, p, []) == 0
    assert seen == [("cpu", "0,1"), ("cuda:1", "0,1"), ("auto", "1")]
    assert gpu_slots._held is not None
    gpu_slots._held.close()
    monkeypatch.setattr(gpu_slots, "_held", None)


def test_an_unusable_slots_folder_leaves_the_job_as_it_is(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(gpu_slots.SLOTS_DIR_ENV, str(blocker / "slots"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(gpu_slots, "_held", None)
    assert gpu_slots.claim_gpu_slot() is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "GPU slots unusable" in caplog.text and gpu_slots.SLOTS_DIR_ENV in caplog.text
