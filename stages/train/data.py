"""A deterministic, resumable, rank-aware batch order over a list of examples.

The order is a function of (seed, epoch) alone: epoch e visits a permutation of all examples drawn
from ``numpy.random.default_rng([seed, e])``. Each call to ``next_indices`` takes the next *global*
batch (``batch_per_rank × world_size`` examples) from that permutation and returns this rank's
contiguous slice of it. An epoch ends when fewer than a global batch of examples are left (those
are dropped for that epoch; the next permutation covers them again).

The position is (epoch, offset): how many examples of the epoch's permutation were consumed by all
ranks together. Because it is counted globally, a run resumed on a different number of ranks with
the same global batch continues with exactly the same examples in the same batches (rank r of the
new run takes its slice of the same global batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stages.common.errors import UserError

log = logging.getLogger(__name__)


class ResumableSampler:
    """Yields this rank's example indices batch by batch; ``state_dict`` is its exact position."""

    def __init__(self, num_examples: int, batch_per_rank: int, *, rank: int, world_size: int,
                 seed: int, shuffle: bool = True) -> None:
        if batch_per_rank < 1:
            raise ValueError(f"batch_per_rank must be >= 1, got {batch_per_rank}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_examples = num_examples
        self.batch_per_rank = batch_per_rank
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        if num_examples < self.global_batch:
            raise UserError(
                f"the training set has {num_examples} examples, fewer than one global batch "
                f"({batch_per_rank} per rank × {world_size} ranks = {self.global_batch}); "
                "lower the batch size or add data"
            )
        self.epoch = 0
        self.offset = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def global_batch(self) -> int:
        return self.batch_per_rank * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which ``epoch`` visits the examples (same on every rank)."""
        if epoch != self._perm_epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(
                    self.num_examples)
            else:
                self._perm = np.arange(self.num_examples)
            self._perm_epoch = epoch
        return self._perm

    def next_indices(self) -> list[int]:
        """This rank's indices of the next global batch; advances the position."""
        if self.offset + self.global_batch > self.num_examples:
            self.epoch += 1
            self.offset = 0
        batch = self.permutation(self.epoch)[self.offset:self.offset + self.global_batch]
        self.offset += self.global_batch
        lo = self.rank * self.batch_per_rank
        return [int(i) for i in batch[lo:lo + self.batch_per_rank]]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. The data set and seed must be the ones it was saved
        with (else the position means nothing); a different global batch is allowed, with a
        warning, and continues from the same example offset."""
        for key in ("num_examples", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint's data position was saved with {key}={state[key]!r}, this run "
                    f"has {key}={getattr(self, key)!r}; resume with the same training set and "
                    "seed, or start a fresh run (--resume none) in a new output folder"
                )
        if state["global_batch"] != self.global_batch:
            log.warning("global batch changed from %d to %d: the data order continues from the "
                        "same example, but batches are cut differently",
                        state["global_batch"], self.global_batch)
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])


class BatchSource:
    """Turns the sampler's indices into a collated batch: ``collate([examples[i] ...])``."""

    def __init__(self, examples: Sequence[Any], sampler: ResumableSampler,
                 collate: Callable[[list[Any]], Any]) -> None:
        if len(examples) != sampler.num_examples:
            raise ValueError(f"sampler covers {sampler.num_examples} examples, "
                             f"the data set has {len(examples)}")
        self.examples = examples
        self.sampler = sampler
        self.collate = collate

    def next_batch(self) -> Any:
        return self.collate([self.examples[i] for i in self.sampler.next_indices()])
