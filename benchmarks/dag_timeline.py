"""Every job's start and end in a Snakemake run, read from its log (1 s resolution).

    python -m benchmarks.dag_timeline results/gpu_study_out/snakemake.log [--gpu-log GPUS]

Prints `start end seconds job` from the DAG's first job, sorted by start, then the wall time.
With --gpu-log (lines `t <epoch>` followed by nvidia-smi's `pid, gpu_uuid, used_memory` rows,
as benchmarks/gpu_study.sh's callers record them) it adds how many processes each GPU held,
at most and on average over the samples that had any.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


def parse(log: Path) -> list[tuple[float, float, str]]:
    """(start, end, name) per finished job, in seconds since the log's first time stamp."""
    started: dict[str, tuple[datetime, str]] = {}
    jobs = []
    now = first = None
    rule = None
    for line in log.read_text().splitlines():
        if stamp := STAMP.match(line):
            now = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
        elif rule_match := START.match(line):
            rule, jobid = rule_match.group(1), None
        elif rule and (match := JOBID.match(line)):
            jobid = match.group(1)
            started[jobid] = (now, rule)
        elif rule and (match := WILDCARDS.match(line)):
            started[jobid] = (started[jobid][0], f"{rule} {match.group(1)}")
        elif match := FINISHED.match(line):
            begin, name = started.pop(match.group(1))
            jobs.append(((begin - first).total_seconds(), (now - first).total_seconds(), name))
            rule = None
    return sorted(jobs)


def gpu_occupancy(path: Path) -> dict[str, tuple[int, float]]:
    """Per GPU uuid: the most processes seen at once, and the mean over samples with any."""
    samples: list[Counter] = []
    for line in path.read_text().splitlines():
        if line.startswith("t "):
            samples.append(Counter())
        elif samples and line.count(",") == 2:
            samples[-1][line.split(",")[1].strip()] += 1
    gpus = sorted({gpu for sample in samples for gpu in sample})
    result = {}
    for gpu in gpus:
        counts = [sample[gpu] for sample in samples if sample[gpu]]
        result[gpu] = (max(counts), sum(counts) / len(counts))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path, help="a snakemake log (stdout and stderr of the run)")
    p.add_argument("--gpu-log", type=Path, help="nvidia-smi compute-apps samples")
    args = p.parse_args()
    jobs = parse(args.log)
    print(f"{'start':>5} {'end':>5} {'s':>4}  job")
    for start, end, name in jobs:
        print(f"{start:5.0f} {end:5.0f} {end - start:4.0f}  {name}")
    if jobs:
        print(f"{len(jobs)} jobs, {max(end for _, end, _ in jobs):.0f} s from the first start "
              "to the last end")
    if args.gpu_log:
        for gpu, (most, mean) in gpu_occupancy(args.gpu_log).items():
            print(f"{gpu}: at most {most} processes, {mean:.1f} on average while in use")


if __name__ == "__main__":
    main()
