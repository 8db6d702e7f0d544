"""The embedded demo speech corpus: what each split contains, and how one clip is rendered.

Planning and rendering are separate so that the corpus is byte-identical for a seed whatever the
number of workers: :func:`plan_split` draws every random choice of a split (language, sentence,
voice, rate, pitch, degradations, a per-clip seed) in the calling process, and
:func:`render_clip` is a pure function of one :class:`ClipPlan`.

Splits: ``train`` and ``td_pool`` mix languages (weighted to zh and en) with mild augmentation on
about half of the clips; the five evaluation presets mirror the paper's benchmarks: ``aishell``
(zh clean), ``meeting`` (zh, noise 10-20 dB + reverberation), ``net`` (zh, speed, pitch and a
telephone codec), ``clean`` (en clean) and ``other`` (en, harder voices + noise 10-20 dB).
Evaluation sentences come from a sentence partition disjoint from the training one.

Development splits ``dev_<preset>`` render a preset's conditions over sentences of the
td_pool's partition (never an evaluation sentence), for choosing settings without looking at
the presets. They are empty unless asked for.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.jsonl import write_json, write_jsonl
from stages.common.provenance import provenance
from stages.common.settings import setting
from stages.data.audio import TARGET_SAMPLE_RATE, resample, write_wav
from stages.demo import degrade
from stages.demo.draw import pick
from stages.demo.espeak import Espeak, voice_name
from stages.demo.grammar_large import BUILDERS as LARGE_GRAMMAR_LANGUAGES
from stages.demo.sentences import (
    GRAMMARS,
    LANGUAGES,
    Grammar,
    Language,
    generate_sentence,
    sample_sentences,
)

log = logging.getLogger(__name__)

EVAL_PRESETS = ("aishell", "meeting", "net", "clean", "other")
DEFAULT_SIZES = {"train": 1100, "td_pool": 300, "aishell": 40, "meeting": 40, "net": 40,
                 "clean": 40, "other": 40}



# Voice variants: the ordinary ones for most clips, harder ones for "other" and a few training
# clips (so that the harder preset is hard but learnable).
COMMON_VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
HARD_VARIANTS = ("croak", "klatt2", "klatt4", "f5", "m8", "grandpa", "aunty")
ENGLISH_BASES = ("en-us", "en")
ENGLISH_ACCENT_BASES = ("en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc")

NOISE_KINDS = ("white", "pink", "babble")
BABBLE_TALKERS = 3
PAD_SECONDS = (0.1, 0.3)  # silence before and after the speech
OUTPUT_PEAK = 0.9


@dataclass(frozen=True)
class Recipe:
    """How a split's clips are drawn. Ranges are (low, high), drawn uniformly per clip.

    ``mild_share`` of the clips get one to three of noise / reverberation / speed (each drawn
    with probability 1/2); without it, every listed degradation applies to every clip.
    """

    language: str  # a language code, or "mix" for the training mix
    partition: str  # sentence partition (see stages.demo.sentences.PARTITIONS)
    hard_voice_share: float = 0.0
    rate: tuple[int, int] = (150, 200)
    pitch: tuple[int, int] = (40, 60)
    gain_db: tuple[float, float] = (0.0, 0.0)
    mild_share: float = 0.0
    noise_kinds: tuple[str, ...] = ()
    snr_db: tuple[float, float] | None = None
    rt60: tuple[float, float] | None = None
    speed: tuple[float, float] | None = None
    codec: bool = False


_TRAIN_RECIPE = dict(language="mix", hard_voice_share=0.15, gain_db=(-6.0, 0.0), mild_share=0.5,
                     noise_kinds=NOISE_KINDS, snr_db=(15.0, 30.0), rt60=(0.15, 0.5),
                     speed=(0.9, 1.1))
RECIPES = {
    "train": Recipe(partition="train", **_TRAIN_RECIPE),
    "td_pool": Recipe(partition="td_pool", **_TRAIN_RECIPE),
    "aishell": Recipe(language="zh", partition="eval"),
    "meeting": Recipe(language="zh", partition="eval", noise_kinds=("babble", "babble", "pink"),
                      snr_db=(10.0, 20.0), rt60=(0.3, 0.6)),
    "net": Recipe(language="zh", partition="eval", speed=(0.85, 1.15), pitch=(20, 80),
                  codec=True),
    "clean": Recipe(language="en", partition="eval"),
    "other": Recipe(language="en", partition="eval", hard_voice_share=1.0,
                    noise_kinds=NOISE_KINDS, snr_db=(10.0, 20.0)),
}
RECIPES |= {f"dev_{preset}": replace(RECIPES[preset], partition="td_pool")
            for preset in EVAL_PRESETS}
SPLITS = tuple(RECIPES)


@dataclass(frozen=True, kw_only=True)
class CorpusSettings:
    """What the demo corpus holds."""

    seed: int = setting(1234, help="corpus seed")
    sizes: dict[str, int] = setting(
        DEFAULT_SIZES, metavar="NAME=COUNT",
        help="clips per split; unnamed splits keep their default, 0 skips a split")
    train_languages: tuple[Language, ...] = setting(LANGUAGES, metavar="LANG",
                                                    help="languages of train and td_pool")
    grammar: Grammar = setting(
        "small", help="sentence grammar: small (~1,200 zh and en sentences of 2-5 words, for "
        "tiny CPU models) or large (zh and en only, millions of sentences of 3-12 words, for "
        "GPU-sized models)")
    telephone_share: float = setting(
        0.0, metavar="SHARE",
        help="share of train and td_pool clips also passed through the net preset's telephone "
        "codec (8 kHz band, 8-bit mu-law), drawn per clip; 0 keeps them wideband")
    workers: int = setting(1, volatile=True, help="synthesis processes")
    progress: bool = setting(True, volatile=True, help="progress bar on stderr")

    def __post_init__(self) -> None:
        for name, count in self.sizes.items():
            if name not in SPLITS:
                raise UserError(f"--sizes: unknown split {name!r}; the splits are "
                                f"{', '.join(SPLITS)}")
            if count < 0:
                raise UserError(f"--sizes: count for {name} must be 0 or more, got {count}")
        if not self.train_languages:
            raise UserError("--train-languages: give at least one language")
        if not 0.0 <= self.telephone_share <= 1.0:
            raise UserError(f"--telephone-share must be between 0 and 1, got "
                            f"{self.telephone_share}")


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip, drawn in advance so rendering is pure."""

    id: str
    split: str
    language: str
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int
    lead_s: float
    tail_s: float
    speed: float = 1.0
    rt60: float = 0.0  # 0 = no reverberation
    noise: str = ""  # "" = no noise, else one of NOISE_KINDS
    snr_db: float = 0.0
    codec: bool = False
    gain_db: float = 0.0

    def details(self) -> dict:
        return asdict(self)


def train_language_weights(languages: Sequence[str]) -> dict[str, float]:
    """Default mix: zh and en 40 % each, the remaining 20 % shared by the other languages."""
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"unsupported training languages {unknown or '[]'}; "
                         f"choose from {list(LANGUAGES)}")
    languages = list(dict.fromkeys(languages))
    others = [lang for lang in languages if lang not in ("zh", "en")]
    raw = {lang: 0.4 if lang in ("zh", "en") else 0.2 / len(others) for lang in languages}
    total = sum(raw.values())
    return {lang: weight / total for lang, weight in raw.items()}


def allocate(count: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``count`` by ``weights`` exactly (largest remainder, ties in the given order)."""
    exact = {key: count * weight for key, weight in weights.items()}
    counts = {key: int(np.floor(value)) for key, value in exact.items()}
    remainders = sorted(weights, key=lambda key: -(exact[key] - counts[key]))
    for key in remainders[: count - sum(counts.values())]:
        counts[key] += 1
    return counts


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _voice(rng: np.random.Generator, language: str, hard: bool) -> str:
    variant = pick(rng, HARD_VARIANTS if hard else COMMON_VARIANTS)
    if language == "en":
        bases = ENGLISH_ACCENT_BASES if hard else ENGLISH_BASES
        return voice_name(language, variant, pick(rng, bases))
    return voice_name(language, variant)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 2) -> float:
    return round(float(rng.uniform(*bounds)), digits)


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _plan_clip(split: str, index: int, language: str, text: str, rng: np.random.Generator,
               telephone_share: float = 0.0) -> ClipPlan:
    """Draw one clip's voice and degradations following the split's recipe; a training-mix
    clip also gets the telephone codec with probability ``telephone_share``."""
    recipe = RECIPES[split]
    hard = rng.random() < recipe.hard_voice_share
    plan = {
        "id": f"{split}-{index:05d}-{language}", "split": split, "language": language,
        "text": text, "voice": _voice(rng, language, hard),
        "rate": _integer(rng, recipe.rate), "pitch": _integer(rng, recipe.pitch),
        "seed": int(rng.integers(2**31)),
        "lead_s": _uniform(rng, PAD_SECONDS), "tail_s": _uniform(rng, PAD_SECONDS),
        "gain_db": _uniform(rng, recipe.gain_db), "codec": recipe.codec,
    }
    kinds = [kind for kind, bounds in (("noise", recipe.snr_db), ("reverb", recipe.rt60),
                                       ("speed", recipe.speed)) if bounds is not None]
    if recipe.mild_share:
        if rng.random() >= recipe.mild_share:
            kinds = []
        else:  # one to three of them, each with probability 1/2
            kinds = [kind for kind in kinds if rng.random() < 0.5] or [pick(rng, kinds)]
    for kind in kinds:
        if kind == "noise":
            plan["noise"] = pick(rng, recipe.noise_kinds)
            plan["snr_db"] = _uniform(rng, recipe.snr_db)
        elif kind == "reverb":
            plan["rt60"] = _uniform(rng, recipe.rt60)
        else:
            plan["speed"] = _uniform(rng, recipe.speed, 3)
    if recipe.language == "mix" and telephone_share > 0:  # no draw at 0: corpora stay as they were
        plan["codec"] = bool(rng.random() < telephone_share)
    return ClipPlan(**plan)


def split_languages(split: str, size: int, train_languages: Sequence[str]) -> dict[str, int]:
    """Clips per language in ``split``."""
    language = RECIPES[split].language
    if language == "mix":
        return allocate(size, train_language_weights(train_languages))
    return {language: size}


def plan_split(split: str, size: int, seed: int, train_languages: Sequence[str] = LANGUAGES,
               grammar: str = "small", telephone_share: float = 0.0) -> list[ClipPlan]:
    """The clips of ``split``: distinct sentences of ``grammar`` from its partition, languages
    interleaved."""
    if split not in RECIPES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    rng = _split_rng(seed, split)
    counts = split_languages(split, size, train_languages)
    partition = RECIPES[split].partition
    sentences = {lang: sample_sentences(lang, n, rng, partition, grammar=grammar)
                 for lang, n in counts.items()}
    order = [lang for lang, n in counts.items() for _ in range(n)]
    order = [order[i] for i in rng.permutation(len(order))]
    cursor = dict.fromkeys(counts, 0)
    plans = []
    for index, language in enumerate(order):
        sentence = sentences[language][cursor[language]]
        cursor[language] += 1
        plans.append(_plan_clip(split, index, language, sentence.text, rng, telephone_share))
    return plans


def _speech(espeak: Espeak, text: str, voice: str, rate: int, pitch: int, seed: int
            ) -> np.ndarray:
    samples, rate_hz = espeak.synthesize(text, voice, rate=rate, pitch=pitch, seed=seed)
    return resample(samples, rate_hz, TARGET_SAMPLE_RATE)


def _babble(espeak: Espeak, language: str, length: int, rng: np.random.Generator) -> np.ndarray:
    talkers = []
    for _ in range(BABBLE_TALKERS):
        text = generate_sentence(language, rng).text
        voice = _voice(rng, language, hard=False)
        talkers.append(_speech(espeak, text, voice, int(rng.integers(150, 201)),
                               int(rng.integers(30, 71)), int(rng.integers(2**31))))
    return degrade.babble_noise(talkers, length, rng)


def render_clip(plan: ClipPlan, espeak: Espeak) -> np.ndarray:
    """Synthesize and degrade one clip: 16 kHz mono float32, peak-normalized then gained."""
    rng = np.random.default_rng(plan.seed)
    speech = _speech(espeak, plan.text, plan.voice, plan.rate, plan.pitch, plan.seed)
    lead, tail = round(plan.lead_s * TARGET_SAMPLE_RATE), round(plan.tail_s * TARGET_SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    if plan.speed != 1.0:
        audio = degrade.change_speed(audio, plan.speed)
    if plan.rt60 > 0:
        audio = degrade.reverberate(audio, plan.rt60, rng)
    if plan.noise:
        if plan.noise == "white":
            noise = degrade.white_noise(audio.size, rng)
        elif plan.noise == "pink":
            noise = degrade.pink_noise(audio.size, rng)
        elif plan.noise == "babble":
            noise = _babble(espeak, plan.language, audio.size, rng)
        else:
            raise ValueError(f"unknown noise kind {plan.noise!r}; expected one of {NOISE_KINDS}")
        audio = degrade.add_noise(audio, noise, plan.snr_db)
    if plan.codec:
        audio = degrade.telephone_codec(audio)
    audio = degrade.peak_normalize(audio, OUTPUT_PEAK)
    return degrade.apply_gain(audio, plan.gain_db)


# --- building the corpus on disk ------------------------------------------------------------

_worker_espeak: Espeak | None = None


def _render_job(job: tuple[ClipPlan, str]) -> int:
    """Pool worker: render one clip to its wav file; returns its length in samples."""
    global _worker_espeak
    if _worker_espeak is None:
        _worker_espeak = Espeak()
    plan, path = job
    audio = render_clip(plan, _worker_espeak)
    write_wav(path, audio, TARGET_SAMPLE_RATE)
    return int(audio.size)


def manifest_row(plan: ClipPlan) -> dict:
    """The manifest line of a clip (DESIGN §3); audio is relative to the manifests folder."""
    return {"audio": f"../wavs/{plan.split}/{plan.id}.wav", "text": plan.text, "task": "asr",
            "begin_time": -1, "end_time": -1, "language": plan.language, "id": plan.id}


def _seconds_summary(plans: list[ClipPlan], frames: dict[str, int]) -> dict:
    def block(selected: list[ClipPlan]) -> dict:
        seconds = sum(frames[plan.id] for plan in selected) / TARGET_SAMPLE_RATE
        return {"clips": len(selected), "seconds": round(seconds, 2),
                "hours": round(seconds / 3600, 4)}

    languages = sorted({plan.language for plan in plans})
    return {**block(plans),
            "languages": {lang: block([p for p in plans if p.language == lang])
                          for lang in languages}}


def _remove_split(output_dir: Path, split: str) -> None:
    """Delete a split's manifest, details and wavs left by an earlier run (nothing else)."""
    paths = [output_dir / "manifests" / f"{split}.jsonl", output_dir / "details" / f"{split}.jsonl"]
    wav_dir = output_dir / "wavs" / split
    paths += sorted(wav_dir.glob("*.wav"))
    existing = [path for path in paths if path.exists()]
    for path in existing:
        path.unlink()
    if wav_dir.is_dir() and not any(wav_dir.iterdir()):
        wav_dir.rmdir()
    if existing:
        log.info("%s: size 0, removed %d files of an earlier run", split, len(existing))


def build_corpus(output_dir: str | Path, sizes: dict[str, int], seed: int,
                 train_languages: Sequence[str] = LANGUAGES, workers: int = 1,
                 progress: bool = True, grammar: str = "small", telephone_share: float = 0.0
                 ) -> dict:
    """Plan, render and write the demo corpus; returns the ``corpus.json`` document.

    Layout: ``wavs/<split>/<id>.wav`` (16 kHz mono PCM-16), ``manifests/<split>.jsonl``,
    ``details/<split>.jsonl`` (each clip's voice and degradations) and ``corpus.json``. Splits
    with size 0 are skipped, and their files from an earlier run removed. A split's old
    manifest is removed before its wavs are rewritten, so a manifest on disk always describes
    complete audio.
    """
    output_dir = Path(output_dir)
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown split name(s) {unknown}; expected some of {list(SPLITS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if grammar not in GRAMMARS:
        raise UserError(f"unknown grammar {grammar!r}; expected one of {list(GRAMMARS)}")
    if grammar == "large":
        outside = sorted(set(train_languages) - set(LARGE_GRAMMAR_LANGUAGES))
        if outside:
            raise UserError(f"the large grammar has only {list(LARGE_GRAMMAR_LANGUAGES)}; "
                            f"--train-languages also names {outside}")
    started = time.perf_counter()
    plans: dict[str, list[ClipPlan]] = {}
    for split in SPLITS:
        if sizes.get(split, 0) <= 0:
            continue
        try:
            plans[split] = plan_split(split, sizes[split], seed, train_languages, grammar,
                                      telephone_share)
        except ValueError as err:
            raise UserError(f"cannot plan split {split} with {sizes[split]} clips: {err}. "
                            f"Ask for fewer clips (--sizes {split}=N).") from err

    (output_dir / "corpus.json").unlink(missing_ok=True)
    for split in SPLITS:  # a split not asked for this time must not keep an old manifest
        if split not in plans:
            _remove_split(output_dir, split)
    jobs = []
    for split, split_plans in plans.items():
        (output_dir / "manifests" / f"{split}.jsonl").unlink(missing_ok=True)
        wav_dir = output_dir / "wavs" / split
        wav_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(plan, str(wav_dir / f"{plan.id}.wav")) for plan in split_plans]

    frames: dict[str, int] = {}
    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc="synth_demo", unit="clip",
                                       file=sys.stderr, disable=not progress))
        if workers == 1:
            results = map(_render_job, jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = pool.map(_render_job, jobs, chunksize=4)
        for (plan, _), length in zip(jobs, results, strict=True):  # results come in job order
            frames[plan.id] = length
            bar.update()

    splits_summary = {}
    for split, split_plans in plans.items():
        keep = {f"{plan.id}.wav" for plan in split_plans}
        stale = [path for path in (output_dir / "wavs" / split).glob("*.wav")
                 if path.name not in keep]
        for path in stale:  # left over from an earlier, larger run into the same folder
            path.unlink()
        if stale:
            log.info("%s: removed %d stale wav files", split, len(stale))
        write_jsonl(output_dir / "details" / f"{split}.jsonl",
                    [{**plan.details(), "seconds": round(frames[plan.id] / TARGET_SAMPLE_RATE, 3)}
                     for plan in split_plans])
        write_jsonl(output_dir / "manifests" / f"{split}.jsonl",
                    [manifest_row(plan) for plan in split_plans])
        splits_summary[split] = {"manifest": f"manifests/{split}.jsonl",
                                 **_seconds_summary(split_plans, frames),
                                 "recipe": asdict(RECIPES[split])}

    settings = {"seed": seed, "grammar": grammar, "telephone_share": telephone_share,
                "sizes": {split: len(p) for split, p in plans.items()},
                "train_languages": list(train_languages), "sample_rate": TARGET_SAMPLE_RATE}
    all_plans = [plan for split_plans in plans.values() for plan in split_plans]
    corpus = {
        **settings,
        "splits": splits_summary,
        "total": {key: value for key, value in _seconds_summary(all_plans, frames).items()
                  if key != "languages"},
        "espeak_sample_rate": Espeak().sample_rate,
        "run": {"workers": workers, "wall_seconds": round(time.perf_counter() - started, 2)},
        "provenance": provenance(settings),
    }
    write_json(output_dir / "corpus.json", corpus)
    return corpus
