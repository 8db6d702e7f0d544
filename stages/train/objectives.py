"""The training objectives of the pipeline, in the loop's protocol (``stages/train/loop.py``):
``loss(model, batch, step) -> (loss summed over this rank's units, unit count, stats)``.

- :class:`SftObjective`: supervised fine-tuning, cross-entropy on the assistant tokens only
  (transcript, the family's header such as ``language X<asr_text>``, and the stop token). Units
  are supervised tokens.
- :class:`OpdObjective`: on-policy distillation, one call of ``stages.opd.step.opd_step`` per
  micro-batch. Units are the positions the union top-k KL used.

Both take :class:`stages.data.batching.AudioBatch` batches and an adapter whose ``model`` is the
(FSDP-wrapped) model the loop trains.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.data.batching import AudioBatch
from stages.models.base import IGNORE_INDEX, AsrAdapter
from stages.opd.config import OpdConfig
from stages.opd.step import opd_step
from stages.opd.vocab import VocabMap
from stages.train.checkpoint import derived_seed


class SftObjective:
    """Summed token cross-entropy on the assistant tokens of ``adapter.sft_inputs``.

    ``text_field``: the manifest field holding the target transcript (``text``; the teacher's
    transcripts under another name for TD adaptation). The LM head runs only on the positions
    from the last prompt token on (``logits_to_keep``), never on the audio and prompt positions.

    Stats: ``tokens`` (supervised tokens), ``acc`` (greedy next-token accuracy on them), ``rows``,
    ``time_sft_inputs`` (prompt building and feature extraction), ``time_model``.
    """

    def __init__(self, adapter: AsrAdapter, text_field: str = "text") -> None:
        self.adapter = adapter
        self.text_field = text_field

    def texts(self, batch: AudioBatch) -> list[str]:
        if self.text_field == "text":
            return list(batch.texts)
        return [u.row[self.text_field] for u in batch.utterances]

    def loss(self, model: nn.Module, batch: AudioBatch, step: int
             ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        start = time.perf_counter()
        inputs = self.adapter.sft_inputs(batch.audios, batch.languages, self.texts(batch))
        labels = inputs.pop("labels")
        built = time.perf_counter()
        # Column P (the first supervised one) is predicted from column P-1: keep logits from there.
        supervised_columns = (labels != IGNORE_INDEX).any(0).nonzero()
        first = int(supervised_columns[0])
        keep = labels.shape[1] - first + 1
        logits = self.adapter.logits_at_tail(inputs, keep)[:, :-1].float()
        targets = labels[:, first:]
        flat_targets = targets.reshape(-1)
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_targets,
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        with torch.no_grad():
            mask = targets != IGNORE_INDEX
            tokens = mask.sum()
            correct = ((logits.argmax(-1) == targets) & mask).sum()
        stats = {
            "tokens": tokens,
            "acc_sum": correct, "acc_count": tokens,
            "rows": len(batch),
            "time_sft_inputs": built - start,
            "time_model": time.perf_counter() - built,
        }
        return loss_sum, tokens, stats


class OpdObjective:
    """On-policy distillation: ``stages.opd.step.opd_step`` on each micro-batch.

    ``student``'s model is the one the loop trains (FSDP-wrapped); ``teacher`` is frozen and
    whole on every rank. Rollouts stay in lock-step across ranks (``synced_gpus`` when the world
    has more than one rank). Sampled rollouts draw from a generator seeded from (seed, micro-batch
    number, rank), so they do not depend on anything but the position in training: a resumed run
    samples what an uninterrupted one would have.
    """

    def __init__(self, student: AsrAdapter, teacher: AsrAdapter, vocab_map: VocabMap,
                 cfg: OpdConfig, *, seed: int, rank: int, world_size: int,
                 grad_accum: int = 1) -> None:
        self.student = student
        self.teacher = teacher
        self.vocab_map = vocab_map.to(student.device)
        self.cfg = cfg
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self._step = None
        self._micro = 0

    def _generator(self, step: int) -> torch.Generator | None:
        if not self.cfg.sample:
            return None
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        micro_batch = (step - 1) * self.grad_accum + self._micro
        generator = torch.Generator(device=self.student.device)
        generator.manual_seed(derived_seed(self.seed, micro_batch, self.rank))
        return generator

    def loss(self, model: nn.Module, batch: AudioBatch, step: int
             ) -> tuple[Tensor, int, dict[str, Any]]:
        return opd_step(self.student, self.teacher, self.vocab_map, batch, self.cfg,
                        synced_gpus=self.world_size > 1, generator=self._generator(step))
