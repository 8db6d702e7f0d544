"""The OPD step (stages/opd/rollout.py, language.py, step.py) on tiny CPU models.

Cleaning and language choice are checked on crafted inputs; the step against a computation
assembled by hand from the adapters, the vocabulary map and the loss; the short run (SFT both
models briefly, then OPD) checks that the student actually moves toward the teacher.
The corpus and the models come from ``tests.short_run`` (session fixtures in conftest.py):
the tiny demo models and espeak sentences.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stages.common.errors import UserError
from stages.models import load_adapter
from stages.opd.config import OpdConfig
from stages.opd.language import choose_languages, detect_language, script_counts
from stages.opd.loss import union_topk_kl
from stages.opd.rollout import clean_responses, default_synced_gpus, rollout
from stages.opd.step import opd_forward, opd_step, prepare_teacher
from stages.opd.vocab import VocabMap, build_vocab_map
from tests.short_run import batch_of, run_opd, sft

pytestmark = pytest.mark.usefixtures("one_thread")

STOP = 9
CFG = OpdConfig(top_k=8, max_new_tokens=6)
# Manifest languages of the 4-row test batch: two given, two detected from the rollout.
KEEP_LANGUAGE = [True, False, True, False]


@pytest.fixture
def student(opd_models_dir):
    return load_adapter(str(opd_models_dir / "student_init"))


@pytest.fixture
def teacher(opd_models_dir):
    return prepare_teacher(load_adapter(str(opd_models_dir / "teacher_init")))


@pytest.fixture(scope="module")
def batch(opd_corpus):
    return batch_of(opd_corpus[:4], keep_language=KEEP_LANGUAGE)


class StopBias:
    """Forward hook on the student's LM head adding ``value`` to the stop token's logit."""

    def __init__(self, adapter, value: float):
        self.adapter, self.value = adapter, value

    def __enter__(self):
        def hook(_module, _args, out):
            out = out.clone()
            out[..., self.adapter.stop_token_id] += self.value
            return out
        self.handle = self.adapter.model.get_output_embeddings().register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def hand_loss(student, teacher, vocab_map, batch, cfg, *, scored_mask=None):
    """The step assembled from its parts: greedy rollout, languages, teacher log_softmax over
    its vocabulary, mapping, student logits with blocked ids at -inf, union top-k KL."""
    responses = student.generate(batch.audios, batch.languages,
                                 max_new_tokens=cfg.max_new_tokens)
    languages = [given or detect_language(student.decode_response(r)) or cfg.fallback_language
                 for given, r in zip(batch.languages, responses, strict=True)]
    table = vocab_map.student_to_teacher
    teacher_ids = [[int(table[i]) if table[i] >= 0 else teacher.pad_token_id for i in r]
                   for r in responses]
    with torch.no_grad():
        t_logits, mask = teacher.response_logits(batch.audios, languages, teacher_ids)
        t_logprobs = vocab_map.teacher_to_student_logprobs(
            torch.log_softmax(t_logits, dim=-1), blocked_student_ids=student.blocked_token_ids)
    s_logits, _ = student.response_logits(batch.audios, batch.languages, responses)
    s_logits = s_logits.index_fill(-1, student.blocked_token_ids, float("-inf"))
    if scored_mask is not None:
        mask = scored_mask
    loss, stats = union_topk_kl(s_logits[mask], t_logprobs[mask], top_k=cfg.top_k,
                                temperature=cfg.temperature, reduction="sum")
    return loss, stats, responses, languages


# ---- cleaning -----------------------------------------------------------------------------------

def test_cleaning_cuts_at_the_first_stop_and_counts_rows():
    raw = [[1, 2, STOP, 4, STOP], [STOP], [], [1, 2, 3], [STOP, STOP, 5]]
    kept = clean_responses(raw, STOP)
    assert kept.responses == [[1, 2, STOP], [STOP], [], [1, 2, 3], [STOP]]
    assert kept.lengths == [3, 1, 0, 3, 1]
    assert kept.stopped == [True, True, False, False, True]
    assert kept.nonempty == [True, False, False, True, False]
    assert kept.supervised == [3, 1, 0, 3, 1]  # the stop is the last supervised position
    assert kept.supervised_mask().tolist() == [
        [True, True, True], [True, False, False], [False] * 3, [True] * 3, [True, False, False]]
    assert kept.stats() == {
        "rows": 5, "tokens": 8, "rollout_len_sum": 8, "rollout_len_count": 5,
        "rollout_len_max": 3, "stopped_sum": 3, "stopped_count": 5, "nonempty_sum": 2,
        "nonempty_count": 5, "student_header_rows": 0}

    dropped = clean_responses(raw, STOP, keep_stop_token=False)
    assert dropped.responses == kept.responses  # the stop stays in the scored ids
    assert dropped.supervised == [2, 0, 0, 3, 0]  # ... but its position is not supervised
    assert dropped.supervised_mask(4).tolist()[0] == [True, True, False, False]
    assert dropped.stats() == kept.stats()


def test_rollout_is_the_cleaned_generate_output(student, batch):
    assert not default_synced_gpus()  # one process: no decoding sync needed
    expected = student.generate(batch.audios, batch.languages, max_new_tokens=5)
    got = rollout(student, batch.audios, batch.languages, max_new_tokens=5)
    assert got.responses == expected
    assert got.prompt_languages == list(batch.languages)  # GLM-ASR picks none itself
    assert replace(got, prompt_languages=[]) == clean_responses(expected, student.stop_token_id)

    def sample(seed):
        return rollout(student, batch.audios, batch.languages, max_new_tokens=5, do_sample=True,
                       temperature=2.0, generator=torch.Generator().manual_seed(seed)).responses

    assert sample(3) == sample(3) != expected


# ---- language -----------------------------------------------------------------------------------

def test_language_detection_by_script_with_cjk_precedence():
    assert detect_language("今天天气很好。") == "zh"
    assert detect_language("こんにちは、げんきですか。") == "ja"
    assert detect_language("今日はいい天気です") == "ja"  # kanji count for ja when kana occur
    assert detect_language("ｶﾀｶﾅ") == "ja"  # half-width katakana
    assert detect_language("안녕하세요 반갑습니다.") == "ko"
    assert detect_language("Hello world") == "en"
    assert detect_language("Ｈｅｌｌｏ") == "en"  # full-width Latin
    assert detect_language("Äpfel über Öl und Straße", latin_language="de") == "de"
    assert detect_language("ok 中文字") == "zh"
    # CJK scripts take precedence over Latin; Han wins a tie with Hangul.
    assert detect_language("abcdefgh가나") == "ko"
    assert detect_language("中가") == "zh"
    assert detect_language("abcdefgh中文") == "zh"
    assert detect_language("1234 ?! ...") is None
    assert detect_language("") is None
    assert detect_language("Привет") is None  # scripts outside the table count for nothing
    assert script_counts("ab 中。か") == {"latin": 2, "han": 1, "kana": 1}


def test_language_choice_prefers_the_manifest_then_detects_then_falls_back():
    choice = choose_languages(["de", None, "", None, None],
                              ["你好", "你好", "안녕", "12 34", "hello"], fallback="fr")
    assert choice.languages == ["de", "zh", "ko", "fr", "en"]
    assert choice.sources == ["manifest", "detected", "detected", "fallback", "detected"]
    assert choice.stats() == {"lang_de": 1, "lang_zh": 1, "lang_ko": 1, "lang_fr": 1,
                              "lang_en": 1, "lang_source_manifest": 1,
                              "lang_source_student_header": 0, "lang_source_detected": 3,
                              "lang_source_fallback": 1, "lang_unpromptable": 0}
    with pytest.raises(ValueError, match="2 manifest languages but 1 texts"):
        choose_languages(["en", None], ["x"], fallback="en")


# ---- the step -----------------------------------------------------------------------------------

def test_step_equals_the_hand_assembled_loss_and_trains_only_the_student(student, teacher, batch):
    vocab_map = build_vocab_map(student, teacher)
    expected, expected_stats, responses, languages = hand_loss(student, teacher, vocab_map,
                                                               batch, CFG)
    student.model.zero_grad(set_to_none=True)
    out = opd_forward(student, teacher, vocab_map, batch, CFG)
    assert out.rollout.responses == responses
    assert out.teacher_languages.languages == languages
    assert out.teacher_languages.sources[0] == "manifest" and languages[0] == batch.languages[0]
    assert out.teacher_languages.sources[1] in ("detected", "fallback")
    torch.testing.assert_close(out.loss_sum, expected.detach(), rtol=1e-5, atol=1e-6)
    assert out.loss_sum.item() > 0
    stats = out.stats
    positions = int(expected_stats["positions"])
    assert out.positions == positions == stats["positions_used"] > 0
    assert stats["positions_scored"] == sum(map(len, responses))
    assert stats["vuss_sum"] == pytest.approx(float(expected_stats["vuss_sum"]))
    assert stats["opd_valid_topk_mean_sum"] == stats["vuss_sum"]
    assert stats["vuss_count"] == stats["top1_agree_count"] == positions
    assert stats["top1_agree_sum"] == float(expected_stats["top1_agree_count"])
    assert stats["teacher_mass_sum"] == pytest.approx(float(expected_stats["teacher_mass_sum"]))
    assert CFG.top_k <= stats["vuss_sum"] / positions <= 2 * CFG.top_k
    assert stats["tokens"] == stats["rollout_len_sum"] == sum(map(len, responses))
    assert stats["rows"] == 4 and stats["unmapped_tokens"] == 0
    assert sum(v for k, v in stats.items() if k.startswith("lang_source_")) == 4
    assert sum(v for k, v in stats.items()
               if k.startswith("lang_") and not k.startswith("lang_source_")) == 4
    assert all(stats[f"time_{p}"] >= 0 for p in ("rollout", "teacher", "student", "loss"))

    out.loss_sum.backward()
    grads = [p.grad for p in student.model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())


def test_identical_teacher_and_student_agree_exactly(student, opd_models_dir, batch):
    twin = prepare_teacher(load_adapter(str(opd_models_dir / "student_init")))
    loss_sum, positions, stats = opd_step(student, twin, build_vocab_map(student, twin), batch,
                                          CFG)
    assert positions > 0
    assert abs(loss_sum.item()) / positions < 1e-6
    assert stats["top1_agree_sum"] == stats["top1_agree_count"] == positions
    assert stats["kl_sum"] / positions < 1e-6


def test_unmapped_ids_are_counted_and_what_follows_them_is_masked(student, teacher, batch):
    responses = student.generate(batch.audios, batch.languages,
                                 max_new_tokens=CFG.max_new_tokens)
    # The id the student emits most often before the last position, made unmappable.
    counts: dict[int, int] = {}
    for r in responses:
        for i in r[:-1]:
            counts[i] = counts.get(i, 0) + 1
    victim = max(counts, key=lambda i: (counts[i], i))
    full = build_vocab_map(student, teacher)
    table = full.student_to_teacher.clone()
    table[victim] = -1
    vocab_map = VocabMap(table, teacher_vocab_size=full.teacher_vocab_size,
                         coverage=full.coverage)

    out = opd_forward(student, teacher, vocab_map, batch, CFG)
    assert out.rollout.responses == responses
    assert out.stats["unmapped_tokens"] == sum(r.count(victim) for r in responses) > 0
    width = max(map(len, responses))
    expected_mask = torch.zeros((len(responses), width), dtype=torch.bool)
    for row, r in enumerate(responses):
        # Positions up to the first unmapped id (inclusive: its prefix is intact) stay scored.
        keep = r.index(victim) + 1 if victim in r else len(r)
        expected_mask[row, :keep] = True
    assert out.scored_mask.tolist() == expected_mask.tolist()
    masked = sum(map(len, responses)) - int(expected_mask.sum())
    assert out.stats["unmapped_masked_positions"] == masked > 0
    assert out.stats["positions_scored"] == int(expected_mask.sum())
    expected, _, _, _ = hand_loss(student, teacher, vocab_map, batch, CFG,
                                  scored_mask=expected_mask)
    torch.testing.assert_close(out.loss_sum, expected.detach(), rtol=1e-5, atol=1e-6)


def test_compute_grad_false_builds_no_graph(student, teacher, batch):
    vocab_map = build_vocab_map(student, teacher)
    with_grad, positions, stats = opd_step(student, teacher, vocab_map, batch, CFG)
    without, positions_ng, stats_ng = opd_step(student, teacher, vocab_map, batch, CFG,
                                               compute_grad=False)
    assert with_grad.requires_grad
    assert not without.requires_grad and without.grad_fn is None
    assert torch.equal(without, with_grad.detach()) and positions_ng == positions
    assert {k: v for k, v in stats_ng.items() if not k.startswith("time_")} == (
        {k: v for k, v in stats.items() if not k.startswith("time_")})


def test_a_rank_without_supervised_positions_still_joins_backward(student, teacher, batch):
    cfg = OpdConfig(top_k=8, max_new_tokens=6, keep_stop_token=False)
    with StopBias(student, 1e4):
        loss_sum, positions, stats = opd_step(student, teacher, build_vocab_map(student, teacher),
                                              batch, cfg)
    assert positions == 0 and stats["positions_scored"] == 0
    assert stats["stopped_sum"] == 4 and stats["nonempty_sum"] == 0
    assert stats["rollout_len_sum"] == 4  # rows are just the stop token, scored but unsupervised
    assert loss_sum.item() == 0.0 and loss_sum.requires_grad
    student.model.zero_grad(set_to_none=True)
    loss_sum.backward()
    grads = [p.grad for p in student.model.parameters()]
    assert all(g is not None and not bool(g.any()) for g in grads)


def test_settings_are_checked():
    with pytest.raises(UserError, match="top_k must be a positive integer"):
        OpdConfig(top_k=0)
    with pytest.raises(UserError, match="max_new_tokens must be >= 1.*fallback_language"):
        OpdConfig(max_new_tokens=0, fallback_language="")


# ---- a short run --------------------------------------------------------------------------------

def test_short_opd_run_moves_the_student_toward_the_teacher(opd_corpus, opd_models_dir):
    teacher = load_adapter(str(opd_models_dir / "teacher_init"))
    student = load_adapter(str(opd_models_dir / "student_init"))
    torch.manual_seed(0)
    sft(teacher, opd_corpus, steps=90, lr=3e-3, batch_size=6, seed=0)
    # The student learns less than the teacher.
    sft(student, opd_corpus, steps=30, lr=3e-3, batch_size=6, seed=1)
    batches = [batch_of(opd_corpus[:6]), batch_of(opd_corpus[6:], keep_language=[False] * 6)]
    rows = run_opd(student, teacher, build_vocab_map(student, teacher), batches,
                   OpdConfig(top_k=16, max_new_tokens=24), steps=24, lr=1e-3)
    first, last = rows[:4], rows[-4:]

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    print({key: (round(mean(key, first), 4), round(mean(key, last), 4))
           for key in ("loss", "vuss", "teacher_mass", "top1_agree")})
    assert mean("loss", last) < 0.7 * mean("loss", first)
    assert mean("top1_agree", last) > mean("top1_agree", first) + 0.05
    assert mean("teacher_mass", last) >= mean("teacher_mass", first) - 0.01
