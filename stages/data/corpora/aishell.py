"""AISHELL-1 (openslr.org/33): WAV files per split and speaker, one transcript file for all.

The transcript covers every split, and a split is only known from where its WAV files lie, so
a transcript line belongs to the chosen split when its speaker (``S0764`` in
``BAC009S0764W0121``) has a folder there. Such a line without its WAV is a problem; lines of
speakers of other splits are counted in the report, not read (a user may have unpacked only the
test speakers); WAV files without a transcript line are skipped and counted (AISHELL-1 ships a
few).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from stages.common.errors import UserError
from stages.data.corpora.base import Entry, Listing, Problem, Skip, choose, keyed_lines

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions

LAYOUT = """\
aishell       --source data_aishell/ --subset test
    <source>/wav/<subset>/<speaker>/<id>.wav       (unpack wav/*.tar.gz first)
    <source>/transcript/aishell_transcript_v0.8.txt   "<id> <space-separated words>" lines
    subsets: train dev test; language zh; text kept as given (CER ignores the spaces)"""
USES = frozenset({"subset", "language"})
DEFAULT_LANGUAGE = "zh"
TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
_SPEAKER = re.compile(r"S\d{4}")


def corpus_root(source: Path) -> Path:
    """The folder holding wav/ and transcript/ (``data_aishell``), given it or its parent."""
    for root in (source, source / "data_aishell"):
        if (root / TRANSCRIPT).is_file():
            return root
    raise UserError(f"{source}: no {TRANSCRIPT} here or in {source / 'data_aishell'}; give the "
                    f"AISHELL-1 data_aishell folder as --source")


def read(source: str, options: PrepareOptions) -> Listing:
    root = corpus_root(Path(source))
    wav_root = root / "wav"
    splits = [p.name for p in wav_root.iterdir() if p.is_dir()] if wav_root.is_dir() else []
    packed = sorted(wav_root.glob("*.tar.gz")) if wav_root.is_dir() else []
    hint = (f" (wav/ holds {len(packed)} speaker archives: unpack them first, e.g. "
            f"`for f in {wav_root}/*.tar.gz; do tar xzf \"$f\" -C {wav_root}; done`)"
            if packed and not splits else "")
    split = choose(options.subset, splits, what="AISHELL-1 split (folder under wav/)",
                   where=str(wav_root), hint=hint)
    folder = wav_root / split
    wavs = {path.stem: path for path in sorted(folder.glob("*/*.wav"))}
    speakers = {p.name for p in folder.iterdir() if p.is_dir()}
    items: list[Entry | Problem | Skip] = []
    used: set[str] = set()
    other_splits = 0
    for item in keyed_lines(root / TRANSCRIPT):
        if isinstance(item, Problem):
            items.append(item)
            continue
        origin, utt, text = item
        wav = wavs.get(utt)
        speaker = _SPEAKER.search(utt)
        if wav is None and (speaker is None or speaker[0] not in speakers):
            other_splits += 1
            continue
        if wav is None:
            wav = folder / speaker[0] / f"{utt}.wav"  # missing: the driver reports it
        used.add(utt)
        items.append(Entry(id=utt, text=text, origin=origin, audio=str(wav.absolute())))
    items += [Skip("no_transcript", str(path)) for utt, path in wavs.items() if utt not in used]
    notes = {"split_folder": str(folder.absolute()),
             "transcript_lines_of_other_splits": other_splits}
    return Listing(items, total=len(items), notes=notes)
