"""Tiny demo models: a byte-level BPE tokenizer, a Qwen3-ASR teacher and a GLM-ASR student.

The embedded demo needs models that train on a laptop CPU in minutes and load exactly like real
checkpoints. Both are built with transformers' own classes from a size spec, randomly initialised
with a seed, and saved as ordinary HF folders (weights, config, generation config, processor with
feature extractor, tokenizer and chat template) that ``AutoModelForSeq2SeqLM`` and
``AutoProcessor`` load offline. They share one tokenizer (same token strings, same ids), trained on
the demo transcripts with the whole byte alphabet, so any language encodes.

Family details that matter downstream:
- Qwen3-ASR projects audio straight to the LM width (audio ``output_dim`` = text hidden size) and
  answers ``language X<asr_text>transcript<|im_end|>``; ``<asr_text>`` is an ordinary (non-special)
  added token so a detected-language header can be generated.
- GLM-ASR merges 4 encoder frames per audio token (audio ``intermediate_size`` = 4 x hidden) and
  its encoder has no padding mask, so its feature extractor cuts audio into fixed windows of
  ``chunk_seconds`` padded to full length: a clip's features never depend on its batch.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    trainers,
)
from torch import nn
from transformers import (
    GenerationConfig,
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    PreTrainedTokenizerFast,
    Qwen3ASRConfig,
    Qwen3ASRFeatureExtractor,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from stages.common.errors import UserError
from stages.common.jsonl import iter_jsonl

# Sizes of the demo models (mirrored under `tiny_models:` in config/config.yaml).
DEFAULT_SPEC: dict[str, Any] = {
    "vocab_size": 1536,      # BPE target size (bytes + merges + special tokens)
    "vocab_multiple": 64,    # embedding rows rounded up to a multiple (logits wider than vocab)
    "num_mel_bins": 80,
    "chunk_seconds": 8,      # student feature window (must be even)
    "max_positions": 2048,
    "teacher": {
        "hidden_size": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate_size": 768,
        "audio_hidden_size": 256, "audio_layers": 4, "audio_heads": 4, "audio_ffn_size": 1024,
        "audio_conv_channels": 64,
    },
    "student": {
        "hidden_size": 128, "layers": 3, "heads": 4, "kv_heads": 2, "intermediate_size": 384,
        "audio_hidden_size": 128, "audio_layers": 3, "audio_heads": 4,
    },
}

# Control tokens of both families (Qwen chat + audio slots; GLM chat + audio slots). All special.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN_AUDIO = {"audio_bos_token": "<|audio_start|>", "audio_token": "<|audio_pad|>",
              "audio_eos_token": "<|audio_end|>"}
GLM_ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
GLM_AUDIO_START, GLM_AUDIO_END = "<|begin_of_audio|>", "<|end_of_audio|>"
GLM_AUDIO_TOKEN = "<|pad|>"
TIMESTAMP = "<timestamp>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, *QWEN_AUDIO.values(), TIMESTAMP,
                  *GLM_ROLES.values(), GLM_AUDIO_START, GLM_AUDIO_END, GLM_AUDIO_TOKEN]
UNSPACED_CHARACTER = r"[\p{Han}\p{Hiragana}\p{Katakana}]"  # one token each at most
ASR_TEXT = "<asr_text>"  # Qwen3-ASR's header end: a normal token, never blocked
STUDENT_INSTRUCTION = "Please transcribe this audio into text"

# Qwen chat format: <|im_start|>role\n...<|im_end|>\n, audio as
# <|audio_start|><|audio_pad|><|audio_end|>.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' -%}{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# GLM-4 chat format: <|role|>\n... with nothing after an assistant turn (generation stops at eos).
GLM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' -%}{{- '<|begin_of_audio|><|pad|><|end_of_audio|>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


# ---- spec ---------------------------------------------------------------------------------------

def resolve_spec(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_SPEC updated with ``overrides`` (nested dicts merge); unknown keys are errors."""
    spec = copy.deepcopy(DEFAULT_SPEC)
    _merge(spec, overrides or {}, "spec")
    if spec["chunk_seconds"] % 2:
        raise UserError(f"tiny-model spec: chunk_seconds must be even (GLM-ASR merges 4 frames "
                        f"after a stride-2 conv), got {spec['chunk_seconds']}")
    for side in ("teacher", "student"):
        s = spec[side]
        for hidden, heads in (("hidden_size", "heads"), ("audio_hidden_size", "audio_heads")):
            if s[hidden] % s[heads]:
                raise UserError(f"tiny-model spec: {side}.{hidden} ({s[hidden]}) must be a "
                                f"multiple of {side}.{heads} ({s[heads]})")
        if s["heads"] % s["kv_heads"]:
            raise UserError(f"tiny-model spec: {side}.heads ({s['heads']}) must be a multiple "
                            f"of {side}.kv_heads ({s['kv_heads']})")
    if spec["vocab_size"] <= 256 + len(SPECIAL_TOKENS) + 1:
        raise UserError(f"tiny-model spec: vocab_size {spec['vocab_size']} leaves no room for "
                        "merges above the 256 bytes and the special tokens")
    return spec


def _merge(base: dict, update: dict, where: str) -> None:
    for key, value in update.items():
        if key not in base:
            raise UserError(f"tiny-model {where}: unknown key {key!r}; known keys: "
                            f"{', '.join(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"tiny-model {where}.{key}: expected a mapping, got {value!r}")
            _merge(base[key], value, f"{where}.{key}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"tiny-model {where}.{key}: expected a positive integer, got "
                            f"{value!r}")
        else:
            base[key] = value


# ---- tokenizer ----------------------------------------------------------------------------------

def corpus_texts(manifests: Sequence[str | Path]) -> list[str]:
    """The ``text`` of every manifest row that has one (TD-pool rows may have none)."""
    texts = []
    for path in manifests:
        for number, row in iter_jsonl(path, hint="run the validate stage on this manifest"):
            text = row.get("text")
            if text is not None and not isinstance(text, str):
                raise UserError(f"{path}:{number}: `text` must be a string, got "
                                f"{type(text).__name__}")
            if text and text.strip():
                texts.append(text)
    if not texts:
        raise UserError(f"no transcripts in {', '.join(map(str, manifests))}: the tokenizer is "
                        "trained on the `text` field; give the train manifest")
    return texts


def _prompt_phrases() -> list[str]:
    """Fixed prompt text both models see, so BPE learns compact pieces for it."""
    return [f"language {name}" for name in LANGUAGE_CODE_TO_NAME.values()] + [STUDENT_INSTRUCTION]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over all 256 bytes plus both families' control tokens."""
    tokenizer = Tokenizer(models.BPE())
    # Chinese characters and kana stand alone before byte-level splitting: text without spaces
    # would otherwise merge into phrase tokens (e.g. 在图书馆, 买了苹果) that are rare in a small
    # corpus and unseen in new sentences, which a tiny model cannot learn to transcribe.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(UNSPACED_CHARACTER), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([*texts, *_prompt_phrases()], trainer)
    tokenizer.add_tokens([AddedToken(ASR_TEXT, special=False, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=IM_END, pad_token=ENDOFTEXT,
        extra_special_tokens=dict(QWEN_AUDIO), padding_side="left")


def _id(tokenizer, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def logit_width(tokenizer, multiple: int) -> int:
    return -(-len(tokenizer) // multiple) * multiple


# ---- models -------------------------------------------------------------------------------------

def init_audio_front_end(audio_tower: nn.Module) -> None:
    """Scale-preserving init of the audio encoder's convolutional front end.

    transformers draws every weight from N(0, 0.02), right for fine-tuning a pretrained model but
    not for a tiny one trained from scratch: three such 3x3 convolutions shrink the mel features
    about a thousandfold, so in Qwen3-ASR's encoder the sinusoidal position embedding added next
    swamps them and the encoder's output hardly depends on the audio (the LM then learns the
    grammar and ignores the sound). Kaiming-normal convolutions (GELU ~ ReLU gain) and a
    fan-in-scaled output projection keep the features at the scale of the position signal.
    """
    for module in audio_tower.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.Linear) and module is getattr(audio_tower, "conv_out", None):
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_teacher(tokenizer, spec: dict[str, Any], seed: int):
    """A tiny Qwen3-ASR (model, processor) with random weights from ``seed``."""
    t = spec["teacher"]
    eos = [_id(tokenizer, ENDOFTEXT), _id(tokenizer, IM_END)]
    pad = _id(tokenizer, ENDOFTEXT)
    config = Qwen3ASRConfig(
        audio_config={
            "num_mel_bins": spec["num_mel_bins"], "d_model": t["audio_hidden_size"],
            "encoder_layers": t["audio_layers"], "encoder_attention_heads": t["audio_heads"],
            "encoder_ffn_dim": t["audio_ffn_size"],
            "downsample_hidden_size": t["audio_conv_channels"],
            "output_dim": t["hidden_size"],  # the projector feeds the LM directly
        },
        text_config={
            "vocab_size": logit_width(tokenizer, spec["vocab_multiple"]),
            "hidden_size": t["hidden_size"], "intermediate_size": t["intermediate_size"],
            "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"],
            "num_key_value_heads": t["kv_heads"], "head_dim": t["hidden_size"] // t["heads"],
            "max_position_embeddings": spec["max_positions"], "tie_word_embeddings": True,
            "bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad,
        },
        audio_token_id=_id(tokenizer, QWEN_AUDIO["audio_token"]),
        timestamp_token_id=_id(tokenizer, TIMESTAMP),
        pad_token_id=pad, eos_token_id=eos, tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ASRForConditionalGeneration(config)
        init_audio_front_end(model.model.audio_tower)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    extractor = Qwen3ASRFeatureExtractor(feature_size=spec["num_mel_bins"])
    processor = Qwen3ASRProcessor(feature_extractor=extractor, tokenizer=tokenizer,
                                  chat_template=QWEN_CHAT_TEMPLATE)
    return model.eval(), processor


def build_student(tokenizer, spec: dict[str, Any], seed: int):
    """A tiny GLM-ASR (model, processor) with random weights from ``seed``."""
    s = spec["student"]
    eos = [_id(tokenizer, ENDOFTEXT), _id(tokenizer, GLM_ROLES["user"])]
    pad = _id(tokenizer, ENDOFTEXT)
    config = GlmAsrConfig(
        audio_config={
            "hidden_size": s["audio_hidden_size"],
            "intermediate_size": 4 * s["audio_hidden_size"],  # 4 frames merged per audio token
            "num_hidden_layers": s["audio_layers"], "num_attention_heads": s["audio_heads"],
            "num_mel_bins": spec["num_mel_bins"],
            "max_position_embeddings": 50 * spec["chunk_seconds"],  # frames after the conv
        },
        text_config={
            "vocab_size": logit_width(tokenizer, spec["vocab_multiple"]),
            "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
            "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
            "num_key_value_heads": s["kv_heads"], "max_position_embeddings": spec["max_positions"],
            # GLM-ASR's defaults carry the real model's eos ids; ours must replace them.
            "bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad,
        },
        audio_token_id=_id(tokenizer, GLM_AUDIO_TOKEN), tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GlmAsrForConditionalGeneration(config)
        init_audio_front_end(model.model.audio_tower)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    extractor = WhisperFeatureExtractor(feature_size=spec["num_mel_bins"],
                                        chunk_length=spec["chunk_seconds"])
    processor = GlmAsrProcessor(feature_extractor=extractor, tokenizer=tokenizer,
                                chat_template=GLM_CHAT_TEMPLATE, audio_token=GLM_AUDIO_TOKEN,
                                default_transcription_prompt=STUDENT_INSTRUCTION)
    return model.eval(), processor


def count_parameters(model) -> dict[str, int]:
    inner = model.model
    return {"total": sum(p.numel() for p in model.parameters()),
            "audio_encoder": sum(p.numel() for p in inner.audio_tower.parameters()),
            "projector": sum(p.numel() for p in inner.multi_modal_projector.parameters()),
            "language_model": sum(p.numel() for p in inner.language_model.parameters())}


def save_dir(target: Path, *parts) -> None:
    """Save model/processor/tokenizer objects into ``target``, replacing it only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for part in parts:
            part.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_tiny_models(manifests: Sequence[str | Path], output_dir: str | Path,
                      spec: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Train the tokenizer, build both models, save ``tokenizer/``, ``teacher_init/`` and
    ``student_init/`` under ``output_dir``; returns a summary (sizes, ids, corpus stats)."""
    spec = resolve_spec(spec)
    output_dir = Path(output_dir)
    texts = corpus_texts(manifests)
    tokenizer = train_tokenizer(texts, spec["vocab_size"])
    teacher, teacher_processor = build_teacher(tokenizer, spec, seed)
    student, student_processor = build_student(tokenizer, spec, seed + 1)
    save_dir(output_dir / "tokenizer", tokenizer)
    save_dir(output_dir / "teacher_init", teacher, teacher_processor)
    save_dir(output_dir / "student_init", student, student_processor)
    return {
        "spec": spec,
        "seed": seed,
        "corpus": {"manifests": [str(m) for m in manifests], "texts": len(texts),
                   "characters": sum(map(len, texts))},
        "tokenizer": {"length": len(tokenizer),
                      "special_tokens": SPECIAL_TOKENS, "normal_added_tokens": [ASR_TEXT]},
        "teacher": {"dir": "teacher_init", "class": type(teacher).__name__,
                    "logit_width": teacher.config.text_config.vocab_size,
                    "parameters": count_parameters(teacher)},
        "student": {"dir": "student_init", "class": type(student).__name__,
                    "logit_width": student.config.text_config.vocab_size,
                    "parameters": count_parameters(student)},
    }
