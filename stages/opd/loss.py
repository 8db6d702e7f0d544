"""Union top-k forward KL between the teacher's and the student's next-token distributions.

This is the OPD loss of DESIGN §5. At each supervised position t:

- U_t is the teacher's top-k ids (by log-probability, finite entries only) together with the
  student's top-k ids, duplicates counted once;
- an id of U_t is *valid* when both its teacher log-probability and its student logit are finite
  (an unmapped or blocked token has teacher log-probability -inf);
- the position is *used* when at least two ids are valid (a one-point distribution carries no
  signal) and the caller's position mask allows it;
- p = softmax(teacher_logprobs[U_t] / τ) and q = softmax(student_logits[U_t] / τ) over the valid
  ids, and the position contributes KL(p‖q) = Σ p (log p − log q);
- the loss is τ² times the mean (or the sum) over used positions. τ² keeps gradient magnitudes
  comparable across temperatures, as in classic distillation.

Everything is vectorized over positions: the union is a fixed-width [N, 2k] tensor of sorted ids
in which repeats and invalid ids carry zero weight, so the cost is two top-k passes over the
vocabulary plus O(N·k) work, and nothing synchronizes with the host. Arithmetic is fp32 whatever
the input dtype (only the [N, 2k] gathered values are converted, never the full logits), and -inf
never enters an exp/log whose gradient is taken, so neither the value nor the gradient can turn
NaN, also for rows that are all -inf or that have a single valid id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

#: Additive statistics: sum them over micro-batches or ranks, then recompute the means with
#: :func:`summarize_stats`.
SUM_KEYS = ("rows", "positions", "vuss_sum", "kl_sum", "teacher_mass_sum", "top1_agree_count")


def union_topk_kl(
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    *,
    top_k: int,
    temperature: float = 1.0,
    student_topk_ids: Tensor | None = None,
    position_mask: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Union top-k forward KL(teacher ‖ student), τ²-scaled.

    Args:
        student_logits: [N, V] student logits (any float dtype); the only input that receives
            gradients.
        teacher_logprobs: [N, V] teacher log-probabilities already mapped into the student
            vocabulary, -inf where a student token has no teacher counterpart or is blocked.
            Treated as a constant (detached). NaN is not expected: it would count as invalid
            but, as in ``torch.topk``, rank above every finite entry.
        top_k: k of both top-k sets (clipped to V).
        temperature: τ > 0, applied to both sides before the softmax.
        student_topk_ids: [N, k'] long, the student's top-k ids; default: the top-k of the
            detached student logits.
        position_mask: [N] bool; False rows are ignored.
        reduction: "mean" (τ² · mean over used positions) or "sum" (τ² · sum over used
            positions, for normalizing by a count all-reduced across ranks).

    Returns:
        ``(loss, stats)``. ``loss`` is a 0-dim fp32 tensor; when no position is used it is an
        exact zero that is still connected to ``student_logits`` (backward gives zero
        gradients). ``stats`` holds detached 0-dim tensors on the input device, so a trainer can
        accumulate or all-reduce them without a host sync:

        - additive (:data:`SUM_KEYS`): ``rows`` (positions allowed by the mask, int64),
          ``positions`` (used positions, int64), ``vuss_sum`` (Σ valid union size),
          ``kl_sum`` (Σ KL over used positions, without the τ² factor), ``teacher_mass_sum``
          (Σ teacher probability mass on the valid union), ``top1_agree_count`` (used positions
          where the teacher's top-1 token is also the student's, over the full vocabulary);
        - means over used positions (0 when none): ``vuss``, ``teacher_mass``, ``top1_agree``.

        Use :func:`summarize_stats` to reduce them and turn them into Python numbers.
    """
    n_rows, vocab = _check_inputs(student_logits, teacher_logprobs, top_k, temperature,
                                  student_topk_ids, position_mask, reduction)
    k = min(top_k, vocab)
    tau = float(temperature)
    teacher = teacher_logprobs.detach()

    # A row with fewer than k finite teacher entries gets all of them plus some -inf ids (-inf
    # sorts last); those extra ids fail the validity test below, so they displace nothing.
    # The top-k is sorted so that column 0 is the top-1, reused for the agreement statistic
    # without another pass over the vocabulary.
    teacher_top = teacher.topk(k, dim=-1).indices
    student_max = None
    if student_topk_ids is None:
        student_top = student_logits.detach().topk(k, dim=-1)
        student_topk_ids, student_max = student_top.indices, student_top.values[:, :1]
    union = torch.cat([teacher_top, student_topk_ids.to(teacher_top.device, torch.long)], dim=-1)
    union, _ = union.sort(dim=-1)
    first = torch.ones_like(union, dtype=torch.bool)
    first[:, 1:] = union[:, 1:] != union[:, :-1]

    t_u = teacher.gather(1, union).float()
    s_u = student_logits.gather(1, union).float()
    valid = first & torch.isfinite(t_u) & torch.isfinite(s_u.detach())
    union_size = valid.sum(-1)
    used = union_size >= 2
    if position_mask is not None:
        used = used & position_mask
    weight = valid & used[:, None]

    # Invalid entries get a finite placeholder (0) before any arithmetic, and are excluded from
    # the normalizers; a row that is not used normalizes over its placeholders only. Every value
    # that reaches exp/log/backward is therefore finite.
    norm_mask = weight | ~used[:, None]
    log_p = _masked_log_softmax(torch.where(weight, t_u, 0.0) / tau, norm_mask)
    log_q = _masked_log_softmax(torch.where(weight, s_u, 0.0) / tau, norm_mask)
    p = log_p.exp() * weight
    kl_rows = (p * (log_p - log_q)).sum(-1)

    kl_sum = kl_rows.sum()
    positions = used.sum()
    denominator = positions.clamp(min=1) if reduction == "mean" else 1
    loss = tau * tau * kl_sum / denominator

    with torch.no_grad():
        rows = position_mask.sum() if position_mask is not None else positions.new_tensor(n_rows)
        if student_max is None:
            student_max = student_logits.detach().amax(-1, keepdim=True)
        # The teacher's top-1 token is a top-1 token of the student (a student tie counts).
        agree = (student_logits.detach().gather(1, teacher_top[:, :1]) == student_max)[:, 0]
        teacher_mass = torch.where(weight, t_u, float("-inf")).exp().sum(-1)
        denom = positions.clamp(min=1).float()
        stats = {
            "rows": rows,
            "positions": positions,
            "vuss_sum": (union_size * used).sum().float(),
            "kl_sum": kl_sum.detach(),
            "teacher_mass_sum": (teacher_mass * used).sum(),
            "top1_agree_count": (agree & used).sum().float(),
        }
        stats["vuss"] = stats["vuss_sum"] / denom
        stats["teacher_mass"] = stats["teacher_mass_sum"] / denom
        stats["top1_agree"] = stats["top1_agree_count"] / denom
    return loss, stats


def summarize_stats(
    stats: Mapping[str, Tensor],
    all_reduce: Callable[[Tensor], object] | None = None,
) -> dict[str, float | int]:
    """Turn the stats of :func:`union_topk_kl` into Python numbers, optionally reduced over ranks.

    The additive entries (:data:`SUM_KEYS`) are stacked into one float64 tensor, passed to
    ``all_reduce`` (an in-place sum such as ``torch.distributed.all_reduce``: one collective for
    all of them), and the means are recomputed from the reduced sums, so a mean over ranks is
    weighted by each rank's used positions. Stats summed over several micro-batches work the same.

    Returns ``rows`` and ``positions`` as ints, the sums and the means ``vuss``, ``kl``,
    ``teacher_mass``, ``top1_agree`` (0.0 when no position was used) and ``used_fraction``
    (positions / rows) as floats.
    """
    sums = torch.stack([torch.as_tensor(stats[key]).detach().to(torch.float64).reshape(())
                        for key in SUM_KEYS])
    if all_reduce is not None:
        all_reduce(sums)
    values = dict(zip(SUM_KEYS, sums.tolist(), strict=True))
    positions = round(values["positions"])
    rows = round(values["rows"])
    out: dict[str, float | int] = {**values, "rows": rows, "positions": positions}
    for mean_key, sum_key in (("vuss", "vuss_sum"), ("kl", "kl_sum"),
                              ("teacher_mass", "teacher_mass_sum"),
                              ("top1_agree", "top1_agree_count")):
        out[mean_key] = values[sum_key] / positions if positions else 0.0
    out["used_fraction"] = positions / rows if rows else 0.0
    return out


def _masked_log_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """log_softmax of finite ``x`` over the entries where ``mask`` is True (≥ 1 per row).

    Entries outside the mask get finite (meaningless) values; their gradient is zero.
    """
    lse = torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=-1, keepdim=True)
    return x - lse


def _check_inputs(student_logits: Tensor, teacher_logprobs: Tensor, top_k: int,
                  temperature: float, student_topk_ids: Tensor | None,
                  position_mask: Tensor | None, reduction: str) -> tuple[int, int]:
    """Shapes and arguments; these are programming errors, hence ValueError."""
    if student_logits.dim() != 2 or student_logits.shape != teacher_logprobs.shape:
        raise ValueError(
            "union_topk_kl: student_logits and teacher_logprobs must both be [N, V]; got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logprobs.shape)}")
    if not (student_logits.is_floating_point() and teacher_logprobs.is_floating_point()):
        raise ValueError("union_topk_kl: logits and log-probabilities must be floating point")
    n_rows, vocab = student_logits.shape
    if vocab < 1:
        raise ValueError("union_topk_kl: the vocabulary dimension is empty")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"union_topk_kl: top_k must be a positive int, got {top_k!r}")
    if not (float(temperature) > 0.0 and float(temperature) != float("inf")):
        raise ValueError(f"union_topk_kl: temperature must be finite and > 0, got {temperature!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"union_topk_kl: reduction must be 'mean' or 'sum', got {reduction!r}")
    if student_topk_ids is not None and (
            student_topk_ids.dim() != 2 or student_topk_ids.shape[0] != n_rows
            or student_topk_ids.is_floating_point()):
        raise ValueError("union_topk_kl: student_topk_ids must be an integer [N, k] tensor; got "
                         f"{student_topk_ids.dtype} {tuple(student_topk_ids.shape)}")
    if position_mask is not None and (position_mask.dtype != torch.bool
                                      or tuple(position_mask.shape) != (n_rows,)):
        raise ValueError("union_topk_kl: position_mask must be a bool [N] tensor; got "
                         f"{position_mask.dtype} {tuple(position_mask.shape)}")
    return n_rows, vocab
