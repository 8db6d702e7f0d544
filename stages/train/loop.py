"""The training loop shared by every objective (SFT, OPD): accumulate, reduce, clip, step, save.

Loss normalization. An objective returns, per micro-batch, the *sum* of its loss over this rank's
units (tokens, positions) and the number of those units. The loop back-propagates the sums, and
once all micro-batches are done it scales the gradients by ``world_size / global_units``
(``global_units`` = units over all ranks and micro-batches; the world size undoes FSDP2's
averaging of gradients over ranks). The update therefore follows the gradient of the global mean
over units, whatever the world size, the per-rank batch or the number of micro-batches, and a
rank with few units (short rollouts) weighs in proportion to them. Scaling after the backward
passes is what lets the unit count be known only once every micro-batch has run (OPD learns its
count of used positions from the teacher pass).

Step semantics. ``step`` counts loop steps; every step consumes ``grad_accum`` batches from the
sampler, including a skipped one. A step is skipped when the loss or the gradient norm is not
finite on any rank, or when no rank had a unit to learn from: gradients are dropped, neither the
optimizer nor the lr schedule moves (``optimizer_step`` does not advance), and the metrics row has
``skipped: 1`` with ``skip_reason``. ``max_consecutive_skips`` skips in a row abort the run with
``TrainingDiverged``. Backward always runs on every rank, non-finite or not, so the FSDP
collectives stay in lock-step.

Metrics. One row per step (see ``metrics.py`` for how objective stats are reduced): ``step``,
``epoch``, ``loss`` (global mean over units), ``units``, ``grad_norm`` (before clipping), ``lr``
(of this step's update), ``skipped``, ``optimizer_step``, ``tokens_per_s`` (the objective's
``tokens`` stat if it returns one, else units, per second of step time), ``time_data``,
``time_forward`` (the objective's ``loss`` call; its own ``time_*`` stats break it down),
``time_backward``, ``time_optimizer``, ``time_step``, and the objective's stats.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from stages.common.errors import UserError
from stages.common.settings import setting
from stages.train.checkpoint import (
    HISTORY_FILE,
    Checkpointer,
    Progress,
    TrainState,
    derived_seed,
)
from stages.train.data import BatchSource
from stages.train.distributed import DistEnv, gather_objects, seed_everything
from stages.train.metrics import MetricsLogger, accumulate, combine_rank_stats

log = logging.getLogger(__name__)

RESERVED_STATS = frozenset({
    "step", "epoch", "loss", "loss_sum", "loss_count", "units", "grad_norm", "lr", "skipped",
    "skip_reason", "optimizer_step", "tokens_per_s", "nonfinite_loss_ranks", "time_data",
    "time_forward", "time_backward", "time_optimizer", "time_step", "event",
})


class Objective(Protocol):
    def loss(self, model: nn.Module, batch: Any, step: int
             ) -> tuple[Tensor, Tensor | float, dict[str, Tensor | float]]:
        """(loss summed over this rank's units, number of units on this rank, stats).

        Called once per micro-batch on every rank in lock-step. The loss must be connected to
        the model's parameters even when this rank has no units (return e.g.
        ``0.0 * logits.sum()``): backward runs FSDP collectives that every rank must join.
        Stats follow the naming convention of ``stages.train.metrics``.
        """
        ...


class TrainingDiverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient (or nothing to learn)."""


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The loop's settings; ``volatile`` ones may change when a run resumes."""

    output_dir: Path = setting(volatile=True, help="run folder: checkpoints/, metrics.jsonl, "
                                                   "tensorboard/, train_summary.json")
    max_steps: int = setting(volatile=True,
                             help="loop steps to train to (counted across resumes)")
    grad_accum: int = setting(1, help="micro-batches per optimizer step")
    max_grad_norm: float = setting(1.0, help="clip the global gradient norm to this; 0 = no "
                                             "clipping")
    save_every: int = setting(1000, volatile=True,
                              help="checkpoint every N steps, and at the end")
    keep_last: int = setting(3, volatile=True, help="complete checkpoints to keep; 0 = all")
    resume: str = setting("auto", volatile=True,
                          help="latest | auto (latest if any, else fresh) | none | PATH to a "
                               "step_<n> folder")
    seed: int = setting(0, help="seed for init, data order, RNG")
    max_consecutive_skips: int = setting(3, volatile=True,
                                         help="abort after this many non-finite steps in a row")
    tensorboard: bool = setting(True, volatile=True,
                                help="also write TensorBoard event files beside metrics.jsonl")
    progress: bool = field(default=True, metadata={"volatile": True})  # a progress bar

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum < 1 or self.save_every < 1:
            raise ValueError("max_steps, grad_accum and save_every must be >= 1")
        if self.max_consecutive_skips < 1:
            raise ValueError("max_consecutive_skips must be >= 1")
        if self.keep_last < 0 or self.max_grad_norm < 0:
            raise ValueError("keep_last and max_grad_norm must be >= 0")


@dataclass(frozen=True)
class TrainResult:
    step: int
    optimizer_steps: int
    skipped_steps: int
    resumed_from: Path | None
    last_checkpoint: Path | None


StepHook = Callable[[int, dict[str, Any]], None]


def train(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, batches: BatchSource,
          checkpointer: Checkpointer, cfg: LoopConfig, env: DistEnv,
          hooks: Sequence[StepHook] = ()) -> TrainResult:
    """Run (or resume) training until ``cfg.max_steps``; checkpoint every ``cfg.save_every``
    steps and at the end. ``hooks`` are called on every rank after each step's metrics row.

    ``metrics.jsonl`` is reconciled with the resumed checkpoint in every case, also when there
    is nothing left to train: rows after its step are dropped, and rows up to it come back from
    the history the checkpoint carries (when it belongs to this run folder). The checkpointer's
    warnings (a corrupt checkpoint set aside, a new schedule) are written to it as event rows."""
    state = TrainState(model, optimizer, scheduler, batches.sampler)
    resumed_from = checkpointer.resolve(cfg.resume)
    if resumed_from is not None:
        checkpointer.load(resumed_from, state, env, seed=cfg.seed)
    else:
        # Independent streams per rank from here on (model init used the same seed everywhere).
        seed_everything(derived_seed(cfg.seed, 0, env.rank))
    progress = state.progress
    done = progress.step >= cfg.max_steps
    own = resumed_from is not None and resumed_from.parent == checkpointer.root
    metrics = MetricsLogger(cfg.output_dir, resume_step=progress.step, total_steps=cfg.max_steps,
                            enabled=env.is_main, tensorboard=cfg.tensorboard and not done,
                            progress=cfg.progress and not done,
                            history=resumed_from / HISTORY_FILE if own else None)
    for event in checkpointer.events:
        metrics.event(event)
    if done:
        metrics.close()
        log.info("checkpoint is at step %d >= max steps %d: nothing to train",
                 progress.step, cfg.max_steps)
        return TrainResult(progress.step, progress.optimizer_steps, progress.skipped_steps,
                           resumed_from, resumed_from)

    params = [p for p in model.parameters() if p.requires_grad]
    last_saved = None
    model.train()
    try:
        while progress.step < cfg.max_steps:
            progress.step += 1
            row = _train_step(model, objective, optimizer, scheduler, batches, params, cfg, env,
                              progress)
            metrics.log(row)
            for hook in hooks:
                hook(progress.step, row)
            if progress.consecutive_skips >= cfg.max_consecutive_skips:
                raise TrainingDiverged(
                    f"{progress.consecutive_skips} consecutive steps skipped (the last, step "
                    f"{progress.step}: {row['skip_reason']}); see {metrics.path} for the losses "
                    "and gradient norms. Lower the learning rate or check the data, then resume "
                    "from the last checkpoint (nothing was applied during the skipped steps)"
                )
            if progress.step % cfg.save_every == 0 or progress.step == cfg.max_steps:
                last_saved = checkpointer.save(state, env, history=metrics.path)
    finally:
        metrics.close()
    return TrainResult(progress.step, progress.optimizer_steps, progress.skipped_steps,
                       resumed_from, last_saved)


def _sync(env: DistEnv) -> float:
    """Now, after the device finished its queued work (so phase times are real)."""
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    return time.perf_counter()


def _train_step(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, batches: BatchSource,
                params: list[nn.Parameter], cfg: LoopConfig, env: DistEnv,
                progress: Progress) -> dict[str, Any]:
    start = _sync(env)
    local: dict[str, float] = {}
    times = {"time_data": 0.0, "time_forward": 0.0, "time_backward": 0.0}
    loss_total = 0.0
    units_total = 0.0
    for _ in range(cfg.grad_accum):
        t0 = _sync(env)
        batch = batches.next_batch()
        t1 = _sync(env)
        loss_sum, units, stats = objective.loss(model, batch, progress.step)
        t2 = _sync(env)
        if not loss_sum.requires_grad:
            raise ValueError("the objective's loss does not depend on the model's parameters; "
                             "with no units, return 0.0 * (something computed by the model)")
        loss_sum.backward()  # always, also when non-finite: FSDP collectives must match
        t3 = _sync(env)
        clash = RESERVED_STATS.intersection(stats)
        if clash:
            raise ValueError(f"objective stats use reserved names {sorted(clash)}")
        accumulate(local, stats)
        loss_total += float(loss_sum.detach())
        units_total += float(units)
        times["time_data"] += t1 - t0
        times["time_forward"] += t2 - t1
        times["time_backward"] += t3 - t2
    local.update(times)
    local.update(loss_sum=loss_total, loss_count=units_total, units=units_total,
                 nonfinite_loss_ranks=float(not math.isfinite(loss_total)))

    t_opt = _sync(env)
    merged = combine_rank_stats(gather_objects(local))
    global_units = merged["units"]
    lr = optimizer.param_groups[0]["lr"]
    grad_norm = None
    reason = None
    if merged["nonfinite_loss_ranks"]:
        reason = f"non-finite loss on {int(merged['nonfinite_loss_ranks'])} rank(s)"
    elif global_units == 0:
        reason = "no units to learn from on any rank"
    else:
        scale = env.world_size / global_units
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
        max_norm = cfg.max_grad_norm or math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not math.isfinite(grad_norm):
            reason = "non-finite gradient norm"
    if reason is None:
        optimizer.step()
        scheduler.step()
        progress.optimizer_steps += 1
        progress.consecutive_skips = 0
    else:
        progress.skipped_steps += 1
        progress.consecutive_skips += 1
        if env.is_main:
            log.warning("step %d skipped: %s", progress.step, reason)
    optimizer.zero_grad(set_to_none=True)
    end = _sync(env)

    merged.pop("nonfinite_loss_ranks")
    merged.pop("loss_count", None)
    merged.pop("time_optimizer", None)
    step_time = end - start
    tokens = merged.get("tokens", global_units)
    row: dict[str, Any] = {
        "step": progress.step,
        "epoch": batches.sampler.epoch,
        "loss": merged.pop("loss"),
        "units": merged.pop("units"),
        "grad_norm": grad_norm,
        "lr": lr,
        "skipped": int(reason is not None),
        "optimizer_step": progress.optimizer_steps,
        "tokens_per_s": tokens / step_time if step_time > 0 else None,
        "time_optimizer": end - t_opt,
        "time_step": step_time,
    }
    if reason is not None:
        row["skip_reason"] = reason
    row.update(sorted(merged.items()))
    return row
