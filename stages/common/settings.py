"""Typed settings: a library's options are a dataclass next to their owner, and a stage's CLI is
derived from it, so every default lives in exactly one place.

A field's type says how its option parses, its metadata (written with :func:`setting`) gives
the help text::

    @dataclass(frozen=True)
    class OpdConfig:
        top_k: int = setting(32, help="k of the teacher's and the student's top-k sets")
        sample: bool = setting(False, help="sampled rollouts instead of greedy")

    add_settings(parser, OpdConfig, title="OPD step")      # --top-k N, --sample / --no-sample
    cfg = settings_from_args(OpdConfig, args)              # OpdConfig(top_k=..., sample=...)

The flag is the field name with dashes (``top_k`` → ``--top-k``), which is also the key of the
pipeline's config section, so config key, flag and field read the same everywhere. Types:
``int``, ``float``, ``str``, ``Path``, ``X | None`` (None = not given), ``Literal[...]``
(choices), ``tuple[str, ...]`` (a list of values), ``dict[str, float]`` (``KEY=VALUE`` items
merged into the default) and ``bool`` (``--flag`` / ``--no-flag``; ``--flag on|off`` too). A
field without a default is a required option. A nested dataclass field adds its options as an
argument group. ``volatile=True`` marks a setting that may change when a run resumes (the
step budget, where to save, threads): :func:`run_settings` leaves it out of what identifies
a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from stages.common.errors import UserError

_MISSING = dataclasses.MISSING
_METAVARS = {int: "N", float: "X", Path: "PATH"}
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}


def setting(default: Any = _MISSING, *, help: str, volatile: bool = False,
            metavar: str | None = None, aliases: tuple[str, ...] = (),
            parse: Any = None) -> Any:
    """A dataclass field that is also a CLI option (see the module docstring).

    ``aliases``: older spellings of the flag that stay accepted. ``parse``: a function from the
    option's text to the value (overrides the type's own parsing). Mutable defaults (lists,
    dicts) are copied per instance.
    """
    metadata = {"help": help, "volatile": volatile, "metavar": metavar, "aliases": aliases,
                "parse": parse}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(name: str) -> str:
    """The option spelling of a field name: ``max_new_tokens`` → ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


class _Switch(argparse.Action):
    """``--flag`` (on), ``--no-flag`` (off), or ``--flag on|off|true|false``."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None,
                 **kwargs):
        names = list(option_strings)
        names += [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(names, dest, nargs="?", default=default, required=required,
                         help=help, metavar="on|off")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        text = str(values).lower()
        if text not in _TRUE | _FALSE:
            parser.error(f"{option_string}: expected on or off, got {values!r}")
        setattr(namespace, self.dest, text in _TRUE)


def _key_values(f: dataclasses.Field, kind: type, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict; a bad item is a UserError that names the option."""
    flag, form = flag_of(f.name), f.metadata["metavar"] or "KEY=VALUE"
    what = "a whole number" if kind is int else "a number" if kind is float else "valid"
    pairs: dict[str, Any] = {}
    for text in items:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{flag}: {text!r} is not {form}; write e.g. {flag} {form}")
        if key in pairs:
            raise UserError(f"{flag}: {key!r} given twice")
        try:
            pairs[key] = kind(value)
        except ValueError:
            raise UserError(f"{flag}: {value!r} for {key} is not {what}; each item is "
                            f"{form}") from None
    return pairs


def finite_seconds(text: str) -> float:
    """An option value of seconds: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An option value that counts something: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def group(title: str) -> Any:
    """A dataclass field holding a nested settings dataclass, shown as the argument group
    ``title``; its options join the parser unprefixed."""
    return dataclasses.field(metadata={"title": title})


def add_settings(parser: argparse.ArgumentParser, cls: type, *,
                 title: str | None = None) -> None:
    """Add an option for every field of the dataclass ``cls`` (a group per nested one)."""
    target = parser.add_argument_group(title) if title else parser
    for f, hint in _fields(cls):
        if "title" in f.metadata and dataclasses.is_dataclass(hint):
            add_settings(parser, hint, title=f.metadata["title"])
        elif "help" in f.metadata:
            _add_option(target, f, hint)


def _add_option(target: Any, f: dataclasses.Field, hint: Any) -> None:
    meta = f.metadata
    names = [flag_of(f.name), *meta["aliases"]]
    default = _default_of(f)
    kwargs: dict[str, Any] = {"dest": f.name}
    if default is _MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    help_text = meta["help"]
    # None or an empty mapping: the help says what unset means.
    if default is not _MISSING and default is not None and default != {}:
        help_text += f" (default: {_shown(default)})"
    kwargs["help"] = help_text
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    if hint is bool:
        target.add_argument(*names, action=_Switch, **kwargs)
        return
    if origin is Literal:
        kwargs["choices"] = list(typing.get_args(hint))
    elif origin is tuple:
        item = typing.get_args(hint)[0]
        kwargs["nargs"] = "*"
        kwargs["type"] = meta["parse"] or item
        kwargs.setdefault("metavar", item.__name__.upper())
        choices = typing.get_args(item) if typing.get_origin(item) is Literal else None
        if choices:
            kwargs["choices"] = list(choices)
            kwargs["type"] = str
    elif origin in (dict, Mapping):
        kwargs["nargs"] = "+"
        kwargs["action"] = "extend"  # a repeated option adds its items (a key twice is an error)
        kwargs["metavar"] = meta["metavar"] or "KEY=VALUE"
        if default is not _MISSING:
            kwargs["default"] = None  # merged over the default in settings_from_args
    else:
        kwargs["type"] = meta["parse"] or (Path if hint is Path else hint)
        kwargs.setdefault("metavar", _METAVARS.get(hint, "TEXT"))
    target.add_argument(*names, **kwargs)


def settings_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """An instance of ``cls`` from parsed options; ``given`` fills fields that are not options
    of this parser (e.g. values a stage computes)."""
    values: dict[str, Any] = {}
    for f, hint in _fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
        elif "title" in f.metadata and dataclasses.is_dataclass(hint):
            values[f.name] = settings_from_args(hint, args, **given)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            plain = _unwrap_optional(hint)
            if typing.get_origin(plain) is tuple and value is not None:
                value = tuple(value)
            elif typing.get_origin(plain) in (dict, Mapping) and "help" in f.metadata:
                merged = dict(_default_of(f) or {})
                merged.update(_key_values(f, typing.get_args(plain)[1], value or []))
                value = merged
            values[f.name] = value
    try:
        return cls(**values)
    except ValueError as err:  # a dataclass's own checks; say it as an option error
        raise UserError(f"options: {err}") from err


def settings_argv(settings: Any) -> list[str]:
    """Options that give ``settings`` back through :func:`settings_from_args`: every required
    one and every one whose value differs from its default (nested groups included). Used to
    print a command that reproduces a run, e.g. with one option changed."""
    argv: list[str] = []
    for f, hint in _fields(type(settings)):
        value = getattr(settings, f.name)
        if "title" in f.metadata and dataclasses.is_dataclass(hint):
            argv += settings_argv(value)
            continue
        default = _default_of(f)
        if "help" not in f.metadata or value is None or (default is not _MISSING
                                                           and value == default):
            continue
        flag = flag_of(f.name)
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (tuple, list)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, Mapping):
            argv += [flag, *(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return argv


def as_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready fields of a settings dataclass (nested ones as dicts, paths as strings)."""
    return {f.name: _plain(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    return value


def run_settings(settings: Any) -> dict[str, Any]:
    """The settings that identify a run: every field but the ``volatile`` ones, flattened
    (nested dataclasses contribute their own fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("volatile"):
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(run_settings(value))
        else:
            out[f.name] = _plain(value)
    return dict(sorted(out.items()))
