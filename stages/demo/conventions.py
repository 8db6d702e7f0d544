"""Transcript conventions of the demo corpus.

The demo's transcripts follow one convention: en lower case with a final full stop ("the cat was
big."), zh with a final 。. A real student base and a real teacher were trained on different data
and write differently (casing, punctuation); TD adaptation then moves the student onto the
teacher's convention, which is where the paper sees VUSS fall. `restyled` gives a bootstrap
another convention for the same words (README "The GPU study", VUSS).
"""

from __future__ import annotations

SENTENCE_STOPS = (".", "。")


def restyled(text: str) -> str:
    """The same words in the other convention: the final full stop (. or 。) dropped, the first
    letter capitalized (a no-op for scripts without case): "the cat was big." -> "The cat was
    big", "猫很大。" -> "猫很大"."""
    for stop in SENTENCE_STOPS:
        text = text.removesuffix(stop)
    return text[:1].upper() + text[1:]
