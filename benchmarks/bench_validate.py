"""Throughput of the validate stage: lines per second with 1 and with 2 worker processes.

Builds a manifest of N lines (default 100000) over a few hundred short real WAV files (noise-like
tones, mostly 16 kHz mono, every tenth 44.1 kHz stereo). Files repeat, each time as a different
segment, so every derived id is distinct and every line is valid; each line still opens and
decodes its segment, as for a manifest of distinct files. The stage runs as a subprocess
(`python -m stages.validate`), so the figure includes interpreter start and report writing.

    .venv/bin/python benchmarks/bench_validate.py --lines 100000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

LANGUAGE_CYCLE = ("zh", "en", "de", "fr", None)


def make_audio(folder: Path, files: int, seed: int = 0) -> list[str]:
    """``files`` WAVs of 1.5-2.5 s; returns their paths relative to ``folder``."""
    rng = np.random.default_rng(seed)
    names = []
    for index in range(files):
        stereo = index % 10 == 9
        rate = 44100 if stereo else 16000
        frames = int(rate * rng.uniform(1.5, 2.5))
        t = np.arange(frames) / rate
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
        wave += 0.05 * rng.standard_normal(frames)
        data = np.stack([wave, wave[::-1]], axis=1) if stereo else wave
        name = f"wav/spk{index % 20:02d}/utt{index:04d}.wav"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / name), data.astype(np.float32), rate, subtype="PCM_16")
        names.append(name)
    return names


def make_manifest(path: Path, names: list[str], lines: int) -> None:
    """Line i uses file i mod K as the r-th segment of it (r = i div K); (begin, end) differ
    for every r below 160000, so derived ids never collide. The longest end is 1.3 s."""
    with path.open("w", encoding="utf-8") as handle:
        for index in range(lines):
            repeat, name = divmod(index, len(names))
            begin = (repeat % 400) / 1000
            end = begin + 0.5 + (repeat // 400) / 1000
            row = {"audio": names[name], "text": f"utterance number {index}", "task": "asr",
                   "begin_time": begin, "end_time": round(end, 3)}
            language = LANGUAGE_CYCLE[index % len(LANGUAGE_CYCLE)]
            if language:
                row["language"] = language
            handle.write(json.dumps(row) + "\n")


def run_stage(manifest: Path, workers: int, out: Path) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the stage and its workers, report) of one run."""
    cmd = [sys.executable, "-m", "stages.validate", "--input", str(manifest),
           "--output", str(out / f"valid_w{workers}.jsonl"),
           "--report", str(out / f"report_w{workers}.json"), "--workers", str(workers),
           "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, json.loads((out / f"report_w{workers}.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=100_000, help="manifest lines (default 100000)")
    p.add_argument("--files", type=int, default=300, help="distinct WAV files (default 300)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="worker counts to time (default: 1 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per worker count; the fastest is reported (default 1)")
    p.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a "
                                             "temporary folder, removed afterwards)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        names = make_audio(folder, args.files)
        manifest = folder / "manifest.jsonl"
        make_manifest(manifest, names, args.lines)
        print(f"built {args.lines} lines over {args.files} files in "
              f"{time.perf_counter() - start:.1f} s ({manifest})", file=sys.stderr)
        print(f"{'workers':>7} {'wall s':>8} {'lines/s':>9} {'cpu s':>7} {'cpu us/line':>11}")
        for workers in args.workers:
            runs = [run_stage(manifest, workers, folder / "out") for _ in range(args.repeat)]
            elapsed, cpu, report = min(runs, key=lambda run: run[0])
            if report["valid"] != args.lines:
                raise SystemExit(f"expected {args.lines} valid lines, got {report['valid']}: "
                                 f"{report['reason_counts']}")
            print(f"{workers:>7} {elapsed:>8.2f} {args.lines / elapsed:>9.0f} {cpu:>7.2f} "
                  f"{cpu / args.lines * 1e6:>11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
