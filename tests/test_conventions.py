"""The demo's second transcript convention (stages.demo.conventions, its stage CLI)."""

from __future__ import annotations

import json

import pytest

from stages.common.errors import UserError
from stages.demo.conventions import restyled
from stages.restyle_transcripts import build_parser, main


@pytest.mark.parametrize("text, expected", [
    ("the cat was big.", "The cat was big"),
    ("猫很大。", "猫很大"),
    ("where is the ball?", "Where is the ball?"),  # only a full stop is the convention's
    ("Already styled", "Already styled"),
    ("a.b.", "A.b"),  # one final stop, not every one
])
def test_restyled_drops_the_final_stop_and_capitalizes(text, expected):
    assert restyled(text) == expected


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")


def test_the_stage_rewrites_only_the_text(tmp_path):
    rows = [{"id": "en-1", "audio": "a.wav", "text": "the cat was big.", "language": "en",
             "duration": 1.2},
            {"id": "zh-1", "audio": "b.wav", "text": "猫很大。", "language": "zh", "duration": 0.9}]
    write_rows(tmp_path / "train.jsonl", rows)
    out = tmp_path / "train_restyled.jsonl"
    assert main(build_parser().parse_args(
        ["--input", str(tmp_path / "train.jsonl"), "--output", str(out)])) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in written] == ["The cat was big", "猫很大"]
    assert [{k: v for k, v in row.items() if k != "text"} for row in written] == \
        [{k: v for k, v in row.items() if k != "text"} for row in rows]


def test_a_row_without_a_transcript_is_named(tmp_path):
    write_rows(tmp_path / "train.jsonl", [{"id": "a", "text": "fine."}, {"id": "b", "text": ""}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match=r"train.jsonl:2: no transcript"):
        main(build_parser().parse_args(["--input", str(tmp_path / "train.jsonl"),
                                        "--output", str(out)]))
    assert not out.exists()  # nothing half-written
