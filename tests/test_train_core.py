"""Training core, in one process: optimizer groups, lr schedule, data order, stat reduction,
metrics file, checkpoint discovery, skipping non-finite steps, gradient accumulation, RNG
restore and loading weights into a plain model."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from train_driver import run, tiny_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from stages.common.errors import UserError
from stages.common.settings import add_settings, settings_from_args
from stages.train import (
    Checkpointer,
    LoopConfig,
    MetricsLogger,
    OptimizerConfig,
    ResumableSampler,
    ScheduleConfig,
    TrainingDiverged,
    block_classes,
    build_optimizer,
    build_scheduler,
    combine_rank_stats,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    lr_factor,
    shard_model,
)
from stages.train.checkpoint import TrainState
from stages.train.fsdp import shard_targets
from stages.train.metrics import accumulate
from stages.train.optim import split_decay


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- optimizer and schedule ------------------------------------------------------------------

def test_no_decay_for_norms_biases_and_embeddings():
    decay, no_decay = split_decay(tiny_model())
    assert "model.embed_tokens.weight" in no_decay
    assert "model.norm.weight" in no_decay
    assert "model.layers.0.input_layernorm.weight" in no_decay
    assert "model.layers.1.post_attention_layernorm.weight" in no_decay
    assert "model.layers.0.self_attn.q_proj.bias" in no_decay
    assert "model.layers.0.self_attn.q_proj.weight" in decay
    assert "model.layers.1.mlp.down_proj.weight" in decay
    assert "lm_head.weight" in decay  # an untied head is a matrix like any other
    assert all(n.endswith("weight") and "norm" not in n and "embed" not in n for n in decay)
    assert len(decay) + len(no_decay) == len(list(tiny_model().parameters()))


def test_tied_embedding_is_not_decayed():
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    decay, no_decay = split_decay(Qwen2ForCausalLM(config))
    assert "model.embed_tokens.weight" in no_decay
    assert not any("embed" in n or "lm_head" in n for n in decay)


def test_blocks_of_a_composite_audio_model():
    from collections import Counter

    from transformers import GlmAsrConfig, GlmAsrForConditionalGeneration
    model = GlmAsrForConditionalGeneration(GlmAsrConfig(
        audio_config={"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_mel_bins": 8},
        text_config={"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 3, "num_attention_heads": 2,
                     "num_key_value_heads": 1}))
    names = block_classes(model)
    assert {"GlmAsrEncoderLayer", "LlamaDecoderLayer", "GlmAsrAttention"} <= names
    # the encoder's attention lives inside the encoder layer: one group per layer, not two
    assert Counter(type(m).__name__ for m in shard_targets(model, names)) == {
        "GlmAsrEncoderLayer": 2, "LlamaDecoderLayer": 3}


def test_optimizer_groups_on_sharded_model(env):
    torch.manual_seed(0)
    model = shard_model(tiny_model(), env)
    assert block_classes(model) == {"Qwen2DecoderLayer"}
    assert all(isinstance(layer, FSDPModule) for layer in model.model.layers)
    assert isinstance(model, FSDPModule) and not isinstance(model.model.norm, FSDPModule)
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.05))
    decay_group, exempt_group = opt.param_groups
    assert decay_group["weight_decay"] == 0.05 and exempt_group["weight_decay"] == 0.0
    assert decay_group["betas"] == (0.9, 0.95) and decay_group["eps"] == 1e-8
    assert all(isinstance(p, DTensor) for p in decay_group["params"] + exempt_group["params"])
    decay, no_decay = split_decay(model)
    assert len(decay_group["params"]) == len(decay) == 15  # 7 matrices × 2 layers + lm_head
    assert len(exempt_group["params"]) == len(no_decay) == 12  # embed, norms, q/k/v biases


def test_schedule_values():
    cosine = ScheduleConfig("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert lr_factor(0, cosine) == pytest.approx(0.25)
    assert lr_factor(2, cosine) == pytest.approx(0.75)
    assert lr_factor(3, cosine) == pytest.approx(1.0)
    assert lr_factor(4, cosine) == pytest.approx(1.0)
    assert lr_factor(9, cosine) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lr_factor(6, cosine) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(14, cosine) == pytest.approx(0.1)
    assert lr_factor(50, cosine) == pytest.approx(0.1)
    constant = ScheduleConfig("constant", warmup_steps=0)
    assert [lr_factor(s, constant) for s in (0, 5, 10**6)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="total_steps"):
        ScheduleConfig("cosine", warmup_steps=10, total_steps=9)
    all_warmup = ScheduleConfig("cosine", warmup_steps=2, total_steps=2, min_lr_ratio=0.5)
    assert [lr_factor(s, all_warmup) for s in range(4)] == [0.5, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="min_lr_ratio"):
        ScheduleConfig("constant", min_lr_ratio=1.5)


def test_scheduler_follows_updates_and_round_trips_through_json():
    cfg = ScheduleConfig("cosine", warmup_steps=2, total_steps=10, min_lr_ratio=0.0)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([param], lr=2.0)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, cfg) for s in range(5)])
    saved = json.loads(json.dumps(sched.state_dict()))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=2.0)
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(saved)
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == pytest.approx([2.0 * lr_factor(6, cfg)])


# -- data order ------------------------------------------------------------------------------

def draw(sampler, n):
    return [sampler.next_indices() for _ in range(n)]


def test_ranks_take_slices_of_the_same_global_batch():
    one = ResumableSampler(22, 4, rank=0, world_size=1, seed=7)
    r0 = ResumableSampler(22, 2, rank=0, world_size=2, seed=7)
    r1 = ResumableSampler(22, 2, rank=1, world_size=2, seed=7)
    for _ in range(12):  # 5 batches per epoch (2 tail examples dropped): crosses two epochs
        assert r0.next_indices() + r1.next_indices() == one.next_indices()
    assert one.epoch == 2 and one.batches_per_epoch == 5


def test_epochs_are_seeded_permutations():
    sampler = ResumableSampler(12, 3, rank=0, world_size=1, seed=3)
    epoch0 = sum(draw(sampler, 4), [])
    epoch1 = sum(draw(sampler, 4), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1
    again = ResumableSampler(12, 3, rank=0, world_size=1, seed=3)
    assert sum(draw(again, 4), []) == epoch0
    other_seed = ResumableSampler(12, 3, rank=0, world_size=1, seed=4)
    assert sum(draw(other_seed, 4), []) != epoch0
    plain = ResumableSampler(12, 3, rank=0, world_size=1, seed=3, shuffle=False)
    assert sum(draw(plain, 4), []) == list(range(12))


def test_sampler_resumes_mid_epoch_also_on_another_world_size():
    reference = ResumableSampler(10, 4, rank=0, world_size=1, seed=1)
    expected = draw(reference, 9)
    first = ResumableSampler(10, 2, rank=0, world_size=2, seed=1)
    draw(first, 3)  # 3 global batches: epoch 1, offset 4
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["offset"]) == (1, 4)
    resumed = ResumableSampler(10, 4, rank=0, world_size=1, seed=1)
    resumed.load_state_dict(state)
    assert draw(resumed, 6) == expected[3:]


def test_sampler_refuses_other_data_and_tiny_data():
    state = ResumableSampler(10, 2, rank=0, world_size=1, seed=1).state_dict()
    with pytest.raises(UserError, match="num_examples=10"):
        ResumableSampler(11, 2, rank=0, world_size=1, seed=1).load_state_dict(state)
    with pytest.raises(UserError, match="seed"):
        ResumableSampler(10, 2, rank=0, world_size=1, seed=2).load_state_dict(state)
    with pytest.raises(UserError, match="fewer than one global batch"):
        ResumableSampler(5, 3, rank=1, world_size=2, seed=0)


# -- stats and metrics -----------------------------------------------------------------------

def test_stat_reduction_convention():
    rank0: dict[str, float] = {}
    accumulate(rank0, {"acc_sum": 3, "acc_count": 4, "time_roll": 1.0, "len_max": 5.0,
                       "len_min": 2.0, "tokens": torch.tensor(10), "lang_zh": 2})
    accumulate(rank0, {"acc_sum": 1, "acc_count": 4, "time_roll": 0.5, "len_max": 9.0,
                       "len_min": 1.0, "tokens": 6, "lang_zh": 1})
    assert rank0["time_roll"] == 1.5 and rank0["len_max"] == 9.0 and rank0["len_min"] == 1.0
    rank1 = {"acc_sum": 4.0, "acc_count": 2.0, "time_roll": 1.2, "len_max": 7.0,
             "len_min": 3.0, "tokens": 4.0, "lang_en": 2.0}
    out = combine_rank_stats([rank0, rank1])
    assert out == {"acc": 0.8, "time_roll": 1.5, "len_max": 9.0, "len_min": 1.0,
                   "tokens": 20.0, "lang_zh": 3.0, "lang_en": 2.0}
    assert combine_rank_stats([{"x_sum": 0.0, "x_count": 0.0}]) == {"x": None}


def test_metrics_file_drops_rows_after_the_resumed_step(tmp_path):
    logger = MetricsLogger(tmp_path, resume_step=0, total_steps=5, enabled=True,
                           tensorboard=False, progress=False)
    for step in range(1, 6):
        logger.log({"step": step, "loss": float("nan") if step == 2 else 1.0 / step})
    logger.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "lo')  # a row cut short by a kill
    resumed = MetricsLogger(tmp_path, resume_step=3, total_steps=5, enabled=True,
                            tensorboard=False, progress=False)
    for step in (4, 5):
        resumed.log({"step": step, "loss": 0.0})
    resumed.close()
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["loss"] is None and rows[3]["loss"] == 0.0
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON row"):
        MetricsLogger(tmp_path, resume_step=1, total_steps=5, enabled=True,
                      tensorboard=False, progress=False)


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, resume_step=0, total_steps=1, enabled=True,
                           tensorboard=True, progress=False)
    logger.log({"step": 1, "loss": 2.0, "skipped": 0})
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# -- checkpoint discovery --------------------------------------------------------------------

def test_latest_ignores_tmp_and_incomplete_folders(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("step_00000002", True), ("step_00000010", True),
                           ("step_00000012", False), (".step_00000014.tmp", True),
                           ("step_16", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "meta.json").write_text("{}")
    assert [s for s, _ in list_checkpoints(root)] == [2, 10]
    assert latest_checkpoint(root) == root / "step_00000010"
    ckpt = Checkpointer(root)
    with pytest.raises(UserError, match="already holds checkpoints"):
        ckpt.resolve("none")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckpt.resolve(str(root / "step_00000012"))
    # "complete" is only the name and meta.json: these hold nothing a run could resume
    with pytest.raises(UserError, match=r"no intact checkpoint to resume \(step_00000010: "
                                        r"meta.json lacks step.*Nothing was moved"):
        ckpt.resolve("auto")
    assert [s for s, _ in list_checkpoints(root)] == [2, 10]
    assert not (root / ".step_00000014.tmp").exists()  # a killed save's leftover is cleaned
    empty = Checkpointer(tmp_path / "nothing")
    assert empty.resolve("auto") is None and empty.resolve("none") is None
    with pytest.raises(UserError, match="no complete checkpoint"):
        empty.resolve("latest")


# -- the loop in one process -----------------------------------------------------------------

def test_bad_steps_are_skipped_and_counted(env, tmp_path):
    params_seen: dict = {}
    result, _ = run(env, tmp_path, steps=6, save_every=10, nan_steps={2}, bad_grad_steps={3},
                    empty_steps={5}, snapshots=params_seen)
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [0, 1, 1, 0, 1, 0]
    assert [r.get("skip_reason") for r in rows] == [
        None, "non-finite loss on 1 rank(s)", "non-finite gradient norm", None,
        "no units to learn from on any rank", None]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    assert rows[2]["loss"] == pytest.approx(rows[0]["loss"], abs=0.2)  # finite loss, NaN grads
    assert rows[2]["grad_norm"] is None and rows[4]["units"] == 0
    assert [r["optimizer_step"] for r in rows] == [1, 1, 1, 2, 2, 3]
    assert rows[1]["lr"] == rows[2]["lr"] == rows[3]["lr"]  # the schedule waits for updates
    for before, after in ((1, 2), (2, 3), (4, 5)):  # skipped steps leave the weights alone
        assert all(torch.equal(a, b) for a, b in zip(params_seen[before], params_seen[after],
                                                        strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(params_seen[3], params_seen[4],
                                                        strict=True))
    assert all(torch.isfinite(p).all() for p in params_seen[6])
    assert (result.step, result.optimizer_steps, result.skipped_steps) == (6, 3, 3)
    meta = json.loads((tmp_path / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["sampler"]["offset"] == 4 and meta["sampler"]["epoch"] == 1  # 6 batches read
    assert (meta["skipped_steps"], meta["optimizer_steps"]) == (3, 3)


def test_consecutive_non_finite_steps_abort(env, tmp_path):
    with pytest.raises(TrainingDiverged, match="3 consecutive steps skipped .*step 4"):
        run(env, tmp_path, steps=6, save_every=10, nan_steps={2, 3, 4}, max_skips=3)
    assert [r["skipped"] for r in read_rows(tmp_path / "metrics.jsonl")] == [0, 1, 1, 1]
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def test_gradient_accumulation_matches_one_big_batch(env, tmp_path):
    run(env, tmp_path / "big", steps=3, save_every=10, global_batch=4, grad_accum=1)
    run(env, tmp_path / "accum", steps=3, save_every=10, global_batch=2, grad_accum=2)
    big = read_rows(tmp_path / "big" / "metrics.jsonl")
    accum = read_rows(tmp_path / "accum" / "metrics.jsonl")
    for a, b in zip(big, accum, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-6)
        assert a["id_total"] == b["id_total"] and a["units"] == b["units"] == 44
        assert a["acc"] == b["acc"]


def test_keep_last_and_weights_load_into_a_plain_model(env, tmp_path):
    _, model = run(env, tmp_path, steps=4, save_every=1, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 4]
    plain = tiny_model()
    load_model_weights(tmp_path / "checkpoints" / "step_00000004", plain)
    trained = {k: v.full_tensor() for k, v in model.state_dict().items()}
    loaded = plain.state_dict()
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)


def test_rng_states_come_back_on_resume(env, tmp_path):
    run(env, tmp_path, steps=2, save_every=2)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    model = shard_model(tiny_model(), env)
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))
    state = TrainState(model, opt, build_scheduler(opt, ScheduleConfig("constant")),
                       ResumableSampler(20, 4, rank=0, world_size=1, seed=0))
    Checkpointer(tmp_path / "checkpoints", config={"lr": 3e-3}).load(
        tmp_path / "checkpoints" / "step_00000002", state, env, seed=0)
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])
    assert state.progress.step == 2 and state.sampler.offset == 8
    assert state.scheduler.last_epoch == 2


def test_resuming_an_older_checkpoint_saves_over_newer_steps(env, tmp_path):
    run(env, tmp_path, steps=4, save_every=2)
    first = read_rows(tmp_path / "metrics.jsonl")
    run(env, tmp_path, steps=4, save_every=2,
        resume=str(tmp_path / "checkpoints" / "step_00000002"))
    again = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000002", "step_00000004"]


def test_loop_options():
    parser = argparse.ArgumentParser()
    add_settings(parser, LoopConfig)
    args = parser.parse_args(["--output-dir", "out", "--max-steps", "50", "--resume", "latest",
                              "--max-grad-norm", "0", "--no-tensorboard"])
    cfg = settings_from_args(LoopConfig, args)
    assert (cfg.max_steps, cfg.resume, cfg.max_grad_norm, cfg.output_dir) == (
        50, "latest", 0.0, Path("out"))  # 0: no clipping
    assert (cfg.save_every, cfg.grad_accum, cfg.max_consecutive_skips) == (1000, 1, 3)
    assert cfg.tensorboard is False and cfg.keep_last == 3
