"""The model-agnostic training core: process group, FSDP2 wrapping, optimizer and schedule,
resumable data order, DCP checkpoints, metrics, and the training loop.

A stage puts it together like this (see ``stages/train/loop.py`` for the objective protocol)::

    env = init_distributed()                                # torchrun env, or one process
    seed_everything(seed)                                   # same seed on every rank: same init
    model = build_model()                                   # identical on every rank
    model = shard_model(model, env)                         # FSDP2 per block, then the root
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-4, weight_decay=0.005))
    scheduler = build_scheduler(optimizer, ScheduleConfig("cosine", warmup_steps=1000,
                                                          total_steps=max_steps))
    sampler = ResumableSampler(len(examples), batch_per_rank, rank=env.rank,
                               world_size=env.world_size, seed=seed)
    checkpointer = Checkpointer(output_dir / "checkpoints", keep_last=3, config=settings)
    result = train(model, objective, optimizer, scheduler,
                   BatchSource(examples, sampler, collate), checkpointer,
                   LoopConfig(output_dir=output_dir, max_steps=max_steps), env)
"""

from stages.train.checkpoint import (
    Checkpointer,
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
)
from stages.train.data import BatchSource, ResumableSampler
from stages.train.distributed import DistEnv, init_distributed, seed_everything, shutdown
from stages.train.fsdp import block_classes, shard_model
from stages.train.loop import (
    LoopConfig,
    Objective,
    TrainingDiverged,
    TrainResult,
    train,
)
from stages.train.metrics import MetricsLogger, combine_rank_stats
from stages.train.optim import (
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)

__all__ = [
    "BatchSource",
    "Checkpointer",
    "DistEnv",
    "LoopConfig",
    "MetricsLogger",
    "Objective",
    "OptimizerConfig",
    "ResumableSampler",
    "ScheduleConfig",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "block_classes",
    "build_optimizer",
    "build_scheduler",
    "combine_rank_stats",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "lr_factor",
    "parameter_groups",
    "seed_everything",
    "shard_model",
    "shutdown",
    "train",
]
