"""The OPD step's settings and the teacher/student pair, shared by calibration and training.

Each field is a stage option (``--top-k``) and a key of the pipeline config's ``opd.step``
section (``top_k``): add an OPD option here and both stages and the workflow take it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.common.errors import UserError
from stages.common.settings import setting
from stages.models import Family


@dataclass(frozen=True, kw_only=True)
class OpdConfig:
    """OPD step (union top-k forward KL on student rollouts)."""

    top_k: int = setting(32, help="k of the teacher's and the student's top-k sets")
    temperature: float = setting(1.0, help="KL temperature τ; the loss is scaled by τ²")
    max_new_tokens: int = setting(64, help="rollout length cap")
    keep_stop_token: bool = setting(True, help="supervise the stop position, so the teacher can "
                                               "correct when the student stops")
    sample: bool = setting(False, help="sampled rollouts instead of greedy (seeded per step and "
                                       "rank)")
    sample_temperature: float = setting(1.0, help="temperature of sampled rollouts")
    fallback_language: str = setting("en", help="teacher prompt language of a row with neither "
                                                "a manifest language nor a detectable script")
    latin_language: str = setting("en", help="language Latin-script rollouts are detected as")
    reshard_during_decode: bool = setting(
        False, help="re-gather a sharded student on every decoding step (less memory, slower) "
                    "instead of once per rollout")

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            problems.append(f"top_k must be a positive integer, got {self.top_k!r}")
        if not 0 < self.temperature < float("inf"):
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if not 0 < self.sample_temperature < float("inf"):
            problems.append(f"sample_temperature must be > 0, got {self.sample_temperature!r}")
        for name in ("fallback_language", "latin_language"):
            if not (isinstance(getattr(self, name), str) and getattr(self, name)):
                problems.append(f"{name} must be a language code such as 'en'")
        if problems:
            raise UserError("OPD settings: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class OpdPair:
    """models (folders or cached hub ids)"""

    student: str = setting(help="student model folder or cached hub id")
    teacher: str = setting(help="teacher model folder or cached hub id")
    student_family: Family | None = setting(None, help="student adapter family (default: from "
                                                       "its config)")
    teacher_family: Family | None = setting(None, help="teacher adapter family (default: from "
                                                       "its config)")
    trust_remote_code: bool = setting(False, help="allow checkpoints that ship their own model "
                                                  "code")
    packed_audio_windows: bool = setting(
        False, help="Qwen3-ASR audio towers: every attention window in one SDPA call instead of "
        "transformers' per-window loop (3-4x faster encoder on an H200, the same results up "
        "to rounding; off until multi-seed training runs confirm it, README 'The GPU study')")
