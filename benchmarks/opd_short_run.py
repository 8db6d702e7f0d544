"""A short OPD run on CPU with the tiny demo models: does the student move toward the teacher?

Builds the tiny tokenizer, teacher (Qwen3-ASR) and student (GLM-ASR) from espeak-synthesized
multilingual sentences, fine-tunes the teacher well and the student briefly on them (a plain
local SFT loop, so the teacher knows the transcripts and the student does not yet), then runs
OPD steps (``stages.opd.step.opd_step``) with plain AdamW on the student, one fixed batch per
step cycling over the corpus.

Prints one line per OPD step (loss per used position, VUSS, teacher mass, top-1 agreement,
rollout length, stopped ratio) and, before and after OPD, the student's greedy CER against the
references and against the teacher's own greedy transcripts. ``--json`` writes all of it.

Run from the repository root:
    python -m benchmarks.opd_short_run
    python -m benchmarks.opd_short_run --utterances 24 --opd-steps 80 --json /tmp/opd.json

tests/test_opd_step.py imports the helpers (corpus, models, SFT loop, OPD loop) and runs a
reduced version.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import jiwer
import numpy as np
import torch

from stages.data.audio import resample
from stages.data.batching import AudioBatch, Utterance
from stages.data.espeak import Espeak, voice_name
from stages.data.sentences import generate_sentence
from stages.models import load_adapter
from stages.models.base import AsrAdapter
from stages.models.tiny import build_tiny_models
from stages.opd.step import OpdConfig, opd_step, prepare_teacher
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
            duration=audio.size / 16000, text=sentence.text, language=language,
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


def build_models(workdir: Path, texts: Sequence[str], seed: int = 0
                 ) -> tuple[AsrAdapter, AsrAdapter, Path]:
    """Tiny teacher and student (random init) trained on ``texts``' tokenizer; returns
    ``(teacher, student, models_dir)``."""
    manifest = workdir / "corpus.jsonl"
    manifest.write_text("".join(json.dumps({"audio": "x.wav", "text": t}, ensure_ascii=False)
                                + "\n" for t in texts), encoding="utf-8")
    out = workdir / "models"
    build_tiny_models([manifest], out, SPEC, seed=seed)
    return (load_adapter(str(out / "teacher_init")), load_adapter(str(out / "student_init")),
            out)


def build_vocab_map(student: AsrAdapter, teacher: AsrAdapter) -> VocabMap:
    return VocabMap.build(student.tokenizer, teacher.tokenizer,
                          student_vocab_size=student.vocab_size,
                          teacher_vocab_size=teacher.vocab_size,
                          pairs={student.stop_token_id: teacher.stop_token_id})


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
            log=None) -> list[dict[str, float]]:
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


def transcripts(adapter: AsrAdapter, batches: Sequence[AudioBatch], max_new_tokens: int
                ) -> list[str]:
    out = []
    for batch in batches:
        responses = adapter.generate(batch.audios, batch.languages,
                                     max_new_tokens=max_new_tokens)
        out += [adapter.decode_response(r) for r in responses]
    return out


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate with whitespace removed (empty hypotheses count as deletions)."""
    refs = ["".join(r.split()) for r in references]
    hyps = ["".join(h.split()) for h in hypotheses]
    return float(jiwer.cer(refs, hyps))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--teacher-sft-steps", type=int, default=150)
    p.add_argument("--student-sft-steps", type=int, default=100)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--opd-steps", type=int, default=60)
    p.add_argument("--opd-lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the settings and all rows here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    corpus = synthesize_corpus(args.utterances, args.seed)
    batches = [batch_of(corpus[i:i + args.batch_size])
               for i in range(0, len(corpus), args.batch_size)]
    references = [u.text for u in corpus]
    cfg = OpdConfig(top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        teacher, student, _ = build_models(Path(tmp), references, args.seed)
    teacher_sft = sft(teacher, corpus, steps=args.teacher_sft_steps, lr=args.sft_lr,
                      batch_size=args.batch_size, seed=args.seed)
    student_sft = sft(student, corpus, steps=args.student_sft_steps, lr=args.sft_lr,
                      batch_size=args.batch_size, seed=args.seed + 1)
    teacher_text = transcripts(teacher, batches, args.max_new_tokens)
    before = transcripts(student, batches, args.max_new_tokens)
    print(f"SFT losses: teacher {teacher_sft[0]:.3f} -> {teacher_sft[-1]:.3f}, "
          f"student {student_sft[0]:.3f} -> {student_sft[-1]:.3f}")
    print(f"{'step':>4} {'loss':>7} {'vuss':>6} {'t_mass':>6} {'top1':>6} {'len':>5} "
          f"{'stop':>5} {'s':>5}")

    def log(row):
        print(f"{row['step']:>4} {row['loss']:7.4f} {row['vuss']:6.2f} "
              f"{row['teacher_mass']:6.3f} {row['top1_agree']:6.3f} {row['rollout_len']:5.1f} "
              f"{row['stopped']:5.2f} {row['seconds']:5.2f}", flush=True)

    rows = run_opd(student, teacher, build_vocab_map(student, teacher), batches, cfg,
                   steps=args.opd_steps, lr=args.opd_lr, log=log)
    after = transcripts(student, batches, args.max_new_tokens)
    summary = {
        "teacher_cer_vs_reference": cer(references, teacher_text),
        "student_cer_vs_reference_before": cer(references, before),
        "student_cer_vs_reference_after": cer(references, after),
        "student_cer_vs_teacher_before": cer(teacher_text, before),
        "student_cer_vs_teacher_after": cer(teacher_text, after),
        "wall_seconds": time.perf_counter() - start,
    }
    n = max(1, min(5, len(rows) // 4))

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    for key in ("loss", "vuss", "teacher_mass", "top1_agree"):
        summary[f"{key}_first{n}"] = mean(key, rows[:n])
        summary[f"{key}_last{n}"] = mean(key, rows[-n:])
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) and math.isfinite(value)
              else f"{key}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {**vars(args), "json": str(args.json)},
                                         "opd": asdict(cfg), "rows": rows, "summary": summary,
                                         "sft": {"teacher": teacher_sft, "student": student_sft},
                                         "examples": [{"reference": r, "teacher": t,
                                                       "before": b, "after": a}
                                                      for r, t, b, a in zip(
                                                          references, teacher_text, before,
                                                          after, strict=True)][:8]},
                                        ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
