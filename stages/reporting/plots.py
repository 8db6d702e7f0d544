"""Report figures (PNG). Figures are built with matplotlib's object API (``Figure``, rendered by
the Agg canvas): no display, no pyplot global state.

Every function always writes its file, so a workflow can declare it as an output: without data
the figure says so instead of being left out. Missing error-rate cells are marked on the axis
("missing"), never drawn as zero-height bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from stages.common.jsonl import atomic_writer
from stages.reporting.results import CURVES, ResultsTable, curve

DPI = 120


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def error_rates(table: ResultsTable, path: str | Path) -> None:
    """Grouped bars: presets on the x axis, one bar per model (the mean over seeds), with the
    bootstrap interval as an error bar and each seed's rate as a dot; missing cells are
    labelled."""
    width_per_group = max(1.0, 0.25 * len(table.models))
    fig = Figure(figsize=(max(6.0, width_per_group * len(table.presets) + 2), 4.2))
    ax = fig.subplots()
    if not table.models or not table.presets:
        _no_data(ax, "no evaluation results")
        _save(fig, path)
        return
    x = np.arange(len(table.presets))
    width = 0.8 / len(table.models)
    tops = [v for m, _ in table.models for p in table.presets
            if (v := table.rate_percent(m, p)) is not None]
    tops += [100 * c.interval[1] for c in table.cells.values() if c.interval is not None]
    tops += [100 * r for c in table.cells.values() for r in c.seed_rates]
    top = max(tops, default=1.0) or 1.0
    for index, (name, label) in enumerate(table.models):
        offset = x - 0.4 + width * (index + 0.5)
        values = [table.rate_percent(name, p) for p in table.presets]
        present = [(o, v, table.cells.get((name, p)))
                   for o, v, p in zip(offset, values, table.presets, strict=True)
                   if v is not None]
        # Asymmetric error bars: the percentile interval need not be centred on the mean.
        errors = np.array([[v - 100 * c.interval[0], 100 * c.interval[1] - v]
                           if c is not None and c.interval is not None else [0.0, 0.0]
                           for _, v, c in present]).reshape(-1, 2).T
        whiskers = bool(errors.any())
        bars = ax.bar([o for o, _, _ in present], [v for _, v, _ in present], width,
                      label=label, yerr=errors if whiskers else None, capsize=2,
                      error_kw={"elinewidth": 0.8, "ecolor": "black"})
        # With whiskers the value goes inside the bar, where no whisker covers it.
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1,
                     label_type="center" if whiskers else "edge")
        for o, _, c in present:
            if c is not None and c.seeds > 1:
                ax.scatter(np.full(c.seeds, o), [100 * r for r in c.seed_rates], s=6,
                           color="black", zorder=3)
        for o, v in zip(offset, values, strict=True):
            if v is None:
                ax.text(o, 0.02 * top, "missing", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="red")
    ax.set_xticks(x, [table.column(p) for p in table.presets])
    ax.set_ylabel("error rate (%)")
    ax.set_ylim(0, top * 1.18)
    title = "Error rate per preset (lower is better)"
    if table.cells and table.bootstrap is not None:
        title += (f"\nwhiskers: {100 * table.bootstrap.confidence:g} % bootstrap interval "
                  "over utterances" + ("; dots: the seeds" if table.seeded else ""))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, len(table.models)))
    _save(fig, path)


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> None:
    """Loss, VUSS, rollout length and top-1 agreement per step, one line per run."""
    fig = Figure(figsize=(10, 6.5))
    axes = fig.subplots(2, 2)
    for ax, (title, keys) in zip(axes.flat, CURVES, strict=True):
        drawn = False
        for name, rows in runs.items():
            steps, values = curve(rows, keys)
            if steps:
                ax.plot(steps, values, label=name, linewidth=1.2)
                drawn = True
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        else:
            ax.set_title(title)
            _no_data(ax, "no training metrics" if not runs else f"no `{keys[0]}` logged")
    _save(fig, path)


def td_filters(td: Mapping[str, Any] | None, path: str | Path) -> None:
    """Teacher transcripts kept and dropped, by the first filter that dropped them."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    if td is None:
        _no_data(ax, "no teacher-data report")
        _save(fig, path)
        return
    labels = ["kept", *(f"dropped: {r}" for r in td["dropped_by_reason"])]
    counts = [int(td.get("kept") or 0), *(int(c) for c in td["dropped_by_reason"].values())]
    colors = ["tab:green"] + ["tab:red"] * (len(labels) - 1)
    bars = ax.barh(labels[::-1], counts[::-1], color=colors[::-1])
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xlabel("teacher transcripts")
    ax.set_title(f"Teacher data: {td.get('kept')} of {td.get('rows')} kept")
    ax.set_xlim(0, max(counts + [1]) * 1.15)
    _save(fig, path)
