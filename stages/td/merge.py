"""Gather teacher-data shards: consistency checks, one deterministic row order, one report.

Merged order: the pool's row order when the pool is given (then the result is byte-identical to
a single-shard run), else ascending id. Shard reports must describe one run: the same pool
(checksum), number of shards, teacher (weights fingerprint) and settings, and every shard index
exactly once. The merged report adds the shards' counts and recomputes every rate from the sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stages.common.errors import UserError
from stages.td.summary import add_counts, empty_counts, summarize

# Report fields that must agree across the shards of one run.
_SAME = {"pool checksum": ("pool", "sha256"), "pool size": ("pool", "rows"),
         "number of shards": ("shards", "count"), "teacher": ("teacher", "fingerprint"),
         "generation settings": ("settings", "generation"),
         "filter settings": ("settings", "filters")}


def check_reports(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
    """Raise unless the (path, report) pairs are all the shards of one run; returns n."""
    if not reports:
        raise UserError("no shard reports given")
    first_path, first = reports[0]
    for path, report in reports:
        for what, (section, key) in _SAME.items():
            try:
                mine, theirs = report[section][key], first[section][key]
            except (KeyError, TypeError):
                raise UserError(f"{path}: not a teacher_data shard report (no {section}.{key})"
                                ) from None
            if mine != theirs:
                raise UserError(f"{path} and {first_path} differ in {what} ({mine!r} vs "
                                f"{theirs!r}): they come from different runs; rerun the shards "
                                "with one configuration")
    count = first["shards"]["count"]
    seen: dict[int, str] = {}
    for path, report in reports:
        index = report["shards"]["index"]
        if index in seen:
            raise UserError(f"{path} and {seen[index]} are both shard {index}")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing or len(reports) != count:
        raise UserError(f"{len(reports)} shard reports for a run of {count} shards (missing "
                        f"shard(s) {', '.join(map(str, missing)) or 'none'}); give every shard")
    covered = sum(report["pool"]["shard_rows"] for _, report in reports)
    if covered != first["pool"]["rows"]:
        raise UserError(f"the shards cover {covered} rows of a pool of {first['pool']['rows']}; "
                        "the shard reports do not add up to the pool")
    return count


def gather(shards: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
           order: Sequence[str] | None = None) -> list[Mapping[str, Any]]:
    """Rows of every (path, rows) shard in one order: ``order``'s (ids) or ascending id."""
    rows: list[Mapping[str, Any]] = []
    source: dict[str, str] = {}
    for path, shard_rows in shards:
        for number, row in enumerate(shard_rows, start=1):
            row_id = row.get("id")
            if not isinstance(row_id, str):
                raise UserError(f"{path}:{number}: row without an id; not a teacher_data shard")
            if row_id in source:
                raise UserError(f"{path}:{number}: id {row_id!r} is also in {source[row_id]}; "
                                "shards must not overlap")
            source[row_id] = f"{path}:{number}"
            rows.append(row)
    if order is None:
        return sorted(rows, key=lambda r: r["id"])
    position = {row_id: index for index, row_id in enumerate(order)}
    for row in rows:
        if row["id"] not in position:
            raise UserError(f"{source[row['id']]}: id {row['id']!r} is not in the pool given "
                            "with --order")
    return sorted(rows, key=lambda r: position[r["id"]])


def merged_counts(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    total = empty_counts()
    for report in reports:
        total = add_counts(total, report["counts"])
    return total


def merged_report(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The run's report: sums of the shard counts, rates recomputed, one line per shard."""
    ordered = sorted(reports, key=lambda item: item[1]["shards"]["index"])
    counts = merged_counts([r for _, r in ordered])
    first = ordered[0][1]
    per_shard = [{"index": r["shards"]["index"], "report": path, "rows": r["summary"]["rows"],
                  "kept": r["summary"]["kept"], "kept_hours": r["summary"]["kept_hours"],
                  "audio_seconds_per_second": r["summary"]["audio_seconds_per_second"]}
                 for path, r in ordered]
    return {
        "title": "Teacher data",
        "shards": {"index": None, "count": first["shards"]["count"], "per_shard": per_shard},
        "pool": {k: first["pool"][k] for k in ("path", "sha256", "rows")},
        "teacher": dict(first["teacher"]),
        "settings": first["settings"],
        "counts": counts,
        "summary": summarize(counts),
    }
