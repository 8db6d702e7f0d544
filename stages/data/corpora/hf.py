"""A Hugging Face ``datasets`` dataset with an audio column and a text column, read offline.

The audio column is read without decoding (``Audio(decode=False)``: the stored bytes and path,
so no codec package is needed): a row whose path is a readable file keeps it, a row with audio
bytes becomes a FLAC file written by the driver. Parquet and Arrow files are streamed, so a
large dataset is not first copied into the datasets cache. ``datasets`` is imported when this
format runs (it takes seconds to import; the other formats do not need it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common.errors import UserError
from stages.data.corpora.base import Entry, Listing, Origin, Problem, choose

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions

LAYOUT = """\
hf            --source DATASET [--subset test] --language en (or --language-column COLUMN)
              [--text-column text] [--audio-column audio] [--id-column id] [--audio-dir DIR]
    DATASET: a save_to_disk folder; a .parquet or .arrow file, or a folder of them (splits
    from the file names, e.g. data/test-00000-of-00001.parquet); or a hub id already in the
    local hub cache (`hf download --repo-type dataset NAME` beforehand; nothing is
    downloaded). --subset: the split (CONFIG/SPLIT for a hub dataset with configurations).
    The audio column (an Audio feature, a {bytes, path} struct or a path string) is read
    without decoding: rows pointing at readable files keep them; audio bytes are written once
    as FLAC under --audio-dir (default: <output stem>_audio/ beside the manifest). Ids: the
    --id-column, else the "id" column when there is one, else <split>-<row number>."""
USES = frozenset({"subset", "language", "text_column", "audio_column", "id_column",
                  "language_column", "audio_dir"})
DEFAULT_LANGUAGE = None
BATCH_ROWS = 64  # rows fetched from Arrow at a time
_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def read(source: str, options: PrepareOptions) -> Listing:
    if options.language is None and options.language_column is None:
        raise UserError("--format hf: give the language of the rows with --language (e.g. "
                        "--language en) or a column of codes with --language-column")
    config, split = _config_and_split(options.subset)
    dataset, split, kind, base = open_split(source, config, split)
    columns = _columns(dataset, source, options)
    features = dataset.features
    dataset = _plain_audio(dataset, options.audio_column, features[options.audio_column], source)
    total = _size(dataset, split)
    rows = _rows(dataset.select_columns(list(dict.fromkeys(columns.values()))), columns,
                 source, split, base)
    notes = {"dataset": kind, "split": split, "columns": columns}
    return Listing(rows, total=total, notes=notes)


def _size(dataset: Any, split: str | None) -> int | None:
    """Rows of the split, for the progress bar: a streamed dataset knows it only from its
    metadata (Parquet footers, a dataset card), when at all."""
    if hasattr(dataset, "__len__"):
        return len(dataset)
    info = (dataset.info.splits or {}).get(split) if split else None
    return info.num_examples if info is not None and info.num_examples else None


def _config_and_split(subset: str | None) -> tuple[str | None, str | None]:
    if subset and "/" in subset:
        config, split = subset.split("/", 1)
        return config, split
    return None, subset


def open_split(source: str, config: str | None, split: str | None
               ) -> tuple[Any, str | None, str, Path]:
    """(dataset of one split, the split's name, how it was found, folder relative audio paths
    start at). Loading errors become UserErrors that name the source."""
    import datasets

    path = Path(source)
    if not path.exists():
        if not _HUB_ID.fullmatch(source):
            raise UserError(f"{source}: no such file or folder (nor a hub dataset id)")
        path, kind = _hub_snapshot(source), "hub cache"
    else:
        kind = "files"
    try:
        if path.is_dir() and any((path / name).is_file() for name in _SAVED_MARKERS):
            loaded, kind = datasets.load_from_disk(str(path)), "save_to_disk"
        elif path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
            if builder is None:
                raise UserError(f"{path}: not a .parquet or .arrow file; give a save_to_disk "
                                f"folder, Parquet/Arrow files or a hub dataset id")
            loaded, kind = datasets.load_dataset(builder, data_files=str(path),
                                                 streaming=True), builder
        else:
            loaded = datasets.load_dataset(str(path), name=config, streaming=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{source}: cannot open it as a dataset ({err})") from err
    base = path if path.is_dir() else path.parent
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        split = choose(split, loaded.keys(), what="split", where=source)
        return loaded[split], split, kind, base
    if split is not None:
        raise UserError(f"{source}: a single dataset without splits; drop --subset {split}")
    return loaded, None, kind, base


def _hub_snapshot(name: str) -> Path:
    """The local hub cache's copy of dataset ``name``; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(f"{name}: not a file or folder, and not in the local hub cache; fetch "
                        f"it where there is network (`hf download --repo-type dataset {name}`, "
                        f"HF_HOME/HF_HUB_CACHE as here) or give its files") from None


def _columns(dataset: Any, source: str, options: PrepareOptions) -> dict[str, str]:
    """Role (audio, text, id, language) -> column name; a named column must exist."""
    if dataset.features is None:
        raise UserError(f"{source}: the dataset does not declare its columns' types")
    present = list(dataset.column_names)
    columns = {"audio": options.audio_column, "text": options.text_column}
    if options.id_column is not None:
        columns["id"] = options.id_column
    elif "id" in present:
        columns["id"] = "id"
    if options.language_column is not None:
        columns["language"] = options.language_column
    for role, name in columns.items():
        if name not in present:
            raise UserError(f"{source}: no column {name!r} for the {role} (columns: "
                            f"{', '.join(present)}); name it with --{role}-column")
    return columns


def _plain_audio(dataset: Any, column: str, feature: Any, source: str) -> Any:
    """The dataset with its audio column as stored ({bytes, path} or a path string)."""
    from datasets import Audio, Value

    if isinstance(feature, Audio):
        return dataset.cast_column(column, Audio(decode=False))
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return dataset
    if isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
        return dataset
    raise UserError(f"{source}: column {column!r} holds {feature}, not audio (an Audio "
                    f"feature, a {{bytes, path}} struct or file paths); name the audio column "
                    f"with --audio-column")


def _rows(dataset: Any, columns: dict[str, str], source: str, split: str | None,
          base: Path) -> Iterator[Entry | Problem]:
    index = 0
    for batch in dataset.iter(batch_size=BATCH_ROWS):
        for k in range(len(batch[columns["audio"]])):
            origin = Origin(source, item=f"{split} row {index}" if split else f"row {index}")
            yield _row({role: batch[name][k] for role, name in columns.items()}, origin,
                       index, split, base)
            index += 1


def _row(values: dict[str, Any], origin: Origin, index: int, split: str | None,
         base: Path) -> Entry | Problem:
    text = values["text"]
    if text is None:
        return Problem(origin, "empty_text", "the text is null")
    if not isinstance(text, str):
        return Problem(origin, "bad_line", f"the text is {type(text).__name__} {text!r}, "
                                           f"not a string")
    if "id" in values:
        if values["id"] is None:
            return Problem(origin, "bad_line", "the id is null")
        utt = str(values["id"])
    else:
        utt = f"{split or 'row'}-{index:07d}"
    language = values.get("language")
    if language is not None and not isinstance(language, str):
        return Problem(origin, "bad_language", f"the language is {language!r}, not a code")
    audio = values["audio"]
    path, data = (audio, None) if isinstance(audio, str) else (
        (audio.get("path"), audio.get("bytes")) if isinstance(audio, dict) else (None, None))
    readable = _readable_file(path, base)
    if readable is not None:
        return Entry(id=utt, text=text, origin=origin, audio=readable, language=language)
    if data:
        return Entry(id=utt, text=text, origin=origin, audio_bytes=data, language=language)
    detail = (f"{path!r} is not a readable file and the row holds no audio bytes" if path
              else "the row holds no audio")
    return Problem(origin, "audio_not_found", detail)


def _readable_file(path: str | None, base: Path) -> str | None:
    """The absolute path of ``path`` (relative paths start at the dataset's folder) when it is
    a readable file, else None."""
    if not path:
        return None
    full = Path(path) if os.path.isabs(path) else base / path
    return str(full.absolute()) if full.is_file() and os.access(full, os.R_OK) else None
