"""Text to speech with espeak-ng, called through ctypes on the library bundled by espeakng-loader.

espeak-ng keeps synthesis state in C statics that no API call resets (pitch-flutter phase,
resonator memory, its noise generators), so two syntheses of the same text in one process differ
depending on what was spoken before. The demo corpus must be byte-identical for a seed whatever
the number of workers, so every synthesis here runs in a short-lived child forked from a process
whose library was initialized but never used to speak: each call starts from the same state and
the output is a pure function of (text, voice, rate, pitch, seed). A fork costs a few
milliseconds, less than the synthesis itself.

The library is initialized once per process (a forked worker inherits the initialized, unused
state; a spawned one initializes its own). A lock serializes calls from several threads.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass

import numpy as np

# espeak-ng API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_EE_NOT_FOUND = 2

RATE_RANGE = (80, 450)  # words per minute accepted by espeakRATE
PITCH_RANGE = (0, 100)  # espeakPITCH: 50 is the voice's own pitch

# Manifest language code -> espeak-ng voice that reads that script.
LANGUAGE_VOICES = {
    "en": "en-us",
    "zh": "cmn",  # Mandarin, reads Chinese characters
    "de": "de",
    "fr": "fr",
    "ko": "ko",
    "ja": "ja",  # reads kana; kanji are not supported by its dictionary
}

_HEADER = struct.Struct("<iq")  # espeak status, number of int16 samples


class EspeakError(RuntimeError):
    """espeak-ng refused a voice or failed to synthesize."""


def voice_name(language: str, variant: str = "", base: str | None = None) -> str:
    """The espeak voice for a language code plus an optional variant (``m3`` -> ``en-us+m3``)."""
    if base is None:
        if language not in LANGUAGE_VOICES:
            raise ValueError(f"unsupported language {language!r}; "
                             f"expected one of {sorted(LANGUAGE_VOICES)}")
        base = LANGUAGE_VOICES[language]
    return f"{base}+{variant}" if variant else base


@dataclass
class _Library:
    lib: ctypes.CDLL
    sample_rate: int
    default_rate: int
    default_pitch: int


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[bytes] = []  # filled by the callback, only ever inside a synthesis child


def _collect(wav, count, _events):  # called by espeak-ng with each block of samples
    if wav and count > 0:
        _chunks.append(ctypes.string_at(wav, 2 * count))
    return 0  # continue synthesis


_callback = _SYNTH_CALLBACK(_collect)  # kept alive for the library's lifetime
_library: _Library | None = None
_lock = threading.Lock()


def _reset_lock_in_child() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _load() -> _Library:
    """Load and initialize libespeak-ng once per process (caller holds the lock)."""
    global _library
    if _library is not None:
        return _library
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_GetParameter.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.espeak_GetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int

    data_path = espeakng_loader.get_data_path()
    # Buffer length 0 = the library default (60 ms); synchronous mode = no playback thread.
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        raise EspeakError(f"espeak_Initialize failed (returned {sample_rate}) with data at "
                          f"{data_path}; reinstall the espeakng-loader wheel")
    lib.espeak_SetSynthCallback(_callback)
    _library = _Library(lib, sample_rate,
                        default_rate=lib.espeak_GetParameter(_PARAM_RATE, 0),
                        default_pitch=lib.espeak_GetParameter(_PARAM_PITCH, 0))
    return _library


def _libc_srand(seed: int) -> None:
    # espeak's breath noise draws from libc rand() as well as its own generator.
    ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))


def _synthesize_in_child(lib: _Library, write_fd: int, text: bytes, voice: bytes, rate: int,
                         pitch: int, seed: int) -> None:
    """Body of the forked child: speak, send header + int16 samples, exit without cleanup."""
    code = 1
    try:
        _chunks.clear()
        status = lib.lib.espeak_SetVoiceByName(voice)
        if status == _EE_OK:
            lib.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            lib.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
            lib.lib.espeak_ng_SetRandSeed(seed)
            _libc_srand(seed)
            status = 100 + lib.lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0,
                                                _CHARS_UTF8, None, None)
        samples = b"".join(_chunks) if status == 100 + _EE_OK else b""
        payload = memoryview(_HEADER.pack(status, len(samples) // 2) + samples)
        while payload:
            payload = payload[os.write(write_fd, payload):]
        code = 0
    finally:
        os._exit(code)  # never run the parent's atexit handlers or flush its buffers


def _read_all(fd: int) -> bytes:
    parts = []
    while block := os.read(fd, 1 << 16):
        parts.append(block)
    return b"".join(parts)


class Espeak:
    """espeak-ng synthesis; ``synthesize`` is a pure function of its arguments.

    Safe to use from several threads (calls are serialized) and from worker processes.
    """

    def __init__(self) -> None:
        if not hasattr(os, "fork"):
            raise EspeakError("espeak synthesis needs os.fork (Linux or macOS)")
        with _lock:
            self._lib = _load()

    @property
    def sample_rate(self) -> int:
        """The library's native output rate in Hz (22050 for the bundled voices)."""
        return self._lib.sample_rate

    @property
    def default_rate(self) -> int:
        return self._lib.default_rate

    @property
    def default_pitch(self) -> int:
        return self._lib.default_pitch

    def synthesize(self, text: str, voice: str, rate: int | None = None,
                   pitch: int | None = None, seed: int = 0) -> tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` (e.g. ``en-us+f3``, ``cmn``).

        ``rate`` is in words per minute (80-450, default the library's 175), ``pitch`` 0-100
        (50 = the voice's own). ``seed`` drives the breath noise some voice variants add.
        Returns (float32 samples in [-1, 1], native sample rate).
        """
        if not text.strip():
            raise ValueError("cannot synthesize empty text")
        if "\x00" in text or "\x00" in voice:
            raise ValueError("text and voice must not contain NUL characters")
        rate = self.default_rate if rate is None else int(rate)
        pitch = self.default_pitch if pitch is None else int(pitch)
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise ValueError(f"rate {rate} outside {RATE_RANGE} words per minute")
        if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
            raise ValueError(f"pitch {pitch} outside {PITCH_RANGE}")
        encoded = text.encode("utf-8") + b"\x00"
        with _lock:
            read_fd, write_fd = os.pipe()
            try:
                # The child only calls espeak and os.write, then exits; glibc keeps malloc and
                # stdio usable after fork, so threads that exist now (BLAS pools, progress
                # bars) do not block it.
                pid = os.fork()
            except OSError:
                os.close(read_fd)
                os.close(write_fd)
                raise
            if pid == 0:
                os.close(read_fd)
                _synthesize_in_child(self._lib, write_fd, encoded, voice.encode("utf-8"),
                                     rate, pitch, seed)
            os.close(write_fd)
            try:
                data = _read_all(read_fd)
            finally:
                os.close(read_fd)
                _, wait_status = os.waitpid(pid, 0)
        exit_code = os.waitstatus_to_exitcode(wait_status)
        if exit_code != 0 or len(data) < _HEADER.size:
            raise EspeakError(f"espeak synthesis process failed (exit {exit_code}) for voice "
                              f"{voice!r} and text {text[:60]!r}")
        status, count = _HEADER.unpack_from(data)
        if status == _EE_NOT_FOUND:
            raise EspeakError(f"espeak has no voice {voice!r}; use a language voice such as "
                              f"{sorted(LANGUAGE_VOICES.values())}, optionally with a variant "
                              f"like '+f3'")
        if status != 100 + _EE_OK:
            raise EspeakError(f"espeak failed with status {status} for voice {voice!r} and "
                              f"text {text[:60]!r}")
        samples = np.frombuffer(data, dtype="<i2", count=count, offset=_HEADER.size)
        return samples.astype(np.float32) / 32768.0, self.sample_rate
