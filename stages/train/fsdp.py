"""FSDP2 wrapping: ``fully_shard`` each transformer block, then the root.

Blocks are found generically: Hugging Face models name the classes that must stay whole on one
device in ``_no_split_modules`` (decoder layers, audio-encoder layers of composite models). The
outermost modules of any such class named by the model or its sub-models are the blocks (blocks
never nest, so the groups are disjoint and need no bottom-up ordering); each becomes its own FSDP
group (one all-gather before its forward, one reduce-scatter after its backward), and the root
group takes what is left (embeddings, final norm, heads, adapters).

Precision: fp32 master weights always. On CUDA, compute runs in bf16 and gradients are reduced in
fp32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``); on CPU there is no mixed
precision (gloo and CPU kernels in fp32).

A single process is still wrapped (a world of one; see ``distributed.py``): the forward and
backward then run the same code as on many ranks, the parameters are DTensors in both cases, and
the checkpoint layout does not depend on the world size. Losses match across world sizes up to
float summation order (tested on CPU to 1e-5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from stages.train.distributed import DistEnv

log = logging.getLogger(__name__)


def block_classes(model: nn.Module) -> set[str]:
    """Class names listed in ``_no_split_modules`` by the model or any of its sub-models."""
    names: set[str] = set()
    for module in model.modules():
        listed = getattr(module, "_no_split_modules", None)
        if listed:
            names.update(listed)
    return names


def shard_targets(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """The outermost submodules whose class name is in ``names`` (a listed class nested inside
    another, such as GLM-ASR's encoder attention inside its encoder layer, stays part of the
    enclosing block's group)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if type(child).__name__ in names:
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def shard_model(
    model: nn.Module,
    env: DistEnv,
    *,
    blocks: Iterable[str] | None = None,
    mixed_precision: bool | None = None,
    master_dtype: torch.dtype | None = torch.float32,
) -> nn.Module:
    """Wrap ``model`` with FSDP2 in place and return it.

    ``blocks``: class names to shard one by one (default: ``block_classes(model)``).
    ``mixed_precision``: bf16 compute with fp32 reduction (default: on for CUDA, off on CPU).
    ``master_dtype``: floating parameters are cast to it before sharding (fp32 master weights);
    None keeps their dtype (e.g. a frozen bf16 teacher that is never stepped).

    Every rank must hold identical parameters when this is called: each rank keeps its own slice
    of its own copy, nothing is broadcast.
    """
    if isinstance(model, FSDPModule):
        raise ValueError("model is already wrapped with fully_shard")
    names = set(blocks) if blocks is not None else block_classes(model)
    if master_dtype is not None:
        model.to(dtype=master_dtype)
    use_mp = env.device.type == "cuda" if mixed_precision is None else mixed_precision
    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if use_mp
        else MixedPrecisionPolicy()
    )
    mesh = init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp",))

    targets = shard_targets(model, names)
    for module in targets:
        fully_shard(module, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)

    if not targets:
        log.warning("no transformer blocks found (looked for %s): the whole model is one FSDP "
                    "group, which gathers every parameter at once", sorted(names) or "nothing")
    if env.is_main:
        counts: dict[str, int] = {}
        for module in targets:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        log.info("FSDP2: %s + root over %d rank(s); mixed precision %s",
                 ", ".join(f"{n}×{c}" for n, c in sorted(counts.items())) or "no blocks",
                 env.world_size, "bf16/fp32-reduce" if use_mp else "off")
    return model
