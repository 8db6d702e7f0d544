"""Random choices of the demo grammars, drawn only from the generator passed in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def maybe(rng: np.random.Generator, probability: float) -> bool:
    return bool(rng.random() < probability)
