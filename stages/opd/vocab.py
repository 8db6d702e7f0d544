"""The teacher↔student vocabulary map: token ids meet through token strings (DESIGN §4).

The student's rollout ids are translated to teacher ids before teacher scoring, and the teacher's
log-probabilities are gathered back into the student vocabulary for the loss, with -inf where a
student token has no teacher counterpart (such ids are never valid in the union top-k KL).

The map is built by exact string equality of the tokens (``convert_ids_to_tokens`` over each
tokenizer's whole vocabulary, added tokens included); explicit pairs override it for tokens that
mean the same but are spelled differently, such as the student's end-of-sequence token and the
teacher's ``<|im_end|>``. It is kept injective (each teacher id has at most one student id), so
gathering never counts a teacher token's probability twice. Ids past a tokenizer's length but
inside the model's logit width (padded embedding rows) map to nothing.

Tokenizers of different families rarely share token strings (byte-level BPE writes a leading
space as ``Ġ``, SentencePiece as ``▁``), so such a pair gets a low coverage, and
:meth:`VocabMap.require_coverage` refuses it with a clear message instead of training on a
distribution that is mostly -inf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.common.errors import UserError
from stages.models.base import AsrAdapter

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Coverage:
    """How much of each vocabulary the map covers (tokens with a string, or explicitly paired)."""

    student_mapped: int
    student_total: int
    teacher_mapped: int
    teacher_total: int

    @property
    def student_fraction(self) -> float:
        return self.student_mapped / self.student_total if self.student_total else 0.0

    @property
    def teacher_fraction(self) -> float:
        return self.teacher_mapped / self.teacher_total if self.teacher_total else 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {**asdict(self), "student_fraction": self.student_fraction,
                "teacher_fraction": self.teacher_fraction}


class VocabMap:
    """Student id → teacher id, with the two conversions the OPD step needs.

    Attributes:
        student_to_teacher: LongTensor [student logit width], the teacher id of each student id,
            -1 where there is none.
        teacher_vocab_size: the teacher's logit width.
        coverage: a :class:`Coverage`.
        identity_prefix: n when the map is exactly ``0..n-1`` followed by -1 (identical
            tokenizers), else None; enables the slicing fast path.
    """

    def __init__(self, student_to_teacher: Tensor, *, teacher_vocab_size: int,
                 coverage: Coverage, student_tokens: Sequence[str | None] = (),
                 names: tuple[str, str] = ("student", "teacher")) -> None:
        self.student_to_teacher = student_to_teacher.to(torch.long)
        self.teacher_vocab_size = int(teacher_vocab_size)
        self.coverage = coverage
        self.names = names
        self._student_tokens = list(student_tokens)
        self._mapped = self.student_to_teacher >= 0
        self.identity_prefix = _identity_prefix(self.student_to_teacher)

    @property
    def student_vocab_size(self) -> int:
        return self.student_to_teacher.numel()

    @classmethod
    def build(cls, student_tokenizer: Any, teacher_tokenizer: Any, *, student_vocab_size: int,
              teacher_vocab_size: int, pairs: Mapping[int, int] | None = None) -> VocabMap:
        """Map from token strings; ``pairs`` (student id → teacher id) override string matches.

        ``*_vocab_size`` are the models' logit widths (they may exceed the tokenizers' lengths).
        When two ids of one tokenizer share a string, the lower id takes part in the match.
        """
        names = (_tokenizer_name(student_tokenizer), _tokenizer_name(teacher_tokenizer))
        student_tokens = _token_strings(student_tokenizer, student_vocab_size)
        teacher_tokens = _token_strings(teacher_tokenizer, teacher_vocab_size)
        teacher_index: dict[str, int] = {}
        for tid, token in enumerate(teacher_tokens):
            if token is not None:
                teacher_index.setdefault(token, tid)
        mapping = [-1] * student_vocab_size
        claimed: set[int] = set()
        for sid, token in enumerate(student_tokens):
            tid = teacher_index.get(token) if token is not None else None
            if tid is not None and tid not in claimed:
                mapping[sid] = tid
                claimed.add(tid)

        student_known = {i for i, token in enumerate(student_tokens) if token is not None}
        teacher_known = {i for i, token in enumerate(teacher_tokens) if token is not None}
        if pairs:
            _check_pairs(pairs, student_vocab_size, teacher_vocab_size, names)
            owner = {tid: sid for sid, tid in enumerate(mapping) if tid >= 0}
            for sid, tid in pairs.items():
                if tid in owner:  # keep the map injective: the explicit pair wins
                    mapping[owner.pop(tid)] = -1
                if mapping[sid] >= 0:
                    owner.pop(mapping[sid], None)
                mapping[sid] = tid
                owner[tid] = sid
            student_known |= set(pairs)
            teacher_known |= set(pairs.values())

        mapped = sum(1 for tid in mapping if tid >= 0)
        coverage = Coverage(student_mapped=mapped, student_total=len(student_known),
                            teacher_mapped=mapped, teacher_total=len(teacher_known))
        return cls(torch.tensor(mapping, dtype=torch.long), teacher_vocab_size=teacher_vocab_size,
                   coverage=coverage, student_tokens=student_tokens, names=names)

    def to(self, device: torch.device | str) -> VocabMap:
        """The same map with its tensors on ``device``."""
        moved = VocabMap.__new__(VocabMap)
        moved.__dict__.update(self.__dict__)
        moved.student_to_teacher = self.student_to_teacher.to(device)
        moved._mapped = self._mapped.to(device)
        return moved

    def to_teacher_ids(self, student_ids: Tensor, fill_id: int) -> tuple[Tensor, Tensor]:
        """Teacher ids for student ids (any shape); unmapped or out-of-range ids become
        ``fill_id`` (e.g. the teacher's pad id). Returns ``(teacher_ids, unmapped_mask)``; count
        the unmapped tokens with ``unmapped_mask[real_positions].sum()``."""
        table = self.student_to_teacher.to(student_ids.device)
        in_range = (student_ids >= 0) & (student_ids < self.student_vocab_size)
        teacher_ids = table[student_ids.clamp(0, self.student_vocab_size - 1)]
        unmapped = ~in_range | (teacher_ids < 0)
        return teacher_ids.masked_fill(unmapped, fill_id), unmapped

    def teacher_to_student_logprobs(self, teacher_logprobs: Tensor,
                                    blocked_student_ids: Tensor | Iterable[int] | None = None
                                    ) -> Tensor:
        """[..., teacher width] log-probabilities → [..., student width], -inf where a student id
        has no teacher counterpart or is in ``blocked_student_ids``. Keeps the dtype.

        With identical tokenizers this is a slice (and no copy at all when the widths match and
        nothing is blocked, in which case the input itself is returned); the values are the same
        as the general gather's.
        """
        if teacher_logprobs.shape[-1] != self.teacher_vocab_size:
            raise ValueError(f"teacher log-probabilities have width {teacher_logprobs.shape[-1]}, "
                             f"the vocabulary map expects {self.teacher_vocab_size}")
        n = self.identity_prefix
        if n is not None and n <= self.teacher_vocab_size:
            out = teacher_logprobs if n == self.teacher_vocab_size else teacher_logprobs[..., :n]
            if n < self.student_vocab_size:
                out = F.pad(out, (0, self.student_vocab_size - n), value=NEG_INF)
            elif blocked_student_ids is not None:
                out = out.clone()  # never write into the caller's tensor (or a view of it)
        else:
            device = teacher_logprobs.device
            out = teacher_logprobs.index_select(
                -1, self.student_to_teacher.to(device).clamp(min=0))
            out.masked_fill_(~self._mapped.to(device), NEG_INF)
        if blocked_student_ids is not None:
            blocked = torch.as_tensor(blocked_student_ids, dtype=torch.long, device=out.device)
            if blocked.numel():
                out.index_fill_(-1, blocked.reshape(-1), NEG_INF)
        return out

    def require_coverage(self, in_play_ids: Tensor | Iterable[int] | None = None, *,
                         required_ids: Iterable[int] = (), min_fraction: float = 0.95
                         ) -> dict[str, Any]:
        """Refuse a pair whose map does not cover the tokens in play.

        ``in_play_ids``: student ids that will be scored (e.g. the tokenized training
        transcripts or calibration rollouts; negative ids such as -100 are ignored). The fraction
        of their *distinct* ids that map must reach ``min_fraction``; without them the whole
        student vocabulary is measured. Every id in ``required_ids`` (the stop token) must map.

        Returns a report (coverage counts and fractions, the in-play numbers) for
        ``calibration.json``; raises :class:`UserError` saying what is missing and what to do.
        """
        report: dict[str, Any] = {"student_tokenizer": self.names[0],
                                  "teacher_tokenizer": self.names[1], **self.coverage.as_dict()}
        mapped_cpu = self._mapped.cpu()
        if in_play_ids is not None:
            ids = torch.as_tensor(in_play_ids, dtype=torch.long).reshape(-1).cpu().unique()
            ids = ids[ids >= 0]
            ok = mapped_cpu[ids.clamp(max=self.student_vocab_size - 1)] \
                & (ids < self.student_vocab_size)
            unmapped_ids = ids[~ok].tolist()
            report.update(in_play_distinct=int(ids.numel()), in_play_mapped=int(ok.sum()))
            fraction = float(ok.float().mean()) if ids.numel() else 1.0
            scope = f"{int(ok.sum())} of the {ids.numel()} distinct student tokens in play"
        else:
            unmapped_ids = torch.nonzero(~mapped_cpu).reshape(-1).tolist()
            unmapped_ids = [i for i in unmapped_ids if self._token(i) is not None]
            fraction = self.coverage.student_fraction
            scope = (f"{self.coverage.student_mapped} of the {self.coverage.student_total} "
                     "student tokens")
        report["in_play_fraction"] = fraction
        missing = [i for i in required_ids
                   if not (0 <= i < self.student_vocab_size and bool(mapped_cpu[i]))]
        if fraction >= min_fraction and not missing:
            return report

        lines = [f"the student tokenizer '{self.names[0]}' and the teacher tokenizer "
                 f"'{self.names[1]}' do not share enough tokens: the map covers {scope} "
                 f"({fraction:.1%}; at least {min_fraction:.1%} needed); whole vocabularies: "
                 f"student {self.coverage.student_mapped}/{self.coverage.student_total} "
                 f"({self.coverage.student_fraction:.1%}), teacher "
                 f"{self.coverage.teacher_mapped}/{self.coverage.teacher_total} "
                 f"({self.coverage.teacher_fraction:.1%})."]
        if missing:
            lines.append("Required student ids without a teacher counterpart: "
                         + ", ".join(f"{i} ({self._token(i)!r})" for i in missing) + ".")
        if fraction < min_fraction and unmapped_ids:
            shown = ", ".join(repr(self._token(i)) for i in unmapped_ids[:8])
            lines.append(f"Unmapped examples: {shown}.")
        lines.append("Use a teacher and a student whose tokenizers spell their tokens the same "
                     "way (the same tokenizer family), and pair differently spelled special "
                     "tokens such as the stop token explicitly.")
        raise UserError(" ".join(lines))

    def _token(self, student_id: int) -> str | None:
        if 0 <= student_id < len(self._student_tokens):
            return self._student_tokens[student_id]
        return None


def _token_strings(tokenizer: Any, logit_width: int) -> list[str | None]:
    """Token string of every id below the logit width (None where the tokenizer has none)."""
    size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    if vocab:  # added tokens may leave holes, so len() can undercount the highest id
        size = max(size, max(vocab.values()) + 1)
    size = min(size, int(logit_width))
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    return [token if isinstance(token, str) else None for token in tokens]


def _identity_prefix(table: Tensor) -> int | None:
    mapped = int((table >= 0).sum())
    expected = torch.full_like(table, -1)
    expected[:mapped] = torch.arange(mapped, dtype=table.dtype, device=table.device)
    return mapped if torch.equal(table, expected) else None


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _check_pairs(pairs: Mapping[int, int], student_width: int, teacher_width: int,
                 names: tuple[str, str]) -> None:
    for sid, tid in pairs.items():
        if not (0 <= sid < student_width and 0 <= tid < teacher_width):
            raise UserError(
                f"vocabulary pair student id {sid} -> teacher id {tid} is out of range (student "
                f"'{names[0]}' has {student_width} ids, teacher '{names[1]}' {teacher_width}); "
                "check the configured token pairs (e.g. the stop tokens)")
    if len(set(pairs.values())) != len(pairs):
        raise UserError(f"vocabulary pairs {dict(pairs)} map two student ids to one teacher id; "
                        "each teacher token may be paired once")


def build_vocab_map(student: AsrAdapter, teacher: AsrAdapter) -> VocabMap:
    """Student → teacher ids by token string, with the two stop tokens paired explicitly (they
    mean the same, e.g. a GLM ``<|endoftext|>`` and Qwen's ``<|im_end|>``)."""
    return VocabMap.build(student.tokenizer, teacher.tokenizer,
                          student_vocab_size=student.vocab_size,
                          teacher_vocab_size=teacher.vocab_size,
                          pairs={student.stop_token_id: teacher.stop_token_id})
