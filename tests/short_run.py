"""A short single-process OPD run on in-memory clips, and its pieces.

No manifests, process group or FSDP: espeak-synthesized sentences held in memory, the tiny demo
models (``stages.demo.tiny``) built from their texts, a plain supervised fine-tuning loop (so a
teacher can be made to know the transcripts) and a plain OPD loop over
:func:`stages.opd.step.opd_step` with AdamW on the student. ``benchmarks/opd_short_run.py`` runs
it from the command line; the OPD tests build their models and batches with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stages.common.jsonl import write_jsonl
from stages.data.audio import TARGET_SAMPLE_RATE, resample
from stages.data.batching import AudioBatch, Utterance
from stages.demo.espeak import Espeak, voice_name
from stages.demo.sentences import generate_sentence
from stages.demo.tiny import build_tiny_models
from stages.models.base import AsrAdapter
from stages.opd.config import OpdConfig
from stages.opd.step import opd_step, prepare_teacher
from stages.opd.vocab import VocabMap

LANGUAGES = ("zh", "en", "ja", "ko", "de", "fr")
# Small enough that SFT and OPD take seconds on one CPU thread.
SPEC = {
    "vocab_size": 600, "vocab_multiple": 64, "chunk_seconds": 4,
    "teacher": {"hidden_size": 128, "layers": 2, "heads": 4, "kv_heads": 2,
                "intermediate_size": 256, "audio_hidden_size": 128, "audio_layers": 2,
                "audio_heads": 4, "audio_ffn_size": 256, "audio_conv_channels": 32},
    "student": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 2,
                "audio_heads": 4},
}


def synthesize_corpus(count: int, seed: int, languages: Sequence[str] = LANGUAGES
                      ) -> list[Utterance]:
    """``count`` espeak sentences cycling over ``languages``; each Utterance holds its 16 kHz
    clip in ``row["samples"]`` (see :func:`batch_of`)."""
    espeak = Espeak()
    rng = np.random.default_rng(seed)
    utterances = []
    for index in range(count):
        language = languages[index % len(languages)]
        sentence = generate_sentence(language, rng)
        samples, rate = espeak.synthesize(sentence.text, voice_name(language), seed=index)
        audio = resample(samples, rate)
        utterances.append(Utterance(
            id=f"utt{index:03d}", audio=f"<espeak {language} {index}>",
            duration=audio.size / TARGET_SAMPLE_RATE, text=sentence.text, language=language,
            row={"samples": audio}))
    return utterances


def batch_of(utterances: Sequence[Utterance], *, keep_language: Sequence[bool] | None = None
             ) -> AudioBatch:
    """An AudioBatch of in-memory clips; ``keep_language`` False rows lose their manifest
    language (as rows of a manifest without ``language``)."""
    rows = []
    for index, utt in enumerate(utterances):
        keep = keep_language is None or keep_language[index]
        rows.append(utt if keep else Utterance(utt.id, utt.audio, utt.duration, utt.text, None,
                                               row=utt.row))
    return AudioBatch(rows, [u.row["samples"] for u in utterances])


def build_models(workdir: str | Path, texts: Sequence[str], *, seed: int = 0,
                 spec: dict | None = None) -> Path:
    """The tiny teacher and student (random init, ``spec`` default :data:`SPEC`) with a
    tokenizer trained on ``texts``, saved under ``workdir/models`` (``teacher_init/``,
    ``student_init/``, ``tokenizer/``); returns that folder."""
    workdir = Path(workdir)
    manifest = workdir / "corpus.jsonl"  # build_tiny_models reads its texts from manifests
    write_jsonl(manifest, ({"audio": "x.wav", "text": text} for text in texts))
    out = workdir / "models"
    build_tiny_models([manifest], out, SPEC if spec is None else spec, seed=seed)
    return out


def sft(adapter: AsrAdapter, utterances: Sequence[Utterance], *, steps: int, lr: float,
        batch_size: int, seed: int = 0) -> list[float]:
    """Plain supervised fine-tuning (AdamW, shuffled mini-batches); returns the losses.
    Leaves the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(adapter.model.parameters(), lr=lr)
    adapter.model.train()
    losses = []
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(utterances), generator=generator).tolist()
        picked = [utterances[i] for i in order[:batch_size]]
        order = order[batch_size:]
        inputs = adapter.sft_inputs([u.row["samples"] for u in picked],
                                    [u.language for u in picked], [u.text for u in picked])
        loss = adapter.model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    adapter.model.eval()
    return losses


def run_opd(student: AsrAdapter, teacher: AsrAdapter, vocab_map: VocabMap,
            batches: Sequence[AudioBatch], cfg: OpdConfig, *, steps: int, lr: float,
            log: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """``steps`` OPD steps with AdamW on the student, cycling over ``batches``; the loss is
    normalized by the step's used positions (one rank, one micro-batch). Returns per-step rows:
    ``loss`` (per used position), ``vuss``, ``teacher_mass``, ``top1_agree``, ``rollout_len``,
    ``stopped``, ``nonempty``, ``positions``, ``seconds``."""
    prepare_teacher(teacher)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=lr)
    rows = []
    for step in range(steps):
        start = time.perf_counter()
        student.model.train()
        loss_sum, positions, stats = opd_step(student, teacher, vocab_map,
                                              batches[step % len(batches)], cfg)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / max(positions, 1)).backward()
        optimizer.step()
        used = max(positions, 1)
        row = {"step": step, "loss": float(loss_sum.detach()) / used, "positions": positions,
               "vuss": stats["vuss_sum"] / used,
               "opd_valid_topk_mean": stats["opd_valid_topk_mean_sum"] / used,
               "teacher_mass": stats["teacher_mass_sum"] / used,
               "top1_agree": stats["top1_agree_sum"] / used,
               "rollout_len": stats["rollout_len_sum"] / stats["rollout_len_count"],
               "stopped": stats["stopped_sum"] / stats["stopped_count"],
               "nonempty": stats["nonempty_sum"] / stats["nonempty_count"],
               "seconds": time.perf_counter() - start}
        rows.append(row)
        if log is not None:
            log(row)
    student.model.eval()
    return rows
