"""Faults the training core survives, in one process (CPU, gloo, the tiny model of
tests/train_driver.py): damaged checkpoints (bit rot, a truncated shard, a missing .metadata,
an empty meta.json) skipped for the newest intact one, leftovers of killed saves and prunes,
the metrics history at --max-steps, a changed lr schedule on resume, the run lock, and a full
output folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from train_driver import run

from stages.common.errors import UserError
from stages.train import list_checkpoints
from stages.train.checkpoint import verify_checkpoint
from stages.train.checkpoint_export import resolve_checkpoint
from stages.train.optim import OptimSettings, lr_factor
from stages.train.runlock import LOCK_FILE, RunLock
from tests.helpers import hold_run_lock, metric_rows, small_tmpfs

STEP = "step_{:08d}".format
DETERMINISTIC = ("loss", "grad_norm", "lr", "id_total", "units", "optimizer_step")


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> list[dict]:
    """The metrics rows of an uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("reference")
    run(env, out, steps=6, save_every=2)
    return metric_rows(out)


class Stop(Exception):
    """Ends a run from a step hook, as a kill would (the loop saved what it had saved)."""


def stopped_run(env, out: Path, *, after: int, **kwargs) -> None:
    """The 6-step run of ``reference``, stopped right after step ``after`` was logged."""
    def stop(step, row):
        if step == after:
            raise Stop

    with pytest.raises(Stop):
        run(env, out, steps=6, save_every=2, hooks=[stop], **kwargs)


def steps_of(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if "event" not in r]


def events_of(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "event" in r]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    return [{k: r[k] for k in DETERMINISTIC} for r in a if "event" not in r] == [
        {k: r[k] for k in DETERMINISTIC} for r in b if "event" not in r]


# -- damaged checkpoints ---------------------------------------------------------------------

def bit_rot(ckpt: Path) -> str:
    """64 bytes inside a shard overwritten with float32 3.4e38 (same file size)."""
    shard = ckpt / "__0_0.distcp"
    with shard.open("r+b") as handle:
        handle.seek(shard.stat().st_size // 2)
        handle.write(b"\xff\xff\x7f\x7f" * 16)
    return "__0_0.distcp: sha256 differs"


def truncated_shard(ckpt: Path) -> str:
    shard = ckpt / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    return "__0_0.distcp has 426336 bytes, 852672 were written"


def missing_metadata(ckpt: Path) -> str:
    (ckpt / ".metadata").unlink()
    return ".metadata is missing"


def empty_meta(ckpt: Path) -> str:
    (ckpt / "meta.json").write_text("{}")
    return "meta.json lacks step"


DAMAGE = [bit_rot, truncated_shard, missing_metadata, empty_meta]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_latest_is_set_aside_and_the_previous_intact_one_resumed(
        env, tmp_path, reference, damage, caplog):
    ckpts = tmp_path / "checkpoints"
    stopped_run(env, tmp_path, after=5)
    problem = damage(ckpts / STEP(4))
    assert verify_checkpoint(ckpts / STEP(4)) and not verify_checkpoint(ckpts / STEP(2))

    # set-aside is what the workflow passes: it must not take the intact step 2 with it
    with caplog.at_level(logging.WARNING, logger="stages.train.checkpoint"):
        result, _ = run(env, tmp_path, steps=6, save_every=2, stale="set-aside")
    assert result.resumed_from == ckpts / STEP(2)
    moved = tmp_path / "checkpoints.corrupt" / STEP(4)
    assert moved.is_dir() and not list(tmp_path.glob("checkpoints.stale-*"))
    assert f"checkpoint {ckpts / STEP(4)} is corrupt" in caplog.text and problem in caplog.text

    rows = metric_rows(tmp_path)
    assert steps_of(rows) == [1, 2, 3, 4, 5, 6]
    assert same_rows(rows, reference)  # training continued exactly from step 2
    [event] = events_of(rows)
    assert (event["event"], event["step"], event["moved_to"]) == (
        "checkpoint_corrupt", 2, str(moved))
    assert any(problem in p for p in event["problems"]), event["problems"]
    assert [s for s, _ in list_checkpoints(ckpts)] == [2, 4, 6]
    assert not verify_checkpoint(ckpts / STEP(4))  # saved again, intact


def test_no_intact_checkpoint_is_an_error_that_moves_nothing(env, tmp_path):
    ckpts = tmp_path / "checkpoints"
    stopped_run(env, tmp_path, after=5)
    bit_rot(ckpts / STEP(4))
    missing_metadata(ckpts / STEP(2))
    for resume in ("auto", "latest"):
        with pytest.raises(UserError) as err:
            run(env, tmp_path, steps=6, save_every=2, resume=resume, stale="set-aside")
        message = str(err.value)
        assert message.startswith(f"{ckpts}: no intact checkpoint to resume ({STEP(4)}: ")
        assert "__0_0.distcp: sha256 differs" in message and ".metadata is missing" in message
        assert "Nothing was moved" in message
    assert [s for s, _ in list_checkpoints(ckpts)] == [2, 4]
    with pytest.raises(UserError, match=rf"{STEP(4)} is damaged: __0_0.distcp: sha256"):
        run(env, tmp_path, steps=6, resume=str(ckpts / STEP(4)))


def test_export_takes_the_newest_intact_checkpoint(env, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    run(env, tmp_path, steps=4, save_every=2)
    truncated_shard(ckpts / STEP(4))
    with caplog.at_level(logging.WARNING):
        source = resolve_checkpoint(tmp_path)
    assert source.path == ckpts / STEP(2) and source.step == 2
    assert f"{ckpts / STEP(4)} is corrupt (__0_0.distcp has 426336 bytes" in caplog.text
    with pytest.raises(UserError, match=rf"{STEP(4)} is damaged: __0_0.distcp has 426336"):
        resolve_checkpoint(ckpts / STEP(4))
    assert (ckpts / STEP(4)).is_dir()  # an export moves nothing


def test_checksums_cover_every_file(env, tmp_path):
    run(env, tmp_path, steps=2, save_every=2)
    ckpt = tmp_path / "checkpoints" / STEP(2)
    listed = json.loads((ckpt / "checksums.json").read_text())
    files = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}
    assert set(listed["files"]) == files - {"checksums.json"}
    assert {".metadata", "__0_0.distcp", "rng/rank_00000.pt", "meta.json",
            "metrics.jsonl"} == set(listed["files"])
    assert listed["files"]["__0_0.distcp"]["size"] == 852672


# -- interrupted saves and prunes ------------------------------------------------------------

def test_leftovers_of_a_killed_resave_and_prune_are_cleaned(env, tmp_path, reference):
    ckpts = tmp_path / "checkpoints"
    stopped_run(env, tmp_path, after=5)
    # killed between the two renames of a re-save of step 4: the old copy is all there is
    os.rename(ckpts / STEP(4), ckpts / f".{STEP(4)}.old")
    shutil.copytree(ckpts / f".{STEP(4)}.old", ckpts / f".{STEP(4)}.tmp")
    # killed while pruning step 2: a partly deleted folder, meta.json still there
    shutil.copytree(ckpts / STEP(2), ckpts / f".{STEP(2)}.prune")
    (ckpts / f".{STEP(2)}.prune" / "__0_0.distcp").unlink()
    assert [s for s, _ in list_checkpoints(ckpts)] == [2]

    result, _ = run(env, tmp_path, steps=6, save_every=2)
    assert result.resumed_from == ckpts / STEP(4)  # restored from its .old copy
    assert sorted(p.name for p in ckpts.iterdir()) == [STEP(2), STEP(4), STEP(6)]
    assert same_rows(metric_rows(tmp_path), reference)


def test_a_kill_while_pruning_leaves_no_partial_checkpoint(env, tmp_path, monkeypatch):
    import stages.train.checkpoint as checkpoint

    real_rmtree = shutil.rmtree

    def killed_half_way(path, *args, **kwargs):
        if Path(path).name.endswith(".prune") and Path(path).is_dir():  # killed half-way
            (Path(path) / "__0_0.distcp").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_half_way)
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        run(env, tmp_path, steps=4, save_every=2, keep_last=1)
    monkeypatch.undo()
    # step 2's remains hold meta.json and checksums.json, but under a name that is no checkpoint
    assert (ckpts / f".{STEP(2)}.prune" / "meta.json").is_file()
    assert [s for s, _ in list_checkpoints(ckpts)] == [4]
    result, _ = run(env, tmp_path, steps=4, save_every=2, keep_last=1)
    assert result.resumed_from == ckpts / STEP(4)
    assert sorted(p.name for p in ckpts.iterdir()) == [STEP(4)]


# -- the metrics history ---------------------------------------------------------------------

def test_resume_at_max_steps_restores_the_history(env, tmp_path, reference):
    run(env, tmp_path, steps=6, save_every=2)
    rows = metric_rows(tmp_path)
    # a resume from step 2 that was killed after cutting the file, plus a duplicated row
    lost = rows[:2] + [rows[1]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lost))
    result, _ = run(env, tmp_path, steps=6, save_every=2)
    assert result.step == 6 and result.resumed_from == tmp_path / "checkpoints" / STEP(6)
    assert metric_rows(tmp_path) == rows and same_rows(rows, reference)


def test_metrics_rows_after_the_checkpoint_are_dropped_one_row_per_step(env, tmp_path):
    run(env, tmp_path, steps=4, save_every=2)
    rows = metric_rows(tmp_path)
    extra = [*rows, {**rows[3], "step": 5}, {**rows[3], "step": 6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    run(env, tmp_path, steps=4, save_every=2)
    assert metric_rows(tmp_path) == rows
    # killed while writing the row after the checkpoint's step: the fragment goes
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')
    run(env, tmp_path, steps=4, save_every=2)
    assert metric_rows(tmp_path) == rows


# -- the lr schedule on resume ---------------------------------------------------------------

def test_a_changed_schedule_is_refused_unless_asked_for(env, tmp_path):
    run(env, tmp_path, steps=4, save_every=2, lr=3e-3)
    with pytest.raises(UserError) as err:  # a longer cosine would raise the lr again
        run(env, tmp_path, steps=8, save_every=2, lr=3e-3)
    assert str(err.value) == (
        f"{tmp_path / 'checkpoints' / STEP(4)} was trained with another learning-rate schedule "
        "(lr 0.003, warmup 2, cosine to 0.1× at update 4; this run: lr 0.003, warmup 2, cosine "
        "to 0.1× at update 8). Pass --resume-with-new-schedule to continue it on the new "
        "schedule (the log shows both), write the new run to another output folder, or "
        "--stale-checkpoints set-aside to start over")
    with pytest.raises(UserError, match="another learning-rate schedule"):
        run(env, tmp_path, steps=4, save_every=2, lr=1e-3)


def test_lower_lr_and_longer_run_on_resume_with_new_schedule(env, tmp_path, caplog):
    run(env, tmp_path, steps=4, save_every=2, lr=3e-3)
    before = metric_rows(tmp_path)
    with caplog.at_level(logging.WARNING, logger="stages.train.checkpoint"):
        result, _ = run(env, tmp_path, steps=8, save_every=2, lr=1e-3, new_schedule=True)
    assert result.resumed_from == tmp_path / "checkpoints" / STEP(4)
    rows = metric_rows(tmp_path)
    assert steps_of(rows) == list(range(1, 9))
    assert rows[:4] == before
    new = OptimSettings(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1).schedule_over(8)
    assert [r["lr"] for r in rows if "event" not in r][4:] == pytest.approx(
        [1e-3 * lr_factor(update, new) for update in range(4, 8)])
    [event] = events_of(rows)
    assert event["event"] == "schedule_changed" and event["step"] == 4
    assert event["lr_before"] == pytest.approx(3e-3 * 0.1)  # the old cosine had ended
    assert event["lr_after"] == pytest.approx(1e-3 * lr_factor(4, new))
    assert ("was lr 0.003, warmup 2, cosine to 0.1× at update 4 (next update's lr 0.0003), now "
            "lr 0.001, warmup 2, cosine to 0.1× at update 8") in caplog.text
    meta = json.loads((tmp_path / "checkpoints" / STEP(8) / "meta.json").read_text())
    assert meta["schedule"]["lr"] == 1e-3 and meta["scheduler"]["base_lrs"] == [1e-3, 1e-3]


def test_set_aside_starts_over_on_another_schedule(env, tmp_path):
    run(env, tmp_path, steps=4, save_every=2, lr=3e-3)
    result, _ = run(env, tmp_path, steps=4, save_every=2, lr=1e-3, stale="set-aside")
    assert result.resumed_from is None
    aside = list(tmp_path.glob("checkpoints.stale-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == [STEP(2), STEP(4)]
    rows = metric_rows(tmp_path)
    lrs = [r["lr"] for r in rows if "event" not in r]
    assert steps_of(rows) == [1, 2, 3, 4] and lrs[:2] == [0.5e-3, 1e-3]  # warmup again
    assert [e["event"] for e in events_of(rows)] == ["checkpoint_set_aside"] * 2
    assert "schedule lr 0.003, warmup 2, cosine" in events_of(rows)[0]["warning"]


def test_constant_schedule_may_run_longer(env, tmp_path):
    run(env, tmp_path, steps=2, save_every=2, schedule="constant")
    result, _ = run(env, tmp_path, steps=4, save_every=2, schedule="constant")
    assert result.resumed_from == tmp_path / "checkpoints" / STEP(2)


# -- one writer per run folder ---------------------------------------------------------------

def test_run_lock_refuses_a_second_writer_and_takes_over_stale_locks(tmp_path, caplog):
    holder = hold_run_lock(tmp_path)
    try:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid and record["host"]
        with pytest.raises(UserError) as err:
            RunLock(tmp_path).acquire()
        assert str(err.value).startswith(
            f"{tmp_path} is being written by another run (host {record['host']}, pid "
            f"{holder.pid}, started {record['started_utc']}; lock file {tmp_path / LOCK_FILE}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # its holder was killed: the lock is stale and taken over with a warning
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="stages.train.runlock"):
        lock.acquire()
    assert f"process {holder.pid} is gone" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_run_lock_of_another_host_goes_stale_without_heartbeat(tmp_path):
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"host": "node-17", "pid": 4242, "pid_started": 1,
                                     "started_utc": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(UserError, match="host node-17, pid 4242"):
        RunLock(tmp_path, stale_after=60).acquire()
    past = time.time() - 61
    os.utime(lock_file, (past, past))
    with RunLock(tmp_path, stale_after=60) as lock:
        assert json.loads(lock_file.read_text()) == lock.record
    assert not lock_file.exists()


def test_heartbeat_refreshes_the_lock(tmp_path):
    with RunLock(tmp_path, heartbeat=0.05):
        past = time.time() - 1000
        os.utime(tmp_path / LOCK_FILE, (past, past))
        time.sleep(0.3)
        assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5


# -- a full output folder --------------------------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 768 KiB tmpfs (root only): room for the metrics, not for a checkpoint."""
    with small_tmpfs(tmp_path / "small", "768k") as mount:
        yield mount


def test_checkpoint_on_a_full_disk_is_one_clear_error(env, tiny_tmpfs):
    with pytest.raises(UserError) as err:
        run(env, tiny_tmpfs / "run", steps=2, save_every=2)
    tmp = tiny_tmpfs / "run" / "checkpoints" / f".{STEP(2)}.tmp"
    assert str(err.value) == (f"{tmp}: writing checkpoint {STEP(2)}: No space left on device "
                              "(ENOSPC); free space there or write the outputs elsewhere")
    assert not tmp.exists()  # the partial checkpoint is gone, its space free again
    assert list_checkpoints(tiny_tmpfs / "run" / "checkpoints") == []
