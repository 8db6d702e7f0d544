"""The file a Kaldi ``wav.scp`` pipe command decodes, for the commands that only decode one file.

Kaldi runs ``flac -c -d -s F |``, ``sox F -t wav - |`` or ``ffmpeg -i F -f wav - |`` to turn a
file into WAV on the fly. The pipeline reads F itself (soundfile reads FLAC, WAV, OGG/Opus, MP3,
…; mono mix and resampling happen when the audio is loaded), so those commands resolve to F. A
command that changes the audio in any other way (sox effects, ffmpeg filters or cuts, any other
program) cannot be replaced by reading F and is refused with the reason.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath


class UnsupportedCommand(ValueError):
    """A pipe command that is not a plain decode of one file; the message says why."""


# flac: decode to stdout, quietly. Nothing that skips or cuts (--skip, --until).
_FLAC_SWITCHES = {"-c", "--stdout", "-d", "--decode", "-s", "--silent", "--totally-silent",
                  "-f", "--force"}
# sox: format options of the output (and the input's -t); a channel count of 1 is the same
# down-mix the loader does, a rate is the same resampling.
_SOX_VALUED = {"-t", "--type", "-r", "--rate", "-b", "--bits", "-e", "--encoding", "-c",
               "--channels"}
_SOX_SWITCHES = {"-q", "--no-show-progress", "-V0", "-V1", "-G", "--guard"}
# ffmpeg: logging and output format options; anything that cuts or filters is refused.
_FFMPEG_VALUED = {"-f", "-ar", "-ac", "-acodec", "-c:a", "-codec:a", "-sample_fmt", "-loglevel",
                  "-v", "-threads", "-map"}
_FFMPEG_SWITCHES = {"-nostdin", "-hide_banner", "-y", "-vn", "-nostats"}
_STDOUT = {"-", "pipe:", "pipe:1"}


def piped_file(command: str) -> str:
    """The input file of a wav.scp pipe command (the text before the final ``|``)."""
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise UnsupportedCommand(f"cannot split the command into words ({err})") from None
    if not words:
        raise UnsupportedCommand("empty command before '|'")
    if "|" in words:
        raise UnsupportedCommand("a chain of several commands; only one decode of one file can "
                                 "be replaced by reading the file")
    program = PurePath(words[0]).name
    readers = {"flac": _flac, "sox": _sox, "ffmpeg": _ffmpeg}
    if program not in readers:
        raise UnsupportedCommand(
            f"{program!r} is not one of the recognized decoders (flac -c -d -s F, sox F -t wav "
            f"-, ffmpeg -i F -f wav -); convert the audio to files soundfile reads (WAV, FLAC, "
            f"OGG/Opus, MP3) and list them in wav.scp")
    return readers[program](words[1:])


def _flac(args: list[str]) -> str:
    files = [a for a in args if not a.startswith("-")]
    unknown = [a for a in args if a.startswith("-") and a not in _FLAC_SWITCHES]
    if unknown:
        raise UnsupportedCommand(f"flac option {unknown[0]} is not a plain decode")
    if "-d" not in args and "--decode" not in args:
        raise UnsupportedCommand("flac without -d encodes; expected flac -c -d -s FILE")
    if len(files) != 1:
        raise UnsupportedCommand(f"expected one input file to flac, got {len(files)}")
    return files[0]


def _sox(args: list[str]) -> str:
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _SOX_VALUED:
            if i + 1 >= len(args):
                raise UnsupportedCommand(f"sox option {arg} without a value")
            if arg in ("-c", "--channels") and args[i + 1] != "1":
                raise UnsupportedCommand(f"sox {arg} {args[i + 1]} keeps several channels "
                                         f"in a way the loader does not reproduce")
            i += 2
            continue
        if arg in _SOX_SWITCHES:
            i += 1
            continue
        if arg.startswith("-") and arg not in _STDOUT:
            raise UnsupportedCommand(f"sox option {arg} is not a plain decode")
        positional.append(arg)
        i += 1
    if len(positional) < 2 or positional[1] not in _STDOUT:
        raise UnsupportedCommand("expected sox FILE [-t wav ...] - (one input, output to "
                                 "stdout)")
    if len(positional) > 2:
        effects = " ".join(positional[2:])
        raise UnsupportedCommand(f"sox effects ({effects}) change the audio; apply them to the "
                                 f"files first, or express cuts as a segments file")
    return positional[0]


def _ffmpeg(args: list[str]) -> str:
    inputs: list[str] = []
    outputs: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-i" or arg in _FFMPEG_VALUED:
            if i + 1 >= len(args):
                raise UnsupportedCommand(f"ffmpeg option {arg} without a value")
            if arg == "-i":
                inputs.append(args[i + 1])
            elif arg == "-ac" and args[i + 1] != "1":
                raise UnsupportedCommand(f"ffmpeg -ac {args[i + 1]} keeps several channels "
                                         f"in a way the loader does not reproduce")
            i += 2
            continue
        if arg in _FFMPEG_SWITCHES:
            i += 1
            continue
        if arg.startswith("-") and arg not in _STDOUT:
            raise UnsupportedCommand(f"ffmpeg option {arg} is not a plain decode (cuts, "
                                     f"filters and seeks change the audio)")
        outputs.append(arg)
        i += 1
    if len(inputs) != 1:
        raise UnsupportedCommand(f"expected one ffmpeg input (-i FILE), got {len(inputs)}")
    if len(outputs) != 1 or outputs[0] not in _STDOUT:
        raise UnsupportedCommand("expected ffmpeg to write to stdout (- or pipe:1)")
    return inputs[0]
