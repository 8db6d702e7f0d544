"""Time forward+backward of union_topk_kl at the reference size, against a naive per-row loop.

Reference size (DESIGN §10): per-device batch 40 × 64 rollout tokens = 2,560 positions, Qwen
vocabulary 151,936, top-k 32. The teacher is made correlated with the student so the union size
is realistic (between k and 2k), and a small fraction of teacher entries is -inf (unmapped or
blocked tokens).

Prints the median milliseconds per call after warm-up, peak CUDA memory (when on a GPU), the
valid union size, and the naive loop's time measured on a subset of rows and extrapolated
linearly to all positions (it is labelled as such), plus the largest difference between the two
losses on that subset as a check.

Run from the repository root (``-m`` puts it on the import path, so the package ``stages``
needs no install):
    python -m benchmarks.bench_loss                      # cuda if present, reference size
    python -m benchmarks.bench_loss --device cpu --positions 256 --naive-rows 16
    python -m benchmarks.bench_loss --dtype bfloat16 --json results/bench_loss.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from stages.opd.loss import union_topk_kl


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto)")
    p.add_argument("--positions", type=int, default=40 * 64, help="rows N (default 2560)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary V (default 151936)")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of both inputs (default float32, what the OPD step feeds)")
    p.add_argument("--unmapped-fraction", type=float, default=0.001,
                   help="fraction of teacher entries set to -inf (default 0.001)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--naive-rows", type=int, default=64,
                   help="rows timed for the naive loop, extrapolated to --positions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return p.parse_args()


def make_inputs(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.positions, args.vocab)
    student = torch.randn(shape, generator=g, device=device) * 3
    teacher = student + torch.randn(shape, generator=g, device=device) * 2
    teacher = torch.log_softmax(teacher, dim=-1)
    unmapped = torch.rand(shape, generator=g, device=device) < args.unmapped_fraction
    teacher.masked_fill_(unmapped, float("-inf"))
    return student.to(dtype).requires_grad_(True), teacher.to(dtype)


def naive_union_topk_kl(student: torch.Tensor, teacher: torch.Tensor, top_k: int,
                        temperature: float) -> torch.Tensor:
    """The same formula one row at a time (sum over used rows; τ² applied)."""
    total = student.new_zeros((), dtype=torch.float32)
    for i in range(student.shape[0]):
        t_row = teacher[i].float()
        s_row = student[i].float()
        finite = torch.isfinite(t_row)
        k = min(top_k, int(finite.sum()))
        t_top = torch.nonzero(finite).reshape(-1)[t_row[finite].topk(k).indices]
        s_top = s_row.detach().topk(min(top_k, s_row.numel())).indices
        union = torch.unique(torch.cat([t_top, s_top]))
        union = union[torch.isfinite(t_row[union]) & torch.isfinite(s_row[union].detach())]
        if union.numel() < 2:
            continue
        log_p = torch.log_softmax(t_row[union] / temperature, dim=0)
        log_q = torch.log_softmax(s_row[union] / temperature, dim=0)
        total = total + (log_p.exp() * (log_p - log_q)).sum()
    return temperature ** 2 * total


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    args = parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    student, teacher = make_inputs(args, device, dtype)

    def vectorized_step():
        student.grad = None
        loss, stats = union_topk_kl(student, teacher, top_k=args.top_k,
                                    temperature=args.temperature)
        loss.backward()
        return loss, stats

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        inputs_bytes = torch.cuda.memory_allocated(device)
    times = timed(vectorized_step, device, args.warmup, args.repeats)
    loss, stats = vectorized_step()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "positions": args.positions, "vocab": args.vocab,
        "top_k": args.top_k, "dtype": args.dtype, "torch": torch.__version__,
        "vectorized_ms_median": statistics.median(times), "vectorized_ms_min": min(times),
        "loss": loss.item(), "vuss": float(stats["vuss"]),
        "used_positions": int(stats["positions"]),
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["cuda_peak_mib"] = peak / 2**20
        result["cuda_peak_over_inputs_mib"] = (peak - inputs_bytes) / 2**20

    rows = min(args.naive_rows, args.positions)
    sub_student = student.detach()[:rows].clone().requires_grad_(True)
    sub_teacher = teacher[:rows]

    def naive_step():
        sub_student.grad = None
        naive_union_topk_kl(sub_student, sub_teacher, args.top_k, args.temperature).backward()

    naive_times = timed(naive_step, device, 1, max(1, min(args.repeats, 3)))
    naive_ms = statistics.median(naive_times) * args.positions / rows
    check, _ = union_topk_kl(sub_student, sub_teacher, top_k=args.top_k,
                             temperature=args.temperature, reduction="sum")
    reference = naive_union_topk_kl(sub_student, sub_teacher, args.top_k, args.temperature)
    result.update(naive_rows_timed=rows, naive_ms_extrapolated=naive_ms,
                  speedup=naive_ms / result["vectorized_ms_median"],
                  naive_abs_diff=abs(check.item() - reference.item()))

    print(f"device {result['device']} ({result['threads']} CPU threads), torch {torch.__version__}")
    print(f"N={args.positions} V={args.vocab} k={args.top_k} dtype={args.dtype}: "
          f"VUSS {result['vuss']:.2f}, used {result['used_positions']}, loss {result['loss']:.4f}")
    print(f"union_topk_kl forward+backward: {result['vectorized_ms_median']:.2f} ms median "
          f"(min {result['vectorized_ms_min']:.2f}) over {args.repeats} calls after "
          f"{args.warmup} warm-up")
    if "cuda_peak_mib" in result:
        print(f"CUDA peak memory {result['cuda_peak_mib']:.0f} MiB "
              f"({result['cuda_peak_over_inputs_mib']:.0f} MiB over the inputs)")
    print(f"naive per-row loop: {naive_ms:.1f} ms per call, EXTRAPOLATED from {rows} timed rows "
          f"to {args.positions} ({result['speedup']:.1f}x slower than vectorized); "
          f"|loss difference| on those rows {result['naive_abs_diff']:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
