"""VocabMap on small tokenizers built in the test: string matching, pairs, coverage, refusal."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stages.common.errors import UserError
from stages.opd.vocab import VocabMap

NEG_INF = float("-inf")


def word_level(name, vocab, *, added=(), **special):
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special.get("unk_token")))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    wrapped.add_tokens(list(added))
    wrapped.name_or_path = name
    return wrapped


def byte_bpe(name, texts, vocab_size=300):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    wrapped.name_or_path = name
    return wrapped


@pytest.fixture
def pair():
    # Student ids: 0 [UNK], 1 hello, 2 world, 3 foo, 4 bar, 5 <eos>, 6 <s_only> (added).
    student = word_level("student-wl", {"[UNK]": 0, "hello": 1, "world": 2, "foo": 3, "bar": 4},
                         added=["<s_only>"], unk_token="[UNK]", eos_token="<eos>")
    # Teacher ids: 0 <unk>, 1 bar, 2 world, 3 baz, 4 hello, 5 qux, 6 <|im_end|>, 7 foo (added).
    teacher = word_level("teacher-wl", {"<unk>": 0, "bar": 1, "world": 2, "baz": 3, "hello": 4,
                                        "qux": 5},
                         added=["foo"], unk_token="<unk>", eos_token="<|im_end|>")
    assert student.convert_ids_to_tokens([5, 6]) == ["<eos>", "<s_only>"]
    assert teacher.convert_ids_to_tokens([6, 7]) == ["<|im_end|>", "foo"]
    return student, teacher


def test_string_map_and_coverage(pair):
    student, teacher = pair
    vmap = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10)
    # id 7 of the student is a padded logit row with no token.
    assert vmap.student_to_teacher.tolist() == [-1, 4, 2, 7, 1, -1, -1, -1]
    cov = vmap.coverage
    assert (cov.student_mapped, cov.student_total) == (4, 7)
    assert (cov.teacher_mapped, cov.teacher_total) == (4, 8)
    assert cov.student_fraction == pytest.approx(4 / 7)
    assert cov.as_dict()["teacher_fraction"] == pytest.approx(4 / 8)
    assert vmap.identity_prefix is None


def test_stop_token_pair_and_override(pair):
    student, teacher = pair
    vmap = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                          pairs={5: 6})
    assert vmap.student_to_teacher.tolist() == [-1, 4, 2, 7, 1, 6, -1, -1]
    assert (vmap.coverage.student_mapped, vmap.coverage.teacher_mapped) == (5, 5)

    # An explicit pair beats the string match, and the map stays injective: "world" loses
    # teacher id 2 to the pair, and teacher "hello" (4) is left without a student id.
    override = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                              pairs={1: 2})
    assert override.student_to_teacher.tolist() == [-1, 2, -1, 7, 1, -1, -1, -1]
    assert override.coverage.student_mapped == 3

    with pytest.raises(UserError, match="out of range"):
        VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                       pairs={5: 10})
    with pytest.raises(UserError, match="paired once"):
        VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                       pairs={5: 6, 6: 6})


def test_to_teacher_ids(pair):
    student, teacher = pair
    vmap = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                          pairs={5: 6})
    ids = torch.tensor([[1, 5, 6, -100], [2, 7, 4, 9]])
    teacher_ids, unmapped = vmap.to_teacher_ids(ids, fill_id=0)
    assert teacher_ids.tolist() == [[4, 6, 0, 0], [2, 0, 1, 0]]
    assert unmapped.tolist() == [[False, False, True, True], [False, True, False, True]]
    assert int(unmapped.sum()) == 4


def test_teacher_logprobs_into_student_vocab(pair):
    student, teacher = pair
    vmap = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                          pairs={5: 6})
    teacher_lp = torch.log_softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(0)),
                                   dim=-1)
    out = vmap.teacher_to_student_logprobs(teacher_lp)
    assert out.shape == (3, 8) and out.dtype == teacher_lp.dtype
    for sid, tid in enumerate([-1, 4, 2, 7, 1, 6, -1, -1]):
        if tid < 0:
            assert torch.isneginf(out[:, sid]).all()
        else:
            assert torch.equal(out[:, sid], teacher_lp[:, tid])
    blocked = vmap.teacher_to_student_logprobs(teacher_lp, blocked_student_ids=[5, 3])
    assert torch.isneginf(blocked[:, [0, 3, 5, 6, 7]]).all()
    assert torch.equal(blocked[:, [1, 2, 4]], out[:, [1, 2, 4]])
    # bf16 and extra leading dims are kept.
    out3 = vmap.teacher_to_student_logprobs(teacher_lp.bfloat16()[None])
    assert out3.shape == (1, 3, 8) and out3.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="width"):
        vmap.teacher_to_student_logprobs(teacher_lp[:, :9])
    # The map travels with .to(device) and gives the same results there.
    moved = vmap.to("cpu")
    assert moved is not vmap and moved.student_to_teacher.device.type == "cpu"
    assert torch.equal(moved.teacher_to_student_logprobs(teacher_lp), out)


def test_identical_tokenizers_give_identity_fast_path():
    texts = ["hello world", "the quick brown fox jumps", "ni hao shi jie"] * 3
    tokenizer = byte_bpe("same-bpe", texts)
    n = len(tokenizer)
    vmap = VocabMap.build(tokenizer, tokenizer, student_vocab_size=n + 5,
                          teacher_vocab_size=n + 5)
    assert vmap.identity_prefix == n
    expected_table = torch.cat([torch.arange(n), torch.full((5,), -1)])
    assert torch.equal(vmap.student_to_teacher, expected_table)
    assert vmap.coverage.student_fraction == 1.0 and vmap.coverage.teacher_fraction == 1.0

    teacher_lp = torch.randn(4, n + 5, generator=torch.Generator().manual_seed(1))
    fast = vmap.teacher_to_student_logprobs(teacher_lp, blocked_student_ids=[0])
    general = VocabMap(vmap.student_to_teacher, teacher_vocab_size=n + 5,
                       coverage=vmap.coverage)
    general.identity_prefix = None  # force the gather path
    assert torch.equal(fast, general.teacher_to_student_logprobs(teacher_lp,
                                                                 blocked_student_ids=[0]))
    assert torch.isneginf(fast[:, n:]).all() and torch.isneginf(fast[:, 0]).all()

    # Same widths as the tokenizer: the input itself comes back, and blocking never writes
    # into the caller's tensor.
    exact = VocabMap.build(tokenizer, tokenizer, student_vocab_size=n, teacher_vocab_size=n)
    lp = torch.randn(2, n)
    before = lp.clone()
    assert exact.teacher_to_student_logprobs(lp) is lp
    blocked = exact.teacher_to_student_logprobs(lp, blocked_student_ids=[3])
    assert torch.isneginf(blocked[:, 3]).all() and torch.equal(lp, before)


def test_partially_overlapping_bpe_vocabularies_match_by_string():
    student = byte_bpe("bpe-en", ["hello world", "the quick brown fox"] * 4)
    teacher = byte_bpe("bpe-mixed", ["the brown cow", "hello there", "quiet world"] * 4, 320)
    vmap = VocabMap.build(student, teacher, student_vocab_size=len(student) + 3,
                          teacher_vocab_size=len(teacher))
    table = vmap.student_to_teacher.tolist()
    teacher_vocab = teacher.get_vocab()
    mapped = 0
    for sid, tid in enumerate(table[:len(student)]):
        token = student.convert_ids_to_tokens(sid)
        if tid >= 0:
            assert teacher.convert_ids_to_tokens(tid) == token
            mapped += 1
        else:
            assert token not in teacher_vocab
    assert table[len(student):] == [-1, -1, -1]
    assert vmap.coverage.student_mapped == mapped
    assert 0 < mapped < len(student)
    assert vmap.identity_prefix is None


def test_require_coverage_reports_and_refuses(pair):
    student, teacher = pair
    vmap = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10,
                          pairs={5: 6})
    report = vmap.require_coverage([1, 2, 3, 0, 1, -100], required_ids=[5], min_fraction=0.7)
    assert report["in_play_distinct"] == 4 and report["in_play_mapped"] == 3
    assert report["in_play_fraction"] == pytest.approx(0.75)
    assert report["student_tokenizer"] == "student-wl" and report["student_mapped"] == 5

    with pytest.raises(UserError, match=r"3 of the 4 distinct student tokens in play \(75\.0%"):
        vmap.require_coverage([1, 2, 3, 0], min_fraction=0.8)
    # Without the stop-token pair the stop token itself is refused, whatever the fraction.
    no_pair = VocabMap.build(student, teacher, student_vocab_size=8, teacher_vocab_size=10)
    with pytest.raises(UserError, match=r"5 \('<eos>'\)"):
        no_pair.require_coverage([1, 2], required_ids=[5])


def test_incompatible_pair_is_refused_with_clear_message():
    # SentencePiece-style spellings against plain words: nothing matches.
    student = word_level("sp-student", {"<unk>": 0, "▁hello": 1, "▁world": 2}, unk_token="<unk>")
    teacher = word_level("bpe-teacher", {"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    vmap = VocabMap.build(student, teacher, student_vocab_size=3, teacher_vocab_size=3)
    assert vmap.coverage.student_mapped == 0
    with pytest.raises(UserError) as err:
        vmap.require_coverage()
    message = str(err.value)
    assert "'sp-student'" in message and "'bpe-teacher'" in message
    assert "0 of the 3 student tokens (0.0%; at least 95.0% needed)" in message
    assert "'▁hello'" in message
    assert "same tokenizer family" in message
