"""A tiny Whisper built offline: a byte-level BPE with Whisper's special tokens, trained on the
demo's sentences, and a ``WhisperForConditionalGeneration`` with random weights.

For tests and small recipes of the ``whisper`` family (stages/models/whisper.py); a real
checkpoint comes from a folder or hub id instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from stages.demo.tiny import UNSPACED_CHARACTER, logit_width
from stages.models.whisper import NO_TIMESTAMPS, START, TRANSCRIBE

END = "<|endoftext|>"
# Whisper's special tokens in its own order: end, start, one per language, tasks, markers.
SPECIAL_TOKENS = [END, START, *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>",
                  TRANSCRIBE, "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", NO_TIMESTAMPS]

DEFAULT_DIMS = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "heads": 4,
                "ffn": 256, "num_mel_bins": 80, "vocab_multiple": 64}


def train_whisper_tokenizer(texts: Iterable[str], vocab_size: int) -> WhisperTokenizer:
    """Byte-level BPE over the texts with Whisper's special tokens (CJK characters and kana
    stand alone, as in the demo's tokenizer)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(UNSPACED_CHARACTER), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.json"
        tokenizer.save(str(path))
        return WhisperTokenizer(tokenizer_file=str(path), pad_token=END)


def build_whisper(tokenizer: WhisperTokenizer, dims: dict[str, Any] | None = None,
                  seed: int = 0) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A tiny Whisper (model, processor) with random weights from ``seed``."""
    d = {**DEFAULT_DIMS, **(dims or {})}
    end, start = (int(tokenizer.convert_tokens_to_ids(t)) for t in (END, START))
    config = WhisperConfig(
        vocab_size=logit_width(tokenizer, d["vocab_multiple"]), num_mel_bins=d["num_mel_bins"],
        d_model=d["d_model"], encoder_layers=d["encoder_layers"],
        decoder_layers=d["decoder_layers"], encoder_attention_heads=d["heads"],
        decoder_attention_heads=d["heads"], encoder_ffn_dim=d["ffn"], decoder_ffn_dim=d["ffn"],
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
        begin_suppress_tokens=None, suppress_tokens=None, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=end,
                                               decoder_start_token_id=start)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=d["num_mel_bins"]),
        tokenizer=tokenizer)
    return model.eval(), processor
