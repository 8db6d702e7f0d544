"""A tiny training run for the training-core tests: a random-init Qwen2 causal LM learning
next-token cross-entropy on seeded random token sequences.

Run as a script (one process, or under ``torchrun``) by tests/test_train_distributed.py; its
pieces (model, data, objective) are imported by tests/test_train_core.py. Fault injection lives
here, not in the library: ``--kill-after-step`` SIGKILLs the process from a step hook, and
``--kill-in-save-step`` SIGKILLs it after a checkpoint's temporary folder is complete but before
it is renamed. ``--pid-dir`` makes every rank write its pid there once training runs, and
``--step-sleep`` slows each step (for killing a launcher while its workers train).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from stages.common.cli import setup_logging
from stages.train import (
    BatchSource,
    Checkpointer,
    LoopConfig,
    OptimizerConfig,
    ResumableSampler,
    build_optimizer,
    build_scheduler,
    init_distributed,
    seed_everything,
    shard_model,
    shutdown,
    train,
)
from stages.train.optim import OptimSettings

VOCAB = 64
SEQ_LEN = 12


def tiny_model(dropout: float = 0.0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attention_dropout=dropout, tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    return Qwen2ForCausalLM(config)


def toy_examples(count: int, seed: int = 1234) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (count, SEQ_LEN), generator=gen)
    return [{"id": i, "tokens": tokens[i]} for i in range(count)]


def collate(examples: list[dict]) -> dict:
    return {"ids": torch.tensor([e["id"] for e in examples], dtype=torch.float64),
            "tokens": torch.stack([e["tokens"] for e in examples])}


class NextTokenObjective:
    """Summed next-token cross-entropy. Fault injection: ``nan_steps`` get a NaN loss,
    ``bad_grad_steps`` a finite loss with NaN gradients, ``empty_steps`` no units at all."""

    def __init__(self, nan_steps=(), bad_grad_steps=(), empty_steps=()) -> None:
        self.nan_steps = frozenset(nan_steps)
        self.bad_grad_steps = frozenset(bad_grad_steps)
        self.empty_steps = frozenset(empty_steps)

    def loss(self, model, batch, step):
        start = time.perf_counter()
        tokens = batch["tokens"].to(next(model.parameters()).device)
        logits = model(input_ids=tokens).logits[:, :-1].float()
        targets = tokens[:, 1:]
        loss_sum = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1),
                                   reduction="sum")
        if step in self.nan_steps:
            loss_sum = loss_sum * float("nan")
        if step in self.bad_grad_steps:
            # sqrt(z) at z = 0 adds 0 to the loss but has an infinite slope: 0 * inf = NaN grads
            z = logits.sum()
            loss_sum = loss_sum + torch.sqrt((z - z.detach()) ** 2)
        if step in self.empty_steps:
            return 0.0 * logits.sum(), 0, {"tokens": 0}
        correct = (logits.argmax(-1) == targets).sum()
        stats = {
            "tokens": targets.numel(),
            "acc_sum": correct, "acc_count": targets.numel(),   # reported as "acc"
            "id_total": batch["ids"].sum(), "id_sq_total": (batch["ids"] ** 2).sum(),
            "time_toy": time.perf_counter() - start,
        }
        return loss_sum, targets.numel(), stats


class KillingCheckpointer(Checkpointer):
    """Dies after the temporary folder of step ``kill_step`` is complete, before the rename."""

    def __init__(self, *args, kill_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kill_step = kill_step

    def _publish(self, tmp: Path, final: Path) -> None:
        if self.kill_step is not None and final.name == f"step_{self.kill_step:08d}":
            os.kill(os.getpid(), signal.SIGKILL)
        super()._publish(tmp, final)


def run(env, out: Path, *, steps: int = 6, save_every: int = 2, keep_last: int | None = 10,
        resume: str = "auto", global_batch: int = 4, grad_accum: int = 1, examples: int = 20,
        seed: int = 0, lr: float = 3e-3, dropout: float = 0.0, nan_steps=(),
        bad_grad_steps=(), empty_steps=(), max_skips: int = 3,
        kill_in_save_step: int | None = None, hooks=(), snapshots: dict | None = None,
        stale: str = "refuse", new_schedule: bool = False, schedule: str = "cosine"):
    """Build the tiny model, optimizer, schedule and data, and train; returns (result, model).
    ``snapshots``: if given, filled with {step: full parameter tensors after that step}.
    The lr schedule (warmup 2, then ``schedule`` to 0.1 × ``lr`` at ``steps``) is recorded in
    the checkpoints beside the config; ``stale`` and ``new_schedule`` go to the checkpointer."""
    seed_everything(seed)
    model = shard_model(tiny_model(dropout), env)
    optimizer = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=0.1))
    optim = OptimSettings(lr=lr, warmup_steps=2, schedule=schedule, min_lr_ratio=0.1)
    scheduler = build_scheduler(optimizer, optim.schedule_over(steps))
    data = toy_examples(examples)
    sampler = ResumableSampler(len(data), global_batch // env.world_size, rank=env.rank,
                               world_size=env.world_size, seed=seed)
    checkpointer = KillingCheckpointer(out / "checkpoints", keep_last=keep_last,
                                       config={"weight_decay": 0.1},
                                       schedule=optim.schedule_record(steps), stale=stale,
                                       new_schedule=new_schedule, kill_step=kill_in_save_step)
    cfg = LoopConfig(output_dir=out, max_steps=steps, grad_accum=grad_accum,
                     save_every=save_every, resume=resume, seed=seed,
                     max_consecutive_skips=max_skips, tensorboard=False, progress=False)
    hooks = list(hooks)
    if snapshots is not None:
        def snapshot(step, row):
            snapshots[step] = [p.full_tensor().clone() for p in model.parameters()]
        hooks.append(snapshot)
    objective = NextTokenObjective(nan_steps, bad_grad_steps, empty_steps)
    result = train(model, objective, optimizer, scheduler,
                   BatchSource(data, sampler, collate), checkpointer, cfg, env, hooks=hooks)
    return result, model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--resume", default="auto")
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--kill-after-step", type=int)
    p.add_argument("--kill-in-save-step", type=int)
    p.add_argument("--pid-dir", type=Path)
    p.add_argument("--step-sleep", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    env = init_distributed(args.device)
    hooks = []
    if args.pid_dir is not None:
        args.pid_dir.mkdir(parents=True, exist_ok=True)
        (args.pid_dir / f"rank_{env.rank}").write_text(str(os.getpid()))
    if args.step_sleep:
        hooks.append(lambda step, row: time.sleep(args.step_sleep))
    if args.kill_after_step is not None:
        def kill(step, row):
            if step == args.kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)
        hooks.append(kill)
    try:
        run(env, args.out, steps=args.steps, save_every=args.save_every, resume=args.resume,
            global_batch=args.global_batch, grad_accum=args.grad_accum, dropout=args.dropout,
            kill_in_save_step=args.kill_in_save_step, hooks=hooks)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
