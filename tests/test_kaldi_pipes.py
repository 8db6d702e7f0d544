"""wav.scp pipe commands: the plain decodes of one file resolve to it, anything else is refused
with the reason."""

from __future__ import annotations

import pytest

from stages.data.corpora.kaldi_pipes import UnsupportedCommand, piped_file


@pytest.mark.parametrize("command, path", [
    ("flac -c -d -s /data/a.flac ", "/data/a.flac"),
    ("/usr/bin/flac --decode --stdout --silent 'dir with space/a.flac'", "dir with space/a.flac"),
    ("sox /data/a.flac -t wav -", "/data/a.flac"),
    ("sox -t flac /data/a.flac -t wav -r 16000 -b 16 -c 1 -", "/data/a.flac"),
    ("sox -q /data/a.wav -t wav -e signed-integer -", "/data/a.wav"),
    ("ffmpeg -i /data/a.m4a -f wav -", "/data/a.m4a"),
    ("ffmpeg -nostdin -hide_banner -loglevel quiet -i /data/a.mp3 -f wav -ar 16000 -ac 1 "
     "-acodec pcm_s16le pipe:1", "/data/a.mp3"),
])
def test_plain_decodes_resolve_to_their_file(command, path):
    assert piped_file(command) == path


@pytest.mark.parametrize("command, reason", [
    ("sph2pipe -f wav /data/a.sph", "'sph2pipe' is not one of the recognized decoders"),
    ("flac -c -d -s --skip=100 /data/a.flac", "flac option --skip=100 is not a plain decode"),
    ("flac -c /data/a.wav", "flac without -d encodes"),
    ("sox /data/a.wav -t wav - trim 0 3", "sox effects (trim 0 3) change the audio"),
    ("sox /data/a.wav -t wav - remix 1", "sox effects (remix 1) change the audio"),
    ("sox /data/a.wav -c 2 -t wav -", "sox -c 2 keeps several channels"),
    ("sox /data/a.wav /data/b.wav", "expected sox FILE [-t wav ...] -"),
    ("ffmpeg -ss 3 -i /data/a.mp3 -f wav -", "ffmpeg option -ss is not a plain decode"),
    ("ffmpeg -i /data/a.mp3 -af volume=2 -f wav -", "ffmpeg option -af is not a plain decode"),
    ("ffmpeg -i /data/a.mp3 -i /data/b.mp3 -f wav -", "expected one ffmpeg input"),
    ("ffmpeg -i /data/a.mp3 out.wav", "expected ffmpeg to write to stdout"),
    ("sox /data/a.wav -t wav - | sox - -t wav -", "a chain of several commands"),
    ("flac -d 'unclosed", "cannot split the command"),
    ("", "empty command"),
])
def test_other_commands_are_refused_with_the_reason(command, reason):
    with pytest.raises(UnsupportedCommand) as err:
        piped_file(command)
    assert reason in str(err.value)
