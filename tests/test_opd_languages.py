"""OPD with real-checkpoint behaviour (issue: language headers, language codes, blocked and stop
tokens): the teacher must score exactly the transcript context the student produced.

The identity tests use the same checkpoint as teacher and student, where the KL must be zero at
every supervised position, and craft the student's rollout (``generate`` replaced by a fixed
response) so that the header path, code-switched text and unpromptable languages are exercised
whatever a random-weight model would write.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from stages.data.manifest import LANGUAGES, check_language
from stages.models import FAMILIES, load_adapter
from stages.opd import calibration
from stages.opd.calibration import CalibrationThresholds, calibrate
from stages.opd.config import OpdConfig
from stages.opd.language import choose_languages, detect_language
from stages.opd.rollout import clean_responses
from stages.opd.step import opd_forward, opd_step, prepare_teacher
from stages.opd.vocab import build_vocab_map
from tests.short_run import batch_of

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = OpdConfig(top_k=8, max_new_tokens=12)
CODE_SWITCHED = "我们今天讨论transformer模型"


def load(models_dir, name):
    return load_adapter(str(models_dir / name))


class FixedRollout:
    """Replace an adapter's ``generate`` by fixed responses (the rollout the test wants)."""

    def __init__(self, adapter, responses):
        self.adapter, self.responses = adapter, responses

    def __enter__(self):
        self.saved = self.adapter.generate
        self.adapter.generate = lambda audios, languages, **kw: [list(r) for r in self.responses]
        return self

    def __exit__(self, *exc):
        self.adapter.generate = self.saved


def transcript_ids(adapter, text):
    return adapter.tokenizer.encode(text, add_special_tokens=False)


# ---- detection -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, language", [
    (CODE_SWITCHED, "zh"),                       # Latin letters do not outvote Han characters
    ("我用Python和PyTorch写了一个ASR系统", "zh"),
    ("佢哋喺度食緊飯", "yue"),                      # written Cantonese
    ("我哋今日去咗飲茶", "yue"),
    ("今天我们去喝茶", "zh"),
    ("ひらがなとカタカナ", "ja"),
    ("今日はtransformerの話です", "ja"),          # kana make kanji Japanese
    ("안녕하세요 transformer 모델", "ko"),
    ("the transformer model", "en"),
])
def test_detection_gives_cjk_precedence(text, language):
    assert detect_language(text) == language


def test_choice_prefers_manifest_then_student_header_and_counts_unpromptable():
    promptable = frozenset({"zh", "en", "yue", "ja"})
    choice = choose_languages(
        ["sw", None, None, "yue", None, None],
        [CODE_SWITCHED, "hello", "佢哋喺度", "佢哋", "佢哋喺度", "12"],
        header_languages=[None, "ja", None, None, None, None],
        fallback="en", promptable=promptable)
    assert choice.languages == ["zh", "ja", "yue", "yue", "yue", "en"]
    assert choice.sources == ["detected", "student_header", "detected", "manifest", "detected",
                              "fallback"]
    assert choice.unpromptable == 1 and choice.stats()["lang_unpromptable"] == 1
    # A teacher without Cantonese reads Cantonese characters as Chinese.
    assert choose_languages([None], ["佢哋喺度"], fallback="en",
                            promptable={"zh", "en"}).languages == ["zh"]


def test_every_family_language_is_accepted_by_validation():
    for family in FAMILIES.values():
        for code in family.prompt_languages or ():
            assert check_language(code) == code
    assert {"yue", "fil"} <= set(LANGUAGES)


def test_validation_family_list_matches_the_adapters():
    from stages.validate import TEACHER_FAMILIES

    assert set(TEACHER_FAMILIES) == set(FAMILIES)


# ---- teacher = student: the loss is zero -----------------------------------------------------

@pytest.fixture(scope="module")
def corpus(opd_corpus):
    return opd_corpus


def identity(models_dir, name):
    student = load(models_dir, name)
    teacher = prepare_teacher(load(models_dir, name))
    return student, teacher, build_vocab_map(student, teacher)


def assert_zero_loss(student, teacher, vocab_map, batch, responses):
    with FixedRollout(student, responses):
        out = opd_forward(student, teacher, vocab_map, batch, CFG, compute_grad=False)
    assert out.positions > 0
    assert float(out.loss_sum) / out.positions <= 1e-4, float(out.loss_sum) / out.positions
    assert out.stats["top1_agree_sum"] == out.stats["top1_agree_count"]
    return out


@pytest.mark.parametrize("with_language", [True, False])
def test_qwen3_asr_same_checkpoint_gives_zero_loss(corpus, opd_models_dir, with_language):
    """The student (Qwen3-ASR) writes its own header when the manifest has no language: the
    teacher must then be prompted with that header's language and score only what follows."""
    student, teacher, vocab_map = identity(opd_models_dir, "teacher_init")
    utterances = corpus[:3]
    batch = batch_of(utterances, keep_language=[with_language] * 3)
    texts = [CODE_SWITCHED, utterances[1].text, "hello transformer"]
    languages = ["zh", utterances[1].language, "en"]
    stop = student.stop_token_id
    if with_language:
        responses = [transcript_ids(student, t) + [stop] for t in texts]
    else:  # the student's own header, then the transcript
        responses = [transcript_ids(student, student.header(lang) + t) + [stop]
                     for lang, t in zip(languages, texts, strict=True)]
    out = assert_zero_loss(student, teacher, vocab_map, batch, responses)
    if with_language:
        assert out.teacher_languages.sources == ["manifest"] * 3
        assert out.rollout.headers == [0, 0, 0]
    else:
        assert out.teacher_languages.sources == ["student_header"] * 3
        assert out.teacher_languages.languages == languages
        headers = [len(transcript_ids(student, student.header(lang))) for lang in languages]
        assert out.rollout.headers == headers
        # Header positions are never supervised: only transcript and stop.
        assert out.stats["positions_scored"] == sum(len(transcript_ids(student, t)) + 1
                                                    for t in texts)
        assert out.stats["student_header_rows"] == 3


def test_qwen3_asr_without_the_fix_would_not_be_zero(corpus, opd_models_dir):
    """The failure the header split prevents: the whole response, header included, scored
    after a forced header (the teacher sees it twice)."""
    student, teacher, _ = identity(opd_models_dir, "teacher_init")
    utterance = corpus[0]
    batch = batch_of([utterance], keep_language=[False])
    response = transcript_ids(student, student.header("zh") + CODE_SWITCHED)
    response.append(student.stop_token_id)
    with torch.no_grad():
        as_student, _ = student.response_logits(batch.audios, [None], [response])
        doubled, _ = teacher.response_logits(batch.audios, ["zh"], [response])
    assert not torch.allclose(as_student, doubled, atol=1e-3)


@pytest.mark.parametrize("with_language", [True, False])
def test_audio_chat_lm_same_checkpoint_gives_zero_loss(corpus, opd_models_dir, with_language):
    student, teacher, vocab_map = identity(opd_models_dir, "student_init")
    batch = batch_of(corpus[:3], keep_language=[with_language] * 3)
    texts = [CODE_SWITCHED, corpus[1].text, "佢哋喺度"]
    responses = [transcript_ids(student, t) + [student.stop_token_id] for t in texts]
    out = assert_zero_loss(student, teacher, vocab_map, batch, responses)
    assert out.rollout.headers == [0, 0, 0]  # this family never writes a header
    if not with_language:
        assert out.teacher_languages.languages == ["zh", corpus[1].language, "yue"]


def test_unpromptable_and_cantonese_rows_do_not_crash(corpus, opd_models_dir):
    """`sw` has no Qwen3-ASR prompt: both the Qwen3-ASR student and teacher fall back (the
    student writes its own header, the teacher gets a detected language) and it is counted;
    `yue` is one of Qwen3-ASR's own codes."""
    student, teacher, vocab_map = identity(opd_models_dir, "teacher_init")
    batch = batch_of([replace(corpus[0], language="sw"), replace(corpus[1], language="yue")])
    responses = [transcript_ids(student, student.header("en") + "hello") + [student.stop_token_id],
                 transcript_ids(student, "佢哋喺度") + [student.stop_token_id]]
    out = assert_zero_loss(student, teacher, vocab_map, batch, responses)
    assert out.teacher_languages.languages == ["en", "yue"]
    assert out.teacher_languages.sources == ["student_header", "manifest"]
    assert out.stats["lang_unpromptable"] == 1
    # A real rollout (random weights) runs through too.
    loss, positions, stats = opd_step(student, teacher, vocab_map, batch, CFG,
                                      compute_grad=False)
    assert torch.isfinite(loss) and stats["rows"] == 2


def test_calibration_checks_the_whole_manifest_and_reports_token_sets(corpus, opd_models_dir,
                                                                       monkeypatch):
    monkeypatch.setattr(calibration, "load_batch", batch_of)  # in-memory clips
    student, teacher = load(opd_models_dir, "student_init"), prepare_teacher(
        load(opd_models_dir, "teacher_init"))
    rows = list(corpus[:10])
    sw = [replace(u, language="sw") for u in rows[:3]]
    loose = CalibrationThresholds(min_nonempty_ratio=0, min_stopped_ratio=0,
                                  max_initial_loss=1e9, min_vuss=0)
    report = calibrate(student, teacher, sw + rows[3:], CFG, loose, batches=1, batch_size=2,
                       seed=0)
    check = next(c for c in report["checks"] if c["name"] == "teacher_languages")
    assert not check["passed"] and check["value"] == pytest.approx(0.3)
    assert "sw 3" in check["message"]
    assert report["languages"]["unpromptable"] == {"sw": 3}
    assert report["metrics"] == {}  # the forward passes are skipped
    ok = calibrate(student, teacher, rows, CFG, loose, batches=1, batch_size=2, seed=0)
    assert ok["passed"], ok["failed"]
    tokens = ok["tokens"]["teacher"]
    assert tokens["stop_tokens"][0] == "<|im_end|>"
    assert "<|audio_pad|>" in tokens["blocked_tokens"]
    assert "<asr_text>" not in tokens["blocked_tokens"]  # the header marker stays generable


# ---- blocked and stop tokens -----------------------------------------------------------------

def test_control_tokens_and_padded_rows_are_never_generated(corpus, opd_models_dir, tmp_path):
    """A tokenizer with non-special control tokens (as real Qwen tokenizers have) and logits
    wider than the tokenizer: with those ids pushed to the top, decoding still never picks one."""
    student = load(opd_models_dir, "student_init")
    tokenizer = student.tokenizer
    tokenizer.add_tokens(["<think>", "</think>", "<tool_call>", "<|fim_prefix|>"],
                         special_tokens=False)
    tokenizer.add_tokens(["tokenword"], special_tokens=False)  # an added transcript token
    model = student.model
    model.resize_token_embeddings(len(tokenizer) + 40)  # padded rows past the tokenizer
    model.save_pretrained(tmp_path)
    student.processor.save_pretrained(tmp_path)
    adapter = load_adapter(str(tmp_path))
    control = tokenizer.convert_tokens_to_ids(["<think>", "</think>", "<tool_call>",
                                               "<|fim_prefix|>"])
    padded = list(range(len(adapter.tokenizer), adapter.vocab_size))
    blocked = set(adapter.blocked_token_ids.tolist())
    assert set(control) <= blocked and set(padded) <= blocked and len(padded) >= 40
    assert tokenizer.convert_tokens_to_ids("tokenword") not in blocked
    assert adapter.stop_token_id not in blocked

    favourite = torch.tensor(control + padded)

    def push(_module, _args, out):
        out = out.clone()
        out[..., favourite] += 1e4
        return out

    handle = adapter.model.get_output_embeddings().register_forward_hook(push)
    try:
        batch = batch_of(corpus[:4])
        responses = adapter.generate(batch.audios, batch.languages, max_new_tokens=8)
        sampled = adapter.generate(batch.audios, batch.languages, max_new_tokens=8,
                                   do_sample=True, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    for ids in responses + sampled:
        assert not set(ids) & (set(control) | set(padded)), ids


def test_any_declared_end_id_stops_a_response(corpus, opd_models_dir):
    student = load(opd_models_dir, "student_init")
    other = student.tokenizer.convert_tokens_to_ids("<|user|>")  # GLM's next-turn marker
    assert other != student.stop_token_id
    student.model.generation_config.eos_token_id = [student.stop_token_id, other]
    student.stop_token_ids = student._stop_ids()
    student.blocked_token_ids = student._blocked_ids()
    assert student.stop_token_ids[0] == student.stop_token_id and other in student.stop_token_ids
    assert other not in set(student.blocked_token_ids.tolist())

    def push(_module, _args, out):
        out = out.clone()
        out[..., other] += 1e4
        return out

    handle = student.model.get_output_embeddings().register_forward_hook(push)
    try:
        batch = batch_of(corpus[:2])
        responses = student.generate(batch.audios, batch.languages, max_new_tokens=6)
    finally:
        handle.remove()
    assert responses == [[other], [other]]  # stopped at once, on the secondary end id
    assert student.decode_response([5, 6, other, 7]) == student.decode_response([5, 6])
    cleaned = clean_responses([[5, other, 9], [5, 6]], student.stop_token_ids)
    assert cleaned.responses == [[5, other], [5, 6]] and cleaned.stopped == [True, False]


def test_nonfinite_student_outputs_poison_the_loss(corpus, opd_models_dir):
    """A NaN in the student's logits must reach the trainer's non-finite guard, not vanish
    with the positions the loss drops."""
    student = load(opd_models_dir, "student_init")
    teacher = prepare_teacher(load(opd_models_dir, "teacher_init"))
    batch = batch_of(corpus[:2])
    word = transcript_ids(student, "hello")[0]  # a transcript id: never masked as blocked

    def nan_once(_module, _args, out):
        out = out.clone()
        out[0, -1, word] = float("nan")
        return out

    with FixedRollout(student, [[5, 6, student.stop_token_id], [7, student.stop_token_id]]):
        handle = student.model.get_output_embeddings().register_forward_hook(nan_once)
        try:
            loss, positions, stats = opd_step(student, teacher, build_vocab_map(student, teacher),
                                              batch, CFG)
        finally:
            handle.remove()
    assert torch.isnan(loss) and loss.requires_grad
    assert stats["nonfinite_student_positions"] == 1 and stats["nonfinite_teacher_positions"] == 0


def test_response_header_parsing(opd_models_dir):
    """Qwen3-ASR's header: its length, language, and responses without one."""
    student = load(opd_models_dir, "teacher_init")
    assert student.response_header([]).length == 0
    plain = student.response_header(transcript_ids(student, "hello"))
    assert (plain.length, plain.complete, plain.language) == (0, False, None)
    header = student.response_header(transcript_ids(student, student.header("ko") + "안녕"))
    assert header.complete and header.language == "ko"
    assert header.length == len(transcript_ids(student, student.header("ko")))


def test_validation_counts_languages_the_teacher_has_no_prompt_for(tmp_path, capsys):
    import json

    import soundfile as sf

    from stages import validate

    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    rows = [{"audio": "a.wav", "text": "x", "language": code, "id": f"u{i}"}
            for i, code in enumerate(["sw", "sw", "yue", "zh", "fil"])]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--input", str(manifest), "--output", str(tmp_path / "v.jsonl"), "--report",
            str(tmp_path / "r.json"), "--workers", "1", "--no-progress"]
    assert validate.main(validate.build_parser().parse_args(
        [*argv, "--teacher-family", "qwen3_asr"])) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["valid"] == 5  # accepted, only counted
    assert report["unpromptable_languages"] == {"family": "qwen3_asr", "lines": {"sw": 2}}
    assert "2 valid line(s) have a language" in (tmp_path / "r.md").read_text()
    assert validate.main(validate.build_parser().parse_args(argv)) == 0
    assert json.loads((tmp_path / "r.json").read_text())["unpromptable_languages"] is None
