"""union_topk_kl against a plain per-position reference, in value, gradient and statistics."""

from __future__ import annotations

import math

import pytest
import torch

from stages.opd.loss import SUM_KEYS, summarize_stats, union_topk_kl

NEG_INF = float("-inf")


def reference_union_topk_kl(student, teacher, top_k, temperature=1.0, student_topk_ids=None,
                            position_mask=None, reduction="mean"):
    """The formula of DESIGN §5, one position at a time, in float64, with Python sets."""
    s = student.double()
    t = teacher.detach().double()
    n_rows, vocab = s.shape
    k = min(top_k, vocab)
    total = s.new_zeros(())
    used = 0
    vuss = 0
    mass = 0.0
    agree = 0
    for i in range(n_rows):
        if position_mask is not None and not bool(position_mask[i]):
            continue
        t_row = t[i].tolist()
        s_row = s[i].detach().tolist()
        finite_teacher = [j for j in range(vocab) if math.isfinite(t_row[j])]
        teacher_top = sorted(finite_teacher, key=lambda j: -t_row[j])[:k]
        if student_topk_ids is None:
            student_top = sorted(range(vocab), key=lambda j: -s_row[j])[:k]
        else:
            student_top = student_topk_ids[i].tolist()
        union = sorted(set(teacher_top) | set(student_top))
        valid = [j for j in union if math.isfinite(t_row[j]) and math.isfinite(s_row[j])]
        if len(valid) < 2:
            continue
        log_p = torch.log_softmax(t[i, valid] / temperature, dim=0)
        log_q = torch.log_softmax(s[i, valid] / temperature, dim=0)
        total = total + (log_p.exp() * (log_p - log_q)).sum()
        used += 1
        vuss += len(valid)
        mass += sum(math.exp(t_row[j]) for j in valid)
        best_s = max(range(vocab), key=lambda j: s_row[j])
        best_t = max(range(vocab), key=lambda j: t_row[j])
        agree += best_s == best_t
    scale = temperature ** 2
    loss = scale * total if reduction == "sum" else scale * total / max(used, 1)
    stats = {"positions": used, "vuss": vuss / used if used else 0.0,
             "teacher_mass": mass / used if used else 0.0,
             "top1_agree": agree / used if used else 0.0, "kl_sum": float(total.detach())}
    return loss, stats


def random_case(seed: int, n_rows: int = 14, vocab: int = 24):
    """Random rows with the awkward cases mixed in: unmapped teacher ids, -inf student logits,
    heavily overlapping top-k sets, rows with 0 or 1 valid id."""
    g = torch.Generator().manual_seed(seed)
    teacher_logits = torch.randn(n_rows, vocab, generator=g) * 2
    # Overlap on purpose: half of the rows have a student close to the teacher.
    close = torch.rand(n_rows, 1, generator=g) < 0.5
    student = torch.where(close, teacher_logits + 0.3 * torch.randn(n_rows, vocab, generator=g),
                          torch.randn(n_rows, vocab, generator=g) * 2)
    teacher = torch.log_softmax(teacher_logits, dim=-1)
    teacher = teacher.masked_fill(torch.rand(n_rows, vocab, generator=g) < 0.3, NEG_INF)
    student = student.masked_fill(torch.rand(n_rows, vocab, generator=g) < 0.1, NEG_INF)
    teacher[0] = NEG_INF  # no finite teacher entry
    teacher[1, 1:] = NEG_INF  # exactly one finite teacher entry
    student[2] = NEG_INF  # no finite student logit
    teacher[3, 2:] = NEG_INF  # two finite teacher entries...
    student[3, 1] = NEG_INF  # ...of which one is blocked on the student side
    student[4] = teacher_logits[4]  # identical top-k sets
    teacher[5, vocab // 2:] = NEG_INF  # fewer than k finite teacher entries for larger k
    return student, teacher


def check_against_reference(student, teacher, **kwargs):
    student = student.clone().requires_grad_(True)
    loss, stats = union_topk_kl(student, teacher, **kwargs)
    (grad,) = torch.autograd.grad(loss, student)
    ref_student = student.detach().double().requires_grad_(True)
    ref_loss, ref_stats = reference_union_topk_kl(ref_student, teacher, **kwargs)
    if ref_loss.requires_grad:
        (ref_grad,) = torch.autograd.grad(ref_loss, ref_student)
    else:
        ref_grad = torch.zeros_like(ref_student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    return loss, grad, stats, ref_loss, ref_grad, ref_stats


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_reference_value_gradient_and_stats(seed, temperature):
    student, teacher = random_case(seed)
    top_k = [1, 3, 8, 30][seed % 4]  # 30 > V exercises the clip
    mask = None
    if seed % 3 == 1:
        mask = torch.rand(student.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.7
    loss, grad, stats, ref_loss, ref_grad, ref_stats = check_against_reference(
        student, teacher, top_k=top_k, temperature=temperature, position_mask=mask)
    assert ref_stats["positions"] > 0
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert int(stats["positions"]) == ref_stats["positions"]
    assert float(stats["vuss"]) == pytest.approx(ref_stats["vuss"], abs=1e-6)
    assert float(stats["teacher_mass"]) == pytest.approx(ref_stats["teacher_mass"], abs=1e-5)
    assert float(stats["top1_agree"]) == pytest.approx(ref_stats["top1_agree"], abs=1e-6)
    assert float(stats["kl_sum"]) == pytest.approx(ref_stats["kl_sum"], rel=1e-5, abs=1e-6)
    # Blocked student logits never receive gradient.
    assert (grad[torch.isinf(student)] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_explicit_student_topk_ids(seed):
    student, teacher = random_case(100 + seed)
    g = torch.Generator().manual_seed(seed)
    # Ids that are not the student's argmax-k, with repeats inside a row and overlap with the
    # teacher's top ids.
    ids = torch.randint(0, student.shape[1], (student.shape[0], 5), generator=g)
    ids[:, 0] = teacher.argmax(-1)
    ids[:, 1] = ids[:, 2]
    loss, grad, stats, ref_loss, ref_grad, ref_stats = check_against_reference(
        student, teacher, top_k=4, temperature=1.0, student_topk_ids=ids)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert int(stats["positions"]) == ref_stats["positions"]
    assert float(stats["vuss"]) == pytest.approx(ref_stats["vuss"], abs=1e-6)
    assert float(stats["top1_agree"]) == pytest.approx(ref_stats["top1_agree"], abs=1e-6)


def test_hand_computed_tiny_case():
    # V = 4, k = 1. Teacher top-1 is id 0, student top-1 is id 1, so U = {0, 1}.
    teacher = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    student = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0]], requires_grad=True)
    loss, stats = union_topk_kl(student, teacher, top_k=1)
    # p = (0.5, 0.25) / 0.75 = (2/3, 1/3); q = (1, 3) / 4 = (1/4, 3/4)
    # KL = 2/3 ln(8/3) + 1/3 ln(4/9) = 0.653886 - 0.270310 = 0.383576
    assert loss.item() == pytest.approx(0.3835761, abs=1e-6)
    loss.backward()
    # dKL/dz = q - p on the union, 0 elsewhere: (-5/12, +5/12, 0, 0)
    torch.testing.assert_close(student.grad, torch.tensor([[-5 / 12, 5 / 12, 0.0, 0.0]]))
    assert int(stats["positions"]) == 1
    assert float(stats["vuss"]) == 2.0
    assert float(stats["teacher_mass"]) == pytest.approx(0.75)
    assert float(stats["top1_agree"]) == 0.0

    # τ = 2: p ∝ (√0.5, √0.25) = (0.585786, 0.414214), q ∝ (1, √3) = (0.366025, 0.633975);
    # loss = τ² · KL(p‖q) = 4 · (0.585786 ln 1.600398 + 0.414214 ln 0.653362) = 0.396668
    loss_t2, _ = union_topk_kl(student, teacher, top_k=1, temperature=2.0)
    assert loss_t2.item() == pytest.approx(0.3966680, abs=1e-6)


def test_stats_exact_on_constructed_rows():
    inf = NEG_INF
    teacher = torch.tensor([
        [-1.0, -2.0, -5.0, -6.0, -7.0, -8.0],  # teacher top-2 {0, 1}
        [inf, inf, inf, -0.1, inf, inf],  # one finite teacher id
        [inf] * 6,  # nothing finite
        [-1.0, -2.0, -5.0, -6.0, -7.0, -8.0],  # teacher top-2 {0, 1}
        [-1.0, -2.0, -5.0, -6.0, -7.0, -8.0],  # masked out
        [-1.0, -2.0, -3.0, -6.0, -7.0, -8.0],  # teacher top-2 {0, 1}
    ])
    student = torch.tensor([
        [0.0, 5.0, 4.0, 0.0, 0.0, 0.0],  # top-2 {1, 2}: U = {0, 1, 2}, 3 valid
        [0.0, 0.0, 0.0, 5.0, 4.0, 0.0],  # top-2 {3, 4}: only 3 valid -> unused
        [5.0, 4.0, 0.0, 0.0, 0.0, 0.0],
        [5.0, 4.0, 0.0, 0.0, 0.0, 0.0],  # top-2 {0, 1}: U = {0, 1}, 2 valid
        [5.0, 4.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, inf, 0.0, 5.0, 4.0, 0.0],  # top-2 {3, 4}; id 1 blocked: U valid {0, 3, 4}
    ], requires_grad=True)
    mask = torch.tensor([True, True, True, True, False, True])
    loss, stats = union_topk_kl(student, teacher, top_k=2, position_mask=mask)
    assert int(stats["rows"]) == 5
    assert int(stats["positions"]) == 3
    assert float(stats["vuss_sum"]) == 3 + 2 + 3
    assert float(stats["vuss"]) == pytest.approx(8 / 3)
    assert float(stats["top1_agree"]) == pytest.approx(1 / 3)  # only row 3 agrees
    mass = (math.exp(-1) + math.exp(-2) + math.exp(-5)) + (math.exp(-1) + math.exp(-2)) \
        + (math.exp(-1) + math.exp(-6) + math.exp(-7))
    assert float(stats["teacher_mass"]) == pytest.approx(mass / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert (student.grad[[1, 2, 4]] == 0).all()


def test_no_used_row_gives_connected_zero():
    teacher = torch.full((3, 5), NEG_INF)
    teacher[1, 2] = -0.5  # a single valid id is not enough
    student = torch.randn(3, 5)
    student[0, 0] = NEG_INF
    student.requires_grad_(True)
    for reduction in ("mean", "sum"):
        loss, stats = union_topk_kl(student, teacher, top_k=2, temperature=0.5,
                                    reduction=reduction)
        assert loss.requires_grad and loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, student)
        assert (grad == 0).all()
        assert int(stats["positions"]) == 0 and float(stats["vuss"]) == 0.0
    # Everything masked out as well.
    student2, teacher2 = random_case(7)
    student2.requires_grad_(True)
    loss, stats = union_topk_kl(student2, teacher2, top_k=3,
                                position_mask=torch.zeros(student2.shape[0], dtype=torch.bool))
    (grad,) = torch.autograd.grad(loss, student2)
    assert loss.item() == 0.0 and (grad == 0).all() and int(stats["rows"]) == 0
    # An empty batch (no response positions on this rank) still gives a connected zero.
    empty = torch.zeros(0, 5, requires_grad=True)
    loss, stats = union_topk_kl(empty, torch.zeros(0, 5), top_k=2)
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 5) and int(stats["positions"]) == 0


def test_sum_and_mean_are_consistent():
    student, teacher = random_case(3)
    student.requires_grad_(True)
    mean_loss, stats = union_topk_kl(student, teacher, top_k=4, temperature=2.0)
    sum_loss, _ = union_topk_kl(student, teacher, top_k=4, temperature=2.0, reduction="sum")
    positions = int(stats["positions"])
    assert positions > 1
    torch.testing.assert_close(sum_loss / positions, mean_loss)
    torch.testing.assert_close(sum_loss, 4.0 * stats["kl_sum"])
    (g_mean,) = torch.autograd.grad(mean_loss, student)
    (g_sum,) = torch.autograd.grad(sum_loss, student)
    torch.testing.assert_close(g_sum / positions, g_mean)


def distinct_bf16_case(seed: int, n_rows: int = 10, vocab: int = 48):
    """Values exactly representable in bf16 and distinct within a row, so that both top-k sets
    are unambiguous after rounding."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack([torch.randperm(vocab, generator=g) for _ in range(n_rows)]).float() / 16
    teacher = -grid
    student = torch.stack([torch.randperm(vocab, generator=g) for _ in range(n_rows)]).float() / 8
    teacher = teacher.masked_fill(torch.rand(n_rows, vocab, generator=g) < 0.25, NEG_INF)
    student = student.masked_fill(torch.rand(n_rows, vocab, generator=g) < 0.1, NEG_INF)
    teacher[0] = NEG_INF
    return student.bfloat16(), teacher.bfloat16()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_bf16_inputs_match_fp32_reference(temperature):
    student, teacher = distinct_bf16_case(11)
    student.requires_grad_(True)
    loss, stats = union_topk_kl(student, teacher, top_k=6, temperature=temperature)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
    ref_student = student.detach().double().requires_grad_(True)
    ref_loss, ref_stats = reference_union_topk_kl(ref_student, teacher.double(), 6, temperature)
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_student)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-2, atol=1e-3)
    assert int(stats["positions"]) == ref_stats["positions"]


def test_gradient_only_into_student():
    student, teacher = random_case(5)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss, _ = union_topk_kl(student, teacher, top_k=3)
    g_student, g_teacher = torch.autograd.grad(loss, (student, teacher), allow_unused=True)
    assert g_teacher is None
    assert g_student.abs().sum() > 0


def test_summarize_stats_reduces_and_recomputes_means():
    student, teacher = random_case(9, n_rows=16)
    _, whole = union_topk_kl(student, teacher, top_k=3)
    _, first = union_topk_kl(student[:7], teacher[:7], top_k=3)
    _, second = union_topk_kl(student[7:], teacher[7:], top_k=3)
    accumulated = {key: first[key] + second[key] for key in SUM_KEYS}
    merged = summarize_stats(accumulated)
    direct = summarize_stats(whole)
    assert merged["positions"] == direct["positions"] == int(whole["positions"])
    for key in ("vuss", "kl", "teacher_mass", "top1_agree", "used_fraction"):
        assert merged[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9)
    assert direct["vuss"] == pytest.approx(float(whole["vuss"]), rel=1e-6)

    # Two identical "ranks": counts double, means stay.
    doubled = summarize_stats(whole, all_reduce=lambda t: t.mul_(2))
    assert doubled["positions"] == 2 * direct["positions"]
    assert doubled["vuss"] == pytest.approx(direct["vuss"])
    assert isinstance(doubled["positions"], int) and isinstance(doubled["vuss"], float)

    empty = summarize_stats({key: torch.zeros(()) for key in SUM_KEYS})
    assert empty["vuss"] == 0.0 and empty["used_fraction"] == 0.0


def test_bad_arguments_raise_value_error():
    student, teacher = random_case(1)
    with pytest.raises(ValueError, match="top_k"):
        union_topk_kl(student, teacher, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        union_topk_kl(student, teacher, top_k=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        union_topk_kl(student, teacher[:, :-1], top_k=2)
    with pytest.raises(ValueError, match="reduction"):
        union_topk_kl(student, teacher, top_k=2, reduction="none")
    with pytest.raises(ValueError, match="position_mask"):
        union_topk_kl(student, teacher, top_k=2, position_mask=torch.ones(3, dtype=torch.bool))
