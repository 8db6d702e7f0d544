"""Two-rank OPD steps with an FSDP2-sharded student, for tests/test_opd_distributed.py.

Run under ``torchrun --nproc_per_node=2``. Each rank takes its own two clips; a hook on the
student's LM head makes rank 0's rollout stop at once and rank 1's run to ``max_new_tokens``,
the worst case for decoding in lock-step. Each rank then
- runs ``opd_forward`` with the sharded student (``synced_gpus`` left to its default, which must
  turn it on) and backward, counting the sharded model's forward calls during the rollout;
- runs the same step with an unsharded copy of the student (no sync) as the reference;
- repeats the sharded step with ``keep_stop_token=False``, where rank 0 has nothing to learn.
Every rank writes ``rank<r>.json``; a hang is caught by the test's timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from short_run import batch_of, synthesize_corpus  # a script: tests/ is on sys.path

from stages.models import load_adapter
from stages.opd.config import OpdConfig
from stages.opd.rollout import decoding_copy, default_synced_gpus
from stages.opd.step import opd_forward, prepare_teacher
from stages.opd.vocab import build_vocab_map
from stages.train import init_distributed, shard_model, shutdown


class RolloutStopBias:
    """Adds ``value`` to the stop logit, only in no-grad forwards (the rollout), so scoring sees
    the model's own logits."""

    def __init__(self, adapter, value: float) -> None:
        self.stop, self.value = adapter.stop_token_id, value
        adapter.model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, _module, _args, out):
        if torch.is_grad_enabled():
            return None
        out = out.clone()
        out[..., self.stop] += self.value
        return out


class ForwardCounter:
    def __init__(self, model) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self)

    def __call__(self, _module, _args):
        if not torch.is_grad_enabled():
            self.calls += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    rank = env.rank
    cfg = OpdConfig(top_k=8, max_new_tokens=args.max_new_tokens)

    corpus = synthesize_corpus(4, seed=0)
    batch = batch_of(corpus[2 * rank: 2 * rank + 2], keep_language=[True, False])
    teacher = prepare_teacher(load_adapter(str(args.models / "teacher_init")))
    sharded = load_adapter(str(args.models / "student_init"))
    reference = load_adapter(str(args.models / "student_init"))
    vocab_map = build_vocab_map(reference, teacher)
    bias = 1e4 if rank == 0 else -1e4
    for adapter in (sharded, reference):
        RolloutStopBias(adapter, bias)
    shard_model(sharded.model, env)
    sharded_forwards = ForwardCounter(sharded.model)
    # The default rollout decodes on the student's plain copy: bias and count it there.
    copy = decoding_copy(sharded)
    RolloutStopBias(copy, bias)
    copy_forwards = ForwardCounter(copy.model)

    out = opd_forward(sharded, teacher, vocab_map, batch, cfg)
    out.loss_sum.backward()
    grads_finite = all(bool(torch.isfinite(p.grad.full_tensor()).all())
                       for p in sharded.model.parameters() if p.grad is not None)
    ref = opd_forward(reference, teacher, vocab_map, batch, cfg, synced_gpus=False)

    # The sharded model decoding itself: every rank runs the same number of forwards.
    resharded = opd_forward(sharded, teacher, vocab_map, batch,
                            replace(cfg, reshard_during_decode=True))

    sharded.model.zero_grad(set_to_none=True)
    empty = opd_forward(sharded, teacher, vocab_map, batch, replace(cfg, keep_stop_token=False))
    empty.loss_sum.backward()
    result = {
        "rank": rank, "world_size": env.world_size, "synced_default": default_synced_gpus(),
        "responses": out.rollout.responses, "reference_responses": ref.rollout.responses,
        "resharded_responses": resharded.rollout.responses,
        "loss_sum": float(out.loss_sum.detach()),
        "reference_loss_sum": float(ref.loss_sum.detach()),
        "resharded_loss_sum": float(resharded.loss_sum),
        "positions": out.positions, "reference_positions": ref.positions,
        "copy_forwards": copy_forwards.calls,
        "sharded_rollout_forwards": sharded_forwards.calls,
        "grads_finite": grads_finite,
        "empty_positions": empty.positions, "empty_loss_sum": float(empty.loss_sum.detach()),
        "empty_grads": sum(p.grad is not None for p in sharded.model.parameters()),
        "parameters": sum(1 for _ in sharded.model.parameters()),
        "teacher_languages": out.teacher_languages.languages,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
