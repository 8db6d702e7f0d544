"""benchmarks.dag_timeline reads job starts and ends from a Snakemake 9 log."""

from __future__ import annotations

from benchmarks.dag_timeline import gpu_occupancy, parse

# The shape of `snakemake` 9.27's log (one job without wildcards, two overlapping jobs).
LOG = """\
Job stats:
job count
Select jobs to execute...

[Mon Nov 30 16:05:04 2026]
localrule synth_demo:
    output: results/demo/manifests/train.jsonl
    jobid: 2
    threads: 14
Shell command: python -m stages.synth_demo
[Mon Nov 30 16:05:44 2026]
Finished jobid: 2 (Rule: synth_demo)
1 of 3 steps (33%) done

[Mon Nov 30 16:05:44 2026]
rule bootstrap:
    jobid: 7
    wildcards: role=teacher
    threads: 2

[Mon Nov 30 16:05:45 2026]
localrule validate:
    jobid: 4
    wildcards: name=clean
[Mon Nov 30 16:05:47 2026]
Finished jobid: 4 (Rule: validate)
[Mon Nov 30 16:09:44 2026]
Finished jobid: 7 (Rule: bootstrap)
"""


def test_jobs_in_order_of_start_with_their_wildcards(tmp_path):
    log = tmp_path / "snakemake.log"
    log.write_text(LOG)
    assert parse(log) == [(0.0, 40.0, "synth_demo"), (40.0, 280.0, "bootstrap role=teacher"),
                          (41.0, 43.0, "validate name=clean")]


def test_gpu_occupancy_counts_processes_per_gpu(tmp_path):
    samples = tmp_path / "gpus.txt"
    samples.write_text("t 1\n11, GPU-a, 500 MiB\n12, GPU-a, 500 MiB\n13, GPU-b, 1 MiB\n"
                       "t 2\n11, GPU-a, 500 MiB\nt 3\n")
    assert gpu_occupancy(samples) == {"GPU-a": (2, 1.5), "GPU-b": (1, 1.0)}
