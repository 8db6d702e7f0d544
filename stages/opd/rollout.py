"""Student rollouts for OPD (DESIGN §5, step 1): decode without gradients, then clean.

:func:`rollout` decodes a batch with the student adapter's ``generate`` (greedy by default;
sampling from softmax(logits / temperature) with a seeded ``torch.Generator`` when asked), with the
adapter's blocked-token set at -inf, up to ``max_new_tokens`` ids per row, and cleans the result
with :func:`clean_responses` into a :class:`Rollout`.

Cleaning rules (the supervised positions are what the loss sees; position j is the state that
predicts response id j):

- each row is cut right after its first stop token; ids after it are dropped;
- ``keep_stop_token=True`` (default): the stop token is the row's last supervised position, so the
  teacher can say whether the student stopped at the right time. ``False``: the stop token stays
  in the response (it is scored, the teacher and student see the same ids) but its position is not
  supervised;
- a row that never stopped (it ran into ``max_new_tokens``) is kept as it is, truncated, every
  position supervised; ``stopped`` counts how many rows did stop;
- an *empty* row is one without any transcript token: only the stop token (the student stopped at
  once) or nothing at all. It is still supervised when the stop is kept: stopping at once is a
  decision the teacher may disagree with (it then puts its mass on a first word), and training on
  it is how the student unlearns empty outputs. ``nonempty`` counts the rows with a transcript.

Under FSDP every rank must run the same number of forward passes, or the per-layer all-gathers
deadlock. transformers' ``generate(synced_gpus=True)`` guarantees it: every step all-reduces a
"this rank is done" flag, a rank whose rows have all stopped keeps calling ``forward`` (on its
last token, discarding the output) until every rank is done, and the loop ends on the same step
everywhere, at the latest after ``max_new_tokens`` steps (the length limit is per rank but the
same number everywhere). A finished rank's output is unchanged by the extra steps. ``synced_gpus``
is therefore needed exactly when more than one process shares a sharded model; ``None`` (the
default here) turns it on when a process group of more than one rank is initialized.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from stages.models.base import AsrAdapter


@dataclass(frozen=True)
class Rollout:
    """Cleaned student responses of one batch.

    Attributes:
        responses: student ids per row, ending with the stop token when the row stopped.
        stopped: whether each row reached the stop token.
        supervised: supervised positions per row, a prefix of the response: its length, minus
            one for a stopped row when the stop token is not kept.
        keep_stop_token: the cleaning switch the rollout was made with.
    """

    responses: list[list[int]]
    stopped: list[bool]
    supervised: list[int]
    keep_stop_token: bool

    @property
    def lengths(self) -> list[int]:
        """Ids per response, the stop token included (what the student generated)."""
        return [len(r) for r in self.responses]

    @property
    def nonempty(self) -> list[bool]:
        """Whether each row holds at least one transcript (non-stop) id."""
        return [n > int(s) for n, s in zip(self.lengths, self.stopped, strict=True)]

    def supervised_mask(self, width: int | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [B, width] (default width: the longest response), True at supervised
        positions."""
        width = max(self.lengths, default=0) if width is None else width
        columns = torch.arange(width)
        mask = columns[None, :] < torch.tensor(self.supervised, dtype=torch.long)[:, None]
        return mask.to(device) if device is not None else mask

    def stats(self) -> dict[str, float]:
        """Trainer stats (see ``stages.train.metrics``): ``rollout_len`` (mean ids per row, stop
        included; also ``rollout_len_max``), ``stopped`` and ``nonempty`` ratios, ``tokens``
        (generated ids, for tokens/s) and ``rows``."""
        rows = len(self.responses)
        lengths = self.lengths
        return {
            "rows": rows,
            "tokens": sum(lengths),
            "rollout_len_sum": sum(lengths), "rollout_len_count": rows,
            "rollout_len_max": max(lengths, default=0),
            "stopped_sum": sum(self.stopped), "stopped_count": rows,
            "nonempty_sum": sum(self.nonempty), "nonempty_count": rows,
        }


def clean_responses(raw: Sequence[Sequence[int]], stop_token_id: int, *,
                    keep_stop_token: bool = True) -> Rollout:
    """Cut each row after its first ``stop_token_id`` and mark its supervised positions (rules in
    the module docstring)."""
    responses, stopped, supervised = [], [], []
    for row in raw:
        ids = [int(i) for i in row]
        if stop_token_id in ids:
            ids = ids[: ids.index(stop_token_id) + 1]
            stopped.append(True)
            supervised.append(len(ids) if keep_stop_token else len(ids) - 1)
        else:
            stopped.append(False)
            supervised.append(len(ids))
        responses.append(ids)
    return Rollout(responses, stopped, supervised, keep_stop_token)


def default_synced_gpus() -> bool:
    """True when this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep an FSDP2 model's parameters gathered between forwards, then free them (no-op for a
    model that is not sharded)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_reshard_after_forward(False)  # recurses into every sharded block
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def rollout(student: AsrAdapter, audios: Sequence[np.ndarray], languages: Sequence[str | None],
            *, max_new_tokens: int, keep_stop_token: bool = True, do_sample: bool = False,
            temperature: float = 1.0, generator: torch.Generator | None = None,
            synced_gpus: bool | None = None, reshard_during_decode: bool = False) -> Rollout:
    """Decode ``audios`` with the student (no gradients, eval mode for the duration) and clean.

    ``languages`` go to the student's prompt (families without a language prompt ignore them).
    ``do_sample`` draws with ``temperature`` from ``generator`` (on the student's device; seed it
    per rank and step for reproducible rollouts). ``synced_gpus``: see the module docstring;
    None = on when several ranks are running. ``reshard_during_decode``: see the module docstring.
    """
    if synced_gpus is None:
        synced_gpus = default_synced_gpus()
    keep = contextlib.nullcontext() if reshard_during_decode else gathered(student.model)
    with keep:
        raw = student.generate(audios, languages, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature,
                               synced_gpus=synced_gpus, generator=generator)
    return clean_responses(raw, student.stop_token_id, keep_stop_token=keep_stop_token)
