"""LibriSpeech (openslr.org/12): one subset folder of speaker/chapter folders with FLAC files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stages.common.errors import UserError
from stages.data.corpora.base import Entry, Listing, Problem, Skip, choose, keyed_lines

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions

LAYOUT = """\
librispeech   --source LibriSpeech/ --subset test-clean
    <source>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "<id> <TEXT>" lines
    <source>/<subset>/<speaker>/<chapter>/<id>.flac
    subsets: dev-clean dev-other test-clean test-other train-clean-100 train-clean-360
    train-other-500 (any folder of that layout); language en; text kept as given (upper case)"""
USES = frozenset({"subset", "language"})
DEFAULT_LANGUAGE = "en"
TRANSCRIPTS = "*/*/*.trans.txt"


def read(source: str, options: PrepareOptions) -> Listing:
    root = Path(source)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give the LibriSpeech folder (the one holding "
                        f"test-clean/, ...) as --source")
    subsets = [p.name for p in root.iterdir() if p.is_dir() and any(p.glob(TRANSCRIPTS))]
    subset = choose(options.subset, subsets, what="LibriSpeech subset", where=str(root))
    folder = root / subset
    items: list[Entry | Problem | Skip] = []
    named: set[Path] = set()
    for transcript in sorted(folder.glob(TRANSCRIPTS)):
        for item in keyed_lines(transcript):
            if isinstance(item, Problem):
                items.append(item)
                continue
            origin, utt, text = item
            audio = transcript.parent / f"{utt}.flac"
            named.add(audio)
            items.append(Entry(id=utt, text=text, origin=origin, audio=str(audio.absolute())))
    items += [Skip("no_transcript", str(flac)) for flac in sorted(folder.glob("*/*/*.flac"))
              if flac not in named]
    return Listing(items, total=len(items), notes={"subset_folder": str(folder.absolute())})
