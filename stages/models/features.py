"""Log-mel features of a whole batch in one pass on the model's device, equal to the processor's
own per-clip features.

Why: calling the processor once per clip costs ~2.5 ms of host time per clip on a GPU machine
(numpy padding, a device round trip of the features, a synchronisation per clip): a third of the
decoding time of a 128-clip batch (README "Decoding"). One processor call per batch is not the
answer: a clip's features would then depend on its batch mates (Qwen3-ASR pads to the longest
clip, and the STFT's reflection at a clip's end then sees the padding).

The recipe mirrors the Whisper-style extractors the project's families use (GLM-ASR's
``WhisperFeatureExtractor`` behind fixed windows, Whisper's own one window, Qwen3-ASR's extractor)
and is checked against
the processor on probe clips when an adapter is built (:func:`verified_recipe`); a processor it
does not know, or one it disagrees with, keeps the per-clip processor path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

FEATURES, MASK = "input_features", "input_features_mask"
# Largest difference to the processor's features the check accepts (its GPU STFT is documented
# as equal to its CPU one within 1e-5; log-mel values are of order 1).
TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class LogMelRecipe:
    """How a clip becomes feature pieces (one per window, or one for the whole clip)."""

    n_fft: int
    hop: int
    mel_filters: np.ndarray           # [n_freq, n_mels]
    window_samples: int | None = None  # GLM-ASR: split into windows of this many samples
    max_windows: int | None = None     # ... at most this many (longer clips: processor path)
    pad_to: int | None = None          # Whisper: pad every piece to this many samples
    min_samples: int = 0               # Qwen3-ASR: zero-pad shorter clips (counted as audio)
    frame_multiple: int = 1            # Qwen3-ASR: pad the frame axis to a multiple of this
    with_mask: bool = True             # the processor returns a feature mask (Whisper's: none)

    def pieces(self, clip: np.ndarray) -> list[np.ndarray] | None:
        """The clip's pieces, or None when this recipe does not cover it."""
        if self.window_samples is None:
            pieces = [clip]
        else:
            count = max(1, -(-clip.size // self.window_samples))
            if self.max_windows is not None and count > self.max_windows:
                return None  # the processor truncates (with a warning): let it
            pieces = [clip[i * self.window_samples:(i + 1) * self.window_samples]
                      for i in range(count)]
        if self.pad_to is not None and any(p.size > self.pad_to for p in pieces):
            return None
        return pieces


def recipe_for(processor) -> LogMelRecipe | None:
    """The recipe for a processor this module knows (by class), else None."""
    extractor = getattr(processor, "feature_extractor", None)
    if extractor is None or getattr(extractor, "dither", 0.0) != 0.0 \
            or getattr(extractor, "do_normalize", False):
        return None
    common = {"n_fft": extractor.n_fft, "hop": extractor.hop_length,
              "mel_filters": np.asarray(extractor.mel_filters, dtype=np.float32)}
    processor_name, extractor_name = type(processor).__name__, type(extractor).__name__
    if processor_name == "GlmAsrProcessor" and extractor_name == "WhisperFeatureExtractor":
        return LogMelRecipe(**common,
                            window_samples=int(extractor.sampling_rate * extractor.chunk_length),
                            max_windows=int(processor.max_audio_len // extractor.chunk_length),
                            pad_to=int(extractor.n_samples))
    if processor_name == "WhisperProcessor" and extractor_name == "WhisperFeatureExtractor":
        # One 30 s window per clip (the whisper family refuses longer clips), no mask.
        return LogMelRecipe(**common, window_samples=int(extractor.n_samples), max_windows=1,
                            pad_to=int(extractor.n_samples), with_mask=False)
    if processor_name == "Qwen3ASRProcessor" and extractor_name == "Qwen3ASRFeatureExtractor":
        n_window = type(processor).audio_kwargs.get("n_window", extractor.n_window)
        return LogMelRecipe(**common, min_samples=int(extractor.min_length),
                            frame_multiple=2 * int(n_window) if n_window else 1)
    return None


def to_device(pieces: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """The pieces as rows of one zero-padded float32 tensor on ``device``. Only the samples
    cross (the zeros up to a Whisper window's 30 s are added on the device), through pinned
    memory on CUDA (torch caches pinned blocks, so it is allocated once)."""
    width = max(p.size for p in pieces)
    host = torch.empty((len(pieces), width), dtype=torch.float32,
                       pin_memory=device.type == "cuda")
    rows = host.numpy()
    for row, piece in enumerate(pieces):
        rows[row, :piece.size] = piece
        rows[row, piece.size:] = 0.0
    return host.to(device, non_blocking=True)


def log_mel_batch(recipe: LogMelRecipe, clips: Sequence[np.ndarray], device: torch.device
                  ) -> list[tuple[dict[str, torch.Tensor], tuple[int, ...]]] | None:
    """Each clip's audio inputs (features and mask, as the processor returns them for that clip
    alone), computed in one batched STFT on ``device``, with the clip's audio frames per piece
    (what its prompt depends on; known without reading the device). None if a clip is outside
    the recipe."""
    per_clip = [recipe.pieces(np.asarray(c, dtype=np.float32)) for c in clips]
    if any(p is None for p in per_clip):
        return None
    pieces = [piece for clip_pieces in per_clip for piece in clip_pieces]
    real = [max(p.size, recipe.min_samples) for p in pieces]   # samples the mask counts
    length = [recipe.pad_to or n for n in real]                 # samples the STFT sees
    signal = torch.nn.functional.pad(to_device(pieces, device), (0, max(length) - max(
        p.size for p in pieces)))
    lengths = torch.tensor(length, device=device)

    # torch.stft(center=True) reflects each end of the signal it is given; a piece shorter than
    # the batch gets its own reflection by hand, then one STFT runs without centering.
    half = recipe.n_fft // 2
    padded = torch.nn.functional.pad(signal, (half, half))
    padded[:, :half] = signal[:, 1:half + 1].flip(1)
    rows = torch.arange(len(pieces), device=device)[:, None]
    offsets = torch.arange(half, device=device)[None, :]
    padded[rows, lengths[:, None] + half + offsets] = signal[rows, lengths[:, None] - 2 - offsets]
    window = torch.hann_window(recipe.n_fft, device=device)
    stft = torch.stft(padded, recipe.n_fft, recipe.hop, window=window, center=False,
                      return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    filters = torch.from_numpy(recipe.mel_filters).to(device)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()

    frames = lengths // recipe.hop                               # the STFT frames of each piece
    frame_index = torch.arange(log_spec.shape[-1], device=device)
    inside = frame_index[None, :] < frames[:, None]
    peak = log_spec.masked_fill(~inside[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
    features = ((torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0) * inside[:, None, :]
    # The mask marks the frames a sample-level mask of `real` ones keeps at every hop-th sample.
    audio_frames = [min(-(-n // recipe.hop), total // recipe.hop)
                    for n, total in zip(real, length, strict=True)]
    mask = (frame_index[None, :] < torch.tensor(audio_frames, device=device)[:, None])
    mask = mask.to(torch.int32)

    out, row = [], 0
    for clip_pieces in per_clip:
        count = len(clip_pieces)
        width = int(max(length[row:row + count])) // recipe.hop
        width = -(-width // recipe.frame_multiple) * recipe.frame_multiple
        width_in = min(width, features.shape[-1])
        clip_features = features[row:row + count, :, :width_in]
        clip_mask = mask[row:row + count, :width_in]
        if width > width_in:  # the frame-axis padding reaches past the batch's widest piece
            clip_features = torch.nn.functional.pad(clip_features, (0, width - width_in))
            clip_mask = torch.nn.functional.pad(clip_mask, (0, width - width_in))
        inputs = {FEATURES: clip_features, MASK: clip_mask} if recipe.with_mask \
            else {FEATURES: clip_features}
        out.append((inputs, tuple(audio_frames[row:row + count])))
        row += count
    return out


def verified_recipe(processor, encode_with_processor) -> LogMelRecipe | None:
    """The recipe for ``processor`` if it reproduces the processor's own features on probe clips
    (short, off the hop grid, and several windows long), else None with a warning."""
    recipe = recipe_for(processor)
    if recipe is None:
        return None
    rng = np.random.default_rng(0)
    lengths = [1_234, 48_077, 16_000 * 9 + 3]
    if recipe.window_samples is not None and (recipe.max_windows or 3) >= 3:
        lengths.append(recipe.window_samples * 2 + 1_001)
    probes = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    ours = log_mel_batch(recipe, probes, torch.device("cpu"))
    for index, probe in enumerate(probes):
        problem = ("the recipe does not cover the probe clip" if ours is None
                   else difference(ours[index][0], encode_with_processor(probe)))
        if problem:
            log.warning("%s: batched features disabled, per-clip processor calls instead (%s)",
                        type(processor).__name__, problem)
            return None
    return recipe


def difference(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """Why two clips' audio inputs differ, or None when they agree."""
    if set(mine) != set(theirs):
        return f"keys {sorted(mine)} against {sorted(theirs)}"
    for key in mine:
        a, b = mine[key].cpu(), theirs[key].cpu()
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{key}: {tuple(a.shape)} {a.dtype} against {tuple(b.shape)} {b.dtype}"
        gap = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        if gap > TOLERANCE:
            return f"{key}: differs by up to {gap:.2g}"
    return None
