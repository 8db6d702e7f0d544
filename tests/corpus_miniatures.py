"""Miniatures of the corpus layouts stages.prepare reads, built from espeak-ng speech.

Each builder writes a small corpus in its real layout (LibriSpeech FLAC, AISHELL-1 WAV,
WenetSpeech long Opus files with segments, a Kaldi folder with segments and pipe commands, a
Hugging Face dataset) and returns what the prepared manifest must hold: an ``Expected`` row per
utterance, in the corpus' order.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from stages.demo.espeak import Espeak, voice_name

SPEECH_RATE = 16_000
OPUS_RATE = 48_000

SENTENCES = {
    "en": ["the little dog found a red ball", "the teacher carried a green box",
           "she reads a book in the park", "we walk to the river today"],
    "zh": ["今天我们在公园看书", "老师在学校写字", "我们明天去北京", "他喜欢喝茶"],
}


@dataclass(frozen=True)
class Expected:
    id: str
    text: str
    language: str
    seconds: float  # of the utterance (the segment where there is one)
    begin: float | None = None
    end: float | None = None


def speech(espeak: Espeak, rate: int = SPEECH_RATE) -> dict[str, list[np.ndarray]]:
    """Every sentence spoken, float32 mono at ``rate``, by language."""
    clips: dict[str, list[np.ndarray]] = {}
    for language, sentences in SENTENCES.items():
        for text in sentences:
            samples, native = espeak.synthesize(text, voice_name(language))
            clips.setdefault(language, []).append(
                soxr.resample(samples, native, rate).astype(np.float32))
    return clips


def _write(path: Path, samples: np.ndarray, rate: int = SPEECH_RATE, **kwargs) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, **kwargs)
    return len(samples) / rate


def librispeech(root: Path, clips: dict[str, list[np.ndarray]]) -> dict[str, list[Expected]]:
    """``LibriSpeech/{test-clean,test-other}/<speaker>/<chapter>/`` with .trans.txt + .flac."""
    layout = {"test-clean": [("1089", "134686", [0, 1]), ("121", "121726", [2])],
              "test-other": [("1688", "142285", [3])]}
    expected: dict[str, list[Expected]] = {}
    for subset, chapters in layout.items():
        for speaker, chapter, sentences in chapters:
            folder = root / subset / speaker / chapter
            lines = []
            for n, k in enumerate(sentences):
                utt = f"{speaker}-{chapter}-{n:04d}"
                text = SENTENCES["en"][k].upper()
                seconds = _write(folder / f"{utt}.flac", clips["en"][k], format="FLAC")
                lines.append(f"{utt} {text}\n")
                expected.setdefault(subset, []).append(Expected(utt, text, "en", seconds))
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return expected


def aishell(root: Path, clips: dict[str, list[np.ndarray]]) -> dict[str, list[Expected]]:
    """``data_aishell/wav/{test,dev}/<speaker>/*.wav`` and the one transcript of all splits:
    space-separated words, a line for a train speaker that was not unpacked, and a test WAV
    without a transcript line."""
    words = ["今天 我们 在 公园 看书", "老师 在 学校 写字", "我们 明天 去 北京", "他 喜欢 喝茶"]
    wav = root / "wav"
    rows = [("test", "BAC009S0764W0121", 0), ("dev", "BAC009S0724W0121", 1),
            ("test", "BAC009S0764W0122", 2)]
    expected: dict[str, list[Expected]] = {}
    lines = []
    for split, utt, k in rows:
        seconds = _write(wav / split / utt[6:11] / f"{utt}.wav", clips["zh"][k],
                         subtype="PCM_16")
        lines.append(f"{utt} {words[k]}\n")
        expected.setdefault(split, []).append(Expected(utt, words[k], "zh", seconds))
    lines.insert(1, f"BAC009S0002W0122 {words[3]}\n")  # a train speaker, not unpacked here
    _write(wav / "test" / "S0764" / "BAC009S0764W0199.wav", clips["zh"][3], subtype="PCM_16")
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("".join(lines))
    return expected


def _long_recording(pieces: list[np.ndarray], gaps: list[float], rate: int
                    ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``pieces`` separated by silences of ``gaps`` seconds (one more gap than pieces);
    returns the signal and each piece's (begin, end) in seconds."""
    parts, bounds, position = [], [], 0
    for piece, gap in zip(pieces, gaps, strict=False):
        silence = np.zeros(int(gap * rate), np.float32)
        parts += [silence, piece]
        position += len(silence)
        bounds.append((position / rate, (position + len(piece)) / rate))
        position += len(piece)
    parts.append(np.zeros(int(gaps[-1] * rate), np.float32))
    return np.concatenate(parts), bounds


def wenetspeech(root: Path, clips48: dict[str, list[np.ndarray]]
                ) -> dict[str, list[Expected]]:
    """``WenetSpeech.json`` over two long 48 kHz Opus recordings, segments in several
    subsets (one of them only in L)."""
    recordings = {"M0001": ("audio/test/meeting/M0001.opus", [0, 1], ["TEST_MEETING"] * 2),
                  "N0001": ("audio/test/net/N0001.opus", [2, 3], ["TEST_NET", "L"])}
    audios, expected = [], {}
    for aid, (relative, sentences, subsets) in recordings.items():
        signal, bounds = _long_recording([clips48["zh"][k] for k in sentences],
                                         [0.6, 0.9, 0.5], OPUS_RATE)
        _write(root / relative, signal, OPUS_RATE, format="OGG", subtype="OPUS")
        segments = []
        for n, (k, subset, (begin, end)) in enumerate(zip(sentences, subsets, bounds,
                                                          strict=True)):
            begin, end = round(begin, 2), round(end, 2)
            sid = f"{aid}_S{n:05d}"
            segments.append({"sid": sid, "confidence": 1.0, "begin_time": begin,
                             "end_time": end, "subsets": [subset], "text": SENTENCES["zh"][k]})
            expected.setdefault(subset, []).append(
                Expected(sid, SENTENCES["zh"][k], "zh", round(end - begin, 3), begin, end))
        audios.append({"aid": aid, "duration": len(signal) / OPUS_RATE, "path": relative,
                       "source": "meeting", "segments": segments})
    index = {"dataset": "WenetSpeech", "language": "Chinese", "version": "1.0",
             "audios": audios}
    (root / "WenetSpeech.json").write_text(json.dumps(index, ensure_ascii=False, indent=1))
    return expected


def kaldi(folder: Path, audio: Path, clips: dict[str, list[np.ndarray]]) -> list[Expected]:
    """A Kaldi data folder whose wav.scp reads a WAV directly and three files through flac,
    sox and ffmpeg pipes; ``segments`` cut each recording in two (one to the end, -1);
    utt2lang gives zh and en."""
    recordings = {  # recording -> (file, wav.scp value, language, sentences)
        "rec1": ("rec1.wav", "{f}", "zh", [0, 1]),
        "rec2": ("rec2.flac", "flac -c -d -s {f} |", "en", [0, 1]),
        "rec3": ("rec3.flac", "sox {f} -t wav - |", "zh", [2, 3]),
        "rec4": ("rec4.wav", "ffmpeg -nostdin -i {f} -f wav -ar 16000 -ac 1 - |", "en", [2, 3]),
    }
    wav_scp, segments, text, utt2lang, expected = [], [], [], [], []
    for rec, (name, value, language, sentences) in recordings.items():
        signal, bounds = _long_recording([clips[language][k] for k in sentences],
                                         [0.4, 0.8, 0.3], SPEECH_RATE)
        seconds = _write(audio / name, signal)
        wav_scp.append(f"{rec} {value.format(f=audio / name)}\n")
        for n, (k, (begin, end)) in enumerate(zip(sentences, bounds, strict=True)):
            utt = f"{rec}-{n}"
            begin = round(begin, 2)
            end = round(end, 2) if n == 0 else -1  # the last segment runs to the end
            segments.append(f"{utt} {rec} {begin} {end}\n")
            text.append(f"{utt} {SENTENCES[language][k]}\n")
            utt2lang.append(f"{utt} {language}\n")
            stop = seconds if end == -1 else end
            expected.append(Expected(utt, SENTENCES[language][k], language,
                                     round(stop - begin, 3), begin, end))
    folder.mkdir(parents=True)
    for name, lines in (("wav.scp", wav_scp), ("segments", segments), ("text", text),
                        ("utt2lang", utt2lang)):
        (folder / name).write_text("".join(lines))
    return expected


def encoded(samples: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SPEECH_RATE, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def hf_rows(audio: Path, clips: dict[str, list[np.ndarray]]) -> tuple[dict, list[Expected]]:
    """Columns of a small ASR dataset: WAV bytes, FLAC bytes, and a row that points at a
    file and holds no bytes; the transcript column is ``sentence``."""
    file_row = audio / "on_disk.wav"
    _write(file_row, clips["en"][3], subtype="PCM_16")
    values = [
        ({"bytes": encoded(clips["en"][0], "WAV"), "path": "a.wav"}, 0),
        ({"bytes": encoded(clips["en"][1], "FLAC"), "path": "b.flac"}, 1),
        ({"bytes": encoded(clips["en"][2], "WAV"), "path": None}, 2),
        ({"bytes": None, "path": str(file_row)}, 3),
    ]
    columns = {"utt": [f"spk1_{k}" for _, k in values],
               "audio": [value for value, _ in values],
               "sentence": [SENTENCES["en"][k] for _, k in values]}
    expected = [Expected(f"spk1_{k}", SENTENCES["en"][k], "en",
                         len(clips["en"][k]) / SPEECH_RATE) for _, k in values]
    return columns, expected
