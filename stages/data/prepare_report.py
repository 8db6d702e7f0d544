"""The prepare report: what a corpus gave (utterances, hours, languages), what it could not give
(every problem with its file and line) and what was left out on purpose (skips), as JSON and as
readable Markdown beside it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common.provenance import provenance
from stages.common.settings import as_dict
from stages.data.corpora.base import PROBLEMS, SKIPS
from stages.data.manifest import LANGUAGES

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions, Tally


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 6)


def build_report(tally: Tally, notes: dict[str, Any], *, source: str, output: Path,
                 output_written: bool, report_path: Path, audio_dir: Path | None,
                 options: PrepareOptions) -> dict[str, Any]:
    """The REPORT.json document (every problem listed, in source order)."""
    settings = {k: v for k, v in as_dict(options).items() if k != "progress"}
    languages = {
        code: {"utterances": rows, "hours": _hours(tally.language_seconds[code]),
               "name": LANGUAGES.get(code, "")}
        for code, rows in sorted(tally.language_rows.items(), key=lambda kv: (-kv[1], kv[0]))
    }
    counts = Counter(problem.reason for problem in tally.problems)
    return {
        "format": options.format,
        "source": source,
        "subset": options.subset,
        "output": str(output),
        "output_written": output_written,
        "report_markdown": str(report_path.with_suffix(".md")),
        "audio_dir": str(audio_dir) if audio_dir else None,
        "audio_files_written": tally.stored_files,
        "options": settings,
        "entries": tally.entries,
        "utterances": tally.rows,
        "invalid": len(tally.problems),
        "seconds": round(tally.seconds, 3),
        "hours": _hours(tally.seconds),
        "languages": languages,
        "problem_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "problems": [{**problem.origin.as_dict(), "reason": problem.reason,
                      "detail": problem.detail} for problem in tally.problems],
        "skipped": {reason: {"count": count, "meaning": SKIPS[reason],
                             "examples": tally.skip_examples[reason]}
                    for reason, count in sorted(tally.skip_counts.items())},
        "source_notes": notes,
        "provenance": provenance({"stage": "prepare", "source": source, **settings}),
    }


def where(problem: dict[str, Any]) -> str:
    """``file:line`` or ``file [item]`` of a report problem."""
    if problem["line"] is not None:
        return f"{problem['file']}:{problem['line']}"
    return f"{problem['file']} [{problem['item']}]" if problem["item"] else problem["file"]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any], max_problems: int = 50) -> str:
    """A human summary: totals, languages, skips, problem counts, the first problems."""
    if not report["invalid"]:
        verdict = "no problems"
    elif report["options"]["on_error"] == "quarantine":
        verdict = f"{report['invalid']} problem(s), left out of the manifest"
    else:
        verdict = f"{report['invalid']} problem(s), manifest NOT written"
    subset = f" {report['subset']}" if report["subset"] else ""
    lines = [
        f"# Prepare: {report['format']}{subset}", "", f"**{verdict}**", "",
        "| | |", "|---|---|",
        f"| source | `{report['source']}` |",
        f"| output | `{report['output']}`{'' if report['output_written'] else ' (not written)'} |",
    ]
    if report["audio_dir"]:
        lines.append(f"| audio stored as FLAC | {report['audio_files_written']} files under "
                     f"`{report['audio_dir']}` |")
    skipped = sum(block["count"] for block in report["skipped"].values())
    lines += [
        f"| utterances | {report['utterances']} of {report['entries']} |",
        f"| problems | {report['invalid']} |",
        f"| skipped | {skipped} |",
        f"| audio of the utterances | {report['hours']:.3f} h ({report['seconds']:.1f} s) |",
        f"| options | {_cell(', '.join(f'{k}={v}' for k, v in report['options'].items()))} |",
        "", "## Languages", "", "| language | name | utterances | hours |", "|---|---|---:|---:|",
    ]
    lines += [f"| {code} | {entry['name']} | {entry['utterances']} | {entry['hours']:.3f} |"
              for code, entry in report["languages"].items()] or ["| (none) | | 0 | 0 |"]
    lines += ["", "## Skipped", ""]
    if report["skipped"]:
        lines += ["| reason | count | meaning | first examples |", "|---|---:|---|---|"]
        lines += [f"| `{reason}` | {block['count']} | {_cell(block['meaning'])} | "
                  f"{_cell(', '.join(block['examples'][:3]))} |"
                  for reason, block in report["skipped"].items()]
    else:
        lines.append("Nothing was skipped.")
    lines += ["", "## Problems", ""]
    if report["problem_counts"]:
        lines += ["| reason | count | meaning |", "|---|---:|---|"]
        lines += [f"| `{code}` | {count} | {_cell(PROBLEMS[code])} |"
                  for code, count in report["problem_counts"].items()]
        shown = report["problems"][:max_problems]
        lines += ["", f"First {len(shown)} of {len(report['problems'])} (all are in the JSON "
                      f"report):", "", "| where | reason | detail |", "|---|---|---|"]
        lines += [f"| `{_cell(where(p))}` | `{p['reason']}` | {_cell(p['detail'])} |"
                  for p in shown]
    else:
        lines.append("No problem was found.")
    prov = report["provenance"]
    lines += ["", f"_git {prov['git_commit']}, config {prov['config_hash']}, "
                  f"{prov['created_utc']}_", ""]
    return "\n".join(lines)
