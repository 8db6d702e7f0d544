"""WenetSpeech (wenet.org.cn/WenetSpeech): long Opus recordings described by one JSON file.

Every segment of the chosen subset becomes a row with ``begin_time``/``end_time`` over its
recording; nothing is cut (the pipeline reads only the segment). The JSON file is read whole
(the full corpus' file takes several GB of memory; the test subsets are a small part of it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common.errors import UserError
from stages.data.corpora.base import Entry, Listing, Origin, Problem, choose

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions

LAYOUT = """\
wenetspeech   --source WenetSpeech/ --subset TEST_MEETING
    <source>/WenetSpeech.json: {"audios": [{"aid", "path": "audio/.../X.opus",
        "segments": [{"sid", "begin_time", "end_time", "text", "subsets": ["L", ...]}]}]}
    audio paths relative to the JSON's folder; subsets: TEST_MEETING TEST_NET DEV S M L W
    (any case); one row per segment with begin_time/end_time (no cutting); language zh"""
USES = frozenset({"subset", "language"})
DEFAULT_LANGUAGE = "zh"
INDEX = "WenetSpeech.json"


def load_index(source: Path) -> tuple[Path, list[Any]]:
    """(path of WenetSpeech.json, its list of audios), given the file or its folder."""
    path = source / INDEX if source.is_dir() else source
    if not path.is_file():
        raise UserError(f"{path}: not found; give the WenetSpeech folder (holding {INDEX}) or "
                        f"the JSON file as --source")
    try:
        with path.open("rb") as handle:
            index = json.load(handle)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column "
                        f"{err.colno})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 (byte {err.start})") from err
    audios = index.get("audios") if isinstance(index, dict) else None
    if not isinstance(audios, list):
        raise UserError(f"{path}: expected an object with an \"audios\" list (WenetSpeech's "
                        f"format), got {type(index).__name__}")
    return path, audios


def _subsets(audios: list[Any]) -> set[str]:
    found: set[str] = set()
    for audio in audios:
        for segment in (audio.get("segments") or []) if isinstance(audio, dict) else []:
            if isinstance(segment, dict) and isinstance(segment.get("subsets"), list):
                found.update(s for s in segment["subsets"] if isinstance(s, str))
    return found


def read(source: str, options: PrepareOptions) -> Listing:
    path, audios = load_index(Path(source))
    subset = options.subset.upper() if options.subset else None
    subset = choose(subset, _subsets(audios), what="WenetSpeech subset", where=str(path))
    items = list(_segments(path, audios, subset))
    return Listing(items, total=len(items), notes={"recordings": len(audios)})


def _segments(index: Path, audios: list[Any], subset: str) -> Iterator[Entry | Problem]:
    root = index.parent.absolute()
    for i, audio in enumerate(audios):
        if not isinstance(audio, dict):
            yield Problem(Origin(str(index), item=f"audios[{i}]"), "bad_line",
                          "expected an object with path and segments")
            continue
        for j, segment in enumerate(audio.get("segments") or []):
            if not isinstance(segment, dict) or subset not in (segment.get("subsets") or []):
                continue
            origin = Origin(str(index), item=f"audios[{i}].segments[{j}]")
            yield _entry(origin, root, audio, segment)


def _entry(origin: Origin, root: Path, audio: dict, segment: dict) -> Entry | Problem:
    relative, sid, text = audio.get("path"), segment.get("sid"), segment.get("text")
    for name, value in (("audios[].path", relative), ("sid", sid), ("text", text)):
        if not isinstance(value, str):
            return Problem(origin, "bad_line", f"{name} must be a string, got {value!r}")
    begin, end = segment.get("begin_time"), segment.get("end_time")
    for name, value in (("begin_time", begin), ("end_time", end)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Problem(origin, "bad_segment", f"segment {sid}: {name} must be seconds, "
                                                  f"got {value!r}")
    return Entry(id=sid, text=text, origin=origin, audio=str(root / relative),
                 begin=float(begin), end=float(end), note=f"aid {audio.get('aid')}")
