"""Typed settings → stage CLIs (stages/common/settings.py), and the stages built on them."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import stages
from stages.common.errors import UserError
from stages.common.settings import (
    add_settings,
    as_dict,
    group,
    run_settings,
    setting,
    settings_argv,
    settings_from_args,
)


@dataclass(frozen=True, kw_only=True)
class Inner:
    """inner things"""

    rate: float = setting(0.5, help="a rate")
    names: tuple[Literal["a", "b", "c"], ...] = setting(("a", "b"), help="some names")
    bounds: dict[str, float] = setting({"x": 1.0, "default": 2.0}, metavar="K=N",
                                       help="bounds by key")


@dataclass(frozen=True, kw_only=True)
class Outer:
    """outer things"""

    path: Path = setting(help="a required path")
    steps: int = setting(10, volatile=True, help="how far")
    switch: bool = setting(True, help="a switch", aliases=("--old-switch",))
    label: str | None = setting(None, help="a label (unset: no label)")
    inner: Inner = group("the inner group")


def parse(*argv: str) -> Outer:
    parser = argparse.ArgumentParser()
    add_settings(parser, Outer)
    return settings_from_args(Outer, parser.parse_args(list(argv)))


def test_defaults_come_from_the_dataclass():
    got = parse("--path", "p")
    assert got == Outer(path=Path("p"), inner=Inner())
    assert got.inner.bounds == {"x": 1.0, "default": 2.0} and got.switch is True


def test_every_type_parses():
    got = parse("--path", "p", "--steps", "3", "--no-switch", "--label", "L", "--rate", "0.25",
                "--names", "c", "--bounds", "x=4", "y=5")
    assert (got.steps, got.switch, got.label, got.inner.rate) == (3, False, "L", 0.25)
    assert got.inner.names == ("c",)
    assert got.inner.bounds == {"x": 4.0, "y": 5.0, "default": 2.0}  # merged over the default
    # A repeated KEY=VALUE option adds its items, never drops the earlier ones.
    assert parse("--path", "p", "--bounds", "x=4", "--bounds", "y=5").inner.bounds == {
        "x": 4.0, "y": 5.0, "default": 2.0}


@pytest.mark.parametrize("argv, value", [
    (["--switch"], True), (["--switch", "off"], False), (["--switch", "on"], True),
    (["--no-switch"], False), (["--old-switch", "false"], False),
])
def test_a_switch_takes_every_spelling(argv, value):
    assert parse("--path", "p", *argv).switch is value


def test_bad_values_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        parse("--steps", "3")  # --path is required
    assert "--path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--path", "p", "--names", "z")
    assert "invalid choice: 'z'" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--bounds: 'x' is not K=N"):
        parse("--path", "p", "--bounds", "x")
    with pytest.raises(UserError, match=r"--bounds: 'fast' for x is not a number"):
        parse("--path", "p", "--bounds", "x=fast")
    with pytest.raises(UserError, match="given twice"):
        parse("--path", "p", "--bounds", "x=1", "x=2")
    with pytest.raises(UserError, match="given twice"):
        parse("--path", "p", "--bounds", "x=1", "--bounds", "x=2")


def test_help_shows_groups_and_defaults():
    parser = argparse.ArgumentParser()
    add_settings(parser, Outer)
    text = " ".join(parser.format_help().split())
    assert "the inner group:" in text
    assert "how far (default: 10)" in text and "a rate (default: 0.5)" in text
    assert "a label (unset: no label) the inner" in text  # None: the help says what it means


def test_run_settings_leave_out_volatile_ones_and_flatten():
    got = parse("--path", "p", "--steps", "3")
    identity = run_settings(got)
    assert "steps" not in identity
    assert identity == {"path": "p", "switch": True, "label": None, "rate": 0.5,
                        "names": ["a", "b"], "bounds": {"default": 2.0, "x": 1.0}}
    assert run_settings(parse("--path", "p", "--steps", "99")) == identity
    assert as_dict(got)["inner"]["names"] == ["a", "b"] and as_dict(got)["steps"] == 3


def stage_modules():
    for info in pkgutil.iter_modules(stages.__path__):
        if not info.ispkg:
            module = importlib.import_module(f"stages.{info.name}")
            if hasattr(module, "build_parser"):
                yield module


def test_every_stage_builds_its_cli_from_settings():
    """Every stage's parser builds (no two options clash) and documents every option."""
    names = []
    for module in stage_modules():
        parser = module.build_parser()
        names.append(module.__name__)
        for action in parser._actions:
            assert action.help, f"{module.__name__}: {action.option_strings} has no help"
    assert len(names) == 15  # stages.prepare, evaluate_presets and restyle_transcripts among them


def test_the_training_settings_hash_ignores_resume_options():
    from stages.sft import SftRun, build_parser

    base = ["--model", "m", "--train", "t.jsonl", "--output-dir", "out", "--max-steps", "5"]
    a = settings_from_args(SftRun, build_parser().parse_args(base))
    b = settings_from_args(SftRun, build_parser().parse_args(
        [*base[:-1], "50", "--save-every", "7", "--threads", "3", "--no-tensorboard",
         "--output-dir", "elsewhere", "--resume", "latest"]))
    c = settings_from_args(SftRun, build_parser().parse_args([*base, "--lr", "0.01"]))
    assert run_settings(a) == run_settings(b)
    assert run_settings(a) != run_settings(c)
    assert {"model", "lr", "seed", "batch_size", "family", "text_field"} <= set(run_settings(a))


def test_settings_argv_gives_the_settings_back():
    from stages.train_opd import OpdRun, build_parser

    argv = ["--student", "s", "--teacher", "t", "--train", "m.jsonl", "--calibration", "c.json",
            "--output-dir", "out", "--max-steps", "7", "--top-k", "4", "--sample", "--lr",
            "3e-05", "--no-tensorboard", "--student-family", "audio_chat_lm",
            "--keep-stop-token", "off"]
    settings = settings_from_args(OpdRun, build_parser().parse_args(argv))
    again = settings_argv(settings)
    assert settings_from_args(OpdRun, build_parser().parse_args(again)) == settings
    assert again[again.index("--lr") + 1] == "3e-05" and "--no-keep-stop-token" in again
    assert "--batch-size" not in again  # defaults are left out
