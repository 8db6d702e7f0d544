"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine (or constant) schedule.

Weight decay pulls weights toward zero; for norm gains, biases and embeddings that only distorts
(a norm gain of 0 silences a channel, an embedding row of a rare token shrinks every step it is
not seen). So a parameter gets no decay when any module that owns it is an embedding or a norm
layer, when its name ends in ``bias``, or when it has fewer than two dimensions (gains, scalar
gates). Tied weights are judged by all their owners: an embedding tied to the output head is not
decayed. An untied output head is a matrix and is decayed.

The schedule is a ``LambdaLR`` so its position is checkpointed with ``state_dict``. It counts
optimizer updates, not loop steps: a skipped step (non-finite loss) does not advance it. Its
shape (peak lr, warmup, kind, floor and, for cosine, the update it ends at) is recorded in every
checkpoint (:meth:`OptimSettings.schedule_record`); a resume with another shape is refused unless
asked for, and then :func:`rebase_schedule` continues at the same position on the new shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from stages.common.settings import setting


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass(frozen=True)
class ScheduleConfig:
    """``kind``: "cosine" (linear warmup, then cosine from lr down to ``min_lr_ratio`` × lr at
    ``total_steps``) or "constant" (linear warmup, then lr). Steps are optimizer updates."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    total_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "constant"):
            raise ValueError(f"schedule kind must be 'cosine' or 'constant', got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.kind == "cosine" and self.total_steps < max(1, self.warmup_steps):
            raise ValueError(f"cosine schedule needs total_steps ({self.total_steps}) >= 1 and "
                             f">= warmup_steps ({self.warmup_steps})")


@dataclass(frozen=True, kw_only=True)
class OptimSettings:
    """What a training stage sets of the optimizer and schedule (AdamW, betas 0.9/0.95)."""

    lr: float = setting(1e-4, help="peak learning rate")
    warmup_steps: int = setting(100, help="linear warmup over this many updates")
    schedule: Literal["cosine", "constant"] = setting(
        "cosine", help="after warmup: cosine decay to min-lr-ratio × lr at --max-steps, or "
                       "constant")
    min_lr_ratio: float = setting(0.1, help="cosine floor as a fraction of --lr")
    weight_decay: float = setting(0.005, help="decoupled weight decay on matrices")

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.lr, weight_decay=self.weight_decay)

    def schedule_over(self, total_steps: int) -> ScheduleConfig:
        """The schedule of a run of ``total_steps`` optimizer updates."""
        return ScheduleConfig(self.schedule, warmup_steps=self.warmup_steps,
                              total_steps=total_steps, min_lr_ratio=self.min_lr_ratio)

    def schedule_record(self, total_steps: int) -> dict[str, Any]:
        """What decides every update's lr, as JSON: two runs with equal records follow the same
        lr curve (a constant schedule does not depend on the run's length)."""
        cosine = self.schedule == "cosine"
        return {"lr": self.lr, "schedule": self.schedule, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio if cosine else None,
                "total_steps": total_steps if cosine else None}


# The settings a schedule record holds: they may change on resume only when asked for.
SCHEDULE_SETTINGS = ("lr", "warmup_steps", "schedule", "min_lr_ratio")


def describe_schedule(record: dict[str, Any]) -> str:
    """A schedule record in words: ``lr 0.0001, warmup 100, cosine to 0.1× at update 1000``."""
    text = f"lr {record.get('lr'):g}, warmup {record.get('warmup_steps')}"
    if record.get("schedule") == "cosine":
        return (f"{text}, cosine to {record.get('min_lr_ratio'):g}× at update "
                f"{record.get('total_steps')}")
    return f"{text}, constant"


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    # Model-specific norms (Qwen2RMSNorm, LlamaRMSNorm, ...) are plain nn.Modules named *Norm.
    return "norm" in type(module).__name__.lower()


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Parameter names (first name of each tensor) that get weight decay, and those that don't."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(module)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mods = owners[id(param)]
        exempt = (
            param.ndim < 2
            or name.endswith("bias")
            or any(isinstance(m, nn.Embedding) or _is_norm(m) for m in mods)
        )
        (no_decay if exempt else decay).append(name)
    return decay, no_decay


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and the exempt rest (empty groups left out)."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. Build it after ``shard_model`` (it must hold the
    sharded DTensor parameters)."""
    groups = parameter_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr for the update that follows ``step`` earlier updates.

    Warmup: (step + 1) / warmup_steps, so the first update is not wasted at lr 0 and the last
    warmup update reaches the full lr. Cosine: from 1 at ``warmup_steps`` to ``min_lr_ratio`` at
    ``total_steps``, flat after.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    if step >= cfg.total_steps:
        return cfg.min_lr_ratio
    progress = (step - cfg.warmup_steps) / (cfg.total_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rebase_schedule(scheduler: LambdaLR, lr: float) -> None:
    """Continue a restored schedule on the shape it was built with and peak ``lr``: its position
    (updates done) stays, the lr of the next update is recomputed. Loading a scheduler's state
    restores the *saved* peak lr, and its optimizer's groups the saved lr, so both are reset."""
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [lr] * len(groups)
    for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> LambdaLR:
    """A LambdaLR over ``lr_factor``; call ``step()`` once per applied optimizer update."""

    def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict then skips it
        return lr_factor(step, cfg)

    return LambdaLR(optimizer, factor)
