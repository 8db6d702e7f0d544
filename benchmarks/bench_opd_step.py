"""Time one real-size OPD step with random weights: phases, tokens/s and peak memory.

The shapes follow the paper's setting: a GLM-ASR-style student with a Qwen2-0.5B-size language
model (896 hidden, 24 layers, 14 heads, 2 KV heads, 4864 FFN) behind a Whisper-small-size encoder
(768 hidden, 12 layers), a Qwen3-ASR-1.7B-size teacher (2048 hidden, 28 layers, 16 heads, 8 KV
heads, 6144 FFN; 1024-wide 24-layer audio encoder), a 151,936-wide vocabulary, batch 40 of 10 s
clips and 64 new tokens. The models are built with the same code as the demo's tiny models
(stages.demo.tiny) and used through the pipeline's adapters, FSDP2 wrapping (bf16 compute, fp32
master weights and reduction for the student; frozen bf16 teacher, not sharded) and OPD step.

Weights are random, so rollouts never stop and always run the full 64 tokens (the worst case).
The tokenizer is the small demo BPE; ids past it are blocked exactly as a real checkpoint's unused
embedding rows are, so every tensor has the full 151,936 width.

After the steps, in the same run and on the same batch, the project's rollout (decoding copy,
static cache, compiled step on CUDA) is timed next to plain transformers ``generate`` on the same
unsharded bf16 student with its default dynamic cache and with a static cache: the ratio is the
figure that carries across machines.

Several GPUs: ``torchrun --nproc_per_node N benchmarks/bench_opd_step.py`` (--batch clips per
GPU); rank 0 builds the models into --workdir, the others load them; every rank prints its own
phase breakdown and rank 0 writes all of them to --json.

    python benchmarks/bench_opd_step.py --json opd_step.json            # real size, needs CUDA
    python benchmarks/bench_opd_step.py --small --batch 2 --steps 1     # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from stages.data.batching import AudioBatch, Utterance
from stages.demo.sentences import LANGUAGES, generate_sentence
from stages.demo.tiny import build_student, build_teacher, resolve_spec, save_dir, train_tokenizer
from stages.demo.tiny_whisper import build_whisper, train_whisper_tokenizer
from stages.models import load_adapter
from stages.opd.config import OpdConfig
from stages.opd.rollout import decoding_copy, rollout
from stages.opd.step import opd_step, prepare_teacher
from stages.opd.vocab import build_vocab_map
from stages.train import OptimizerConfig, build_optimizer, init_distributed, shard_model
from stages.train.distributed import barrier, gather_objects

VOCAB = 151_936
REAL_SPEC = {
    "vocab_multiple": VOCAB, "num_mel_bins": 128, "chunk_seconds": 10, "max_positions": 4096,
    "teacher": {"hidden_size": 2048, "layers": 28, "heads": 16, "kv_heads": 8,
                "intermediate_size": 6144, "audio_hidden_size": 1024, "audio_layers": 24,
                "audio_heads": 16, "audio_ffn_size": 4096, "audio_conv_channels": 480},
    "student": {"hidden_size": 896, "layers": 24, "heads": 14, "kv_heads": 2,
                "intermediate_size": 4864, "audio_hidden_size": 768, "audio_layers": 12,
                "audio_heads": 12},
}
SMALL_SPEC = {"vocab_multiple": 4096, "num_mel_bins": 128, "chunk_seconds": 10,
              "max_positions": 4096}


# Whisper pair (--pair whisper): a Whisper-large-v3-size teacher (1.55 B) and a
# Whisper-small-size student (244 M), one 51,866-wide vocabulary.
WHISPER_REAL = {
    "teacher": {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32, "heads": 20,
                "ffn": 5120, "num_mel_bins": 128, "vocab_multiple": 51_866},
    "student": {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "heads": 12,
                "ffn": 3072, "num_mel_bins": 80, "vocab_multiple": 51_866},
}
WHISPER_SMALL = {"teacher": {"d_model": 96}, "student": {}}
PAIRS = ("qwen3_glm", "whisper")


def device_and_models(workdir: Path, small: bool, pair: str = "qwen3_glm"
                      ) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a single-process benchmark runs in (CUDA and bf16 when there is a
    GPU), with the models built into ``workdir`` unless they are there already."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (workdir / "teacher").is_dir():
        build_pair(pair, small, workdir)
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def build_pair(pair: str, small: bool, workdir: Path) -> tuple[Path, Path]:
    """``qwen3_glm``: the Qwen3-ASR teacher and GLM-ASR student of the module docstring;
    ``whisper``: two Whispers (:data:`WHISPER_REAL`). ``small``: CPU smoke-check sizes."""
    if pair == "whisper":
        tokenizer = train_whisper_tokenizer(corpus_text(), 1536)
        dims = WHISPER_SMALL if small else WHISPER_REAL
        for seed, role in enumerate(("teacher", "student")):
            save_dir(workdir / role, *build_whisper(tokenizer, dims[role], seed=seed))
        return workdir / "teacher", workdir / "student"
    return build_models(resolve_spec(SMALL_SPEC if small else REAL_SPEC), workdir)


def corpus_text(count: int = 2000) -> list[str]:
    rng = np.random.default_rng(0)
    return [generate_sentence(LANGUAGES[i % len(LANGUAGES)], rng).text for i in range(count)]


def build_models(spec: dict, workdir: Path) -> tuple[Path, Path]:
    tokenizer = train_tokenizer(corpus_text(), 1536)
    teacher, teacher_processor = build_teacher(tokenizer, spec, seed=0)
    save_dir(workdir / "teacher", teacher, teacher_processor)
    del teacher
    student, student_processor = build_student(tokenizer, spec, seed=1)
    save_dir(workdir / "student", student, student_processor)
    return workdir / "teacher", workdir / "student"


def synthetic_batch(batch: int, seconds: float) -> AudioBatch:
    rng = np.random.default_rng(1)
    audios = [(0.05 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32)
              for _ in range(batch)]
    languages = ["zh" if i % 2 == 0 else "en" for i in range(batch)]
    utts = [Utterance(id=f"u{i}", audio="", duration=seconds, language=languages[i])
            for i in range(batch)]
    return AudioBatch(utts, audios)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, function, repeats: int) -> tuple[float, object]:
    """(median seconds of ``repeats`` calls after one warm-up call, the last result)."""
    function()
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = function()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare_rollouts(student, batch: AudioBatch, max_new_tokens: int, device: torch.device,
                     repeats: int) -> dict:
    """The project's rollout next to plain transformers generate (dynamic and static cache) on
    the same unsharded student weights and batch."""
    plain = decoding_copy(student)  # the unsharded compute-dtype copy the rollout decodes on
    inputs = {k: v for k, v in plain.build_batch(batch.audios, batch.languages).inputs.items()
              if k != "position_ids"}

    def hf(cache):
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=plain.stop_token_id,
                                  pad_token_id=plain.pad_token_id, cache_implementation=cache)
        with torch.no_grad():
            return plain._generate(inputs, generation_config=config)  # the family's generate

    # Fresh clip arrays per call (a copy, ~3 ms for 40 clips): encoding is timed, as in a step.
    ours, roll = timed(device, lambda: rollout(student, [a.copy() for a in batch.audios],
                                               batch.languages, max_new_tokens=max_new_tokens),
                       repeats)
    dynamic, _ = timed(device, lambda: hf(None), repeats)
    static, _ = timed(device, lambda: hf("static"), repeats)
    tokens = sum(roll.lengths)
    return {"project_rollout_s": ours, "hf_generate_dynamic_s": dynamic,
            "hf_generate_static_s": static, "rollout_tokens": tokens,
            "ratio_to_static": ours / static, "ratio_to_dynamic": ours / dynamic,
            "ms_per_token_step_static": 1000 * static / max_new_tokens}


COLLECTIVES = {"all_gather": ("allgather", "all_gather"),
               "reduce_scatter": ("reducescatter", "reduce_scatter"),
               "all_reduce": ("allreduce", "all_reduce")}


def collective_times(events) -> dict[str, float]:
    """Milliseconds of GPU time in NCCL kernels per collective (FSDP2's all-gathers before each
    block's forward and backward, its reduce-scatters of gradients), from profiler averages."""
    totals = dict.fromkeys(COLLECTIVES, 0.0)
    for event in events:
        name = event.key.lower()
        # The kernels only: the host's `nccl:_all_gather_base` record carries the same GPU time.
        if not name.startswith(("nccldevkernel", "ncclkernel")):
            continue
        for kind, spellings in COLLECTIVES.items():
            if any(spelling in name for spelling in spellings):
                totals[kind] += event.self_device_time_total / 1000
                break
    return totals


def profile_step(student, teacher, vocab_map, batch: AudioBatch, cfg: OpdConfig, optimizer,
                 path: Path, rank: int) -> dict:
    """One more step under torch.profiler; the operators with the most self time on the host
    and on the GPU go to ``path`` (rank 0; other ranks add ``.rank<k>``). Returns the step's
    wall time and its GPU time in collectives (ms)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    step_batch = AudioBatch(batch.utterances, [a.copy() for a in batch.audios])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        loss_sum, positions, _ = opd_step(student, teacher, vocab_map, step_batch, cfg)
        (loss_sum / max(positions, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(student.device)
        wall = time.perf_counter() - start
    table = prof.key_averages()
    sections = [table.table(sort_by="self_cpu_time_total", row_limit=30)]
    if torch.cuda.is_available():
        sections.append(table.table(sort_by="self_cuda_time_total", row_limit=30))
    target = path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")
    target.write_text("\n\n".join(sections))
    return {"profiled_step_s": wall, "collectives_ms": collective_times(table)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=40, help="clips per rank")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--reshard-during-decode", action="store_true",
                   help="decode on the sharded model itself, re-gathering every step")
    p.add_argument("--compare-repeats", type=int, default=3,
                   help="timed calls of each decoder in the side-by-side (0: skip it)")
    p.add_argument("--small", action="store_true", help="tiny default sizes (CPU smoke check)")
    p.add_argument("--pair", choices=PAIRS, default="qwen3_glm",
                   help="teacher and student: Qwen3-ASR-1.7B-size and GLM-ASR-0.6B-size, or "
                        "Whisper-large-v3-size and Whisper-small-size")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_models"),
                   help="where rank 0 builds the models (removed at the end unless --keep)")
    p.add_argument("--keep", action="store_true",
                   help="keep the built models for the next benchmark (bench_transcribe)")
    p.add_argument("--json", type=Path, help="write the results here (rank 0)")
    p.add_argument("--profile", type=Path,
                   help="also profile one more step; operator tables (host, GPU) to this file, "
                        "its GPU time in NCCL collectives to --json (per rank)")
    args = p.parse_args()

    env = init_distributed()
    device = env.device
    t0 = time.perf_counter()
    if env.is_main and not (args.workdir / "student").is_dir():  # kept by an earlier --keep
        build_pair(args.pair, args.small, args.workdir)
    barrier()
    build_seconds = time.perf_counter() - t0
    teacher_dir, student_dir = args.workdir / "teacher", args.workdir / "student"
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = prepare_teacher(load_adapter(str(teacher_dir), device=device, dtype=compute_dtype))
    student = load_adapter(str(student_dir), device=device, dtype=torch.float32)
    barrier()
    if env.is_main and not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    params = {"teacher": sum(p.numel() for p in teacher.model.parameters()),
              "student": sum(p.numel() for p in student.model.parameters())}
    if env.is_main:
        print(f"built in {build_seconds:.0f} s; parameters: teacher "
              f"{params['teacher'] / 1e9:.2f} B, student {params['student'] / 1e9:.3f} B; "
              f"{env.world_size} rank(s)", file=sys.stderr)
    shard_model(student.model, env)
    student.model.train()
    optimizer = build_optimizer(student.model, OptimizerConfig(lr=1e-6, weight_decay=0.005))
    vocab_map = build_vocab_map(student, teacher).to(device)
    cfg = OpdConfig(top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                    reshard_during_decode=args.reshard_during_decode)
    batch = synthetic_batch(args.batch, args.seconds)

    rows = []
    for step in range(args.steps + 1):
        # Fresh clip arrays, as a training step gets: the adapters keep a clip's encoding only
        # while its array lives, so encoding is timed in every step.
        step_batch = AudioBatch(batch.utterances, [a.copy() for a in batch.audios])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start = time.perf_counter()
        loss_sum, positions, stats = opd_step(student, teacher, vocab_map, step_batch, cfg)
        sync(device)
        t_forward = time.perf_counter()
        (loss_sum / max(positions, 1)).backward()
        sync(device)
        t_backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        end = time.perf_counter()
        row = {
            "rank": env.rank,
            "step": step,
            "total_s": end - start,
            "rollout_s": stats["time_rollout"],
            "teacher_s": stats["time_teacher"],
            "student_forward_s": stats["time_student"],
            "loss_forward_s": stats["time_loss"],
            "backward_s": t_backward - t_forward,
            "optimizer_s": end - t_backward,
            "response_tokens": stats["tokens"],
            "tokens_per_s": stats["tokens"] / (end - start),
            "positions": positions,
            "vuss": stats["vuss_sum"] / max(stats["vuss_count"], 1),
            "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if device.type == "cuda" else None),
        }
        print(json.dumps(row), file=sys.stderr)
        if step > 0:  # step 0 warms up kernels, compilation and the allocator
            rows.append(row)

    profiled = None
    if args.profile:
        profiled = profile_step(student, teacher, vocab_map, batch, cfg, optimizer, args.profile,
                                env.rank)
        print(json.dumps({"rank": env.rank, **profiled}), file=sys.stderr)
    summary = {key: statistics.median(r[key] for r in rows)
               for key in rows[0] if key not in ("step", "rank") and rows[0][key] is not None}
    comparison = None
    if args.compare_repeats > 0 and not args.reshard_during_decode:
        comparison = compare_rollouts(student, batch, args.max_new_tokens, device,
                                      args.compare_repeats)
        print(json.dumps({"rank": env.rank, **comparison}), file=sys.stderr)
    per_rank = gather_objects({"rank": env.rank, "median": summary, "steps": rows,
                               "rollout_comparison": comparison, "profile": profiled})
    if env.is_main:
        result = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "world_size": env.world_size,
            "batch_per_rank": args.batch, "seconds": args.seconds,
            "max_new_tokens": args.max_new_tokens, "top_k": args.top_k,
            "reshard_during_decode": args.reshard_during_decode,
            "vocab": student.vocab_size, "parameters": params,
            "median_of_steps": len(rows), "median": summary, "rollout_comparison": comparison,
            "ranks": per_rank,
        }
        print(json.dumps({"median": summary, "rollout_comparison": comparison}, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
