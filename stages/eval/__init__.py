"""Evaluation library: text normalization and error counting (CER/WER through jiwer).

``normalize`` turns raw references and predictions into comparable text; ``scoring`` aligns
them and counts substitutions, deletions and insertions per utterance and over a corpus. The
``score`` and ``evaluate`` stages both call this code, so a rescored file and a fresh evaluation
agree exactly. No model runs here (decoding is ``stages.models.transcribe``).
"""
