"""The whisper family (stages/models/whisper.py) on tiny Whispers built offline
(stages/demo/tiny_whisper.py): decoding against a per-token reference loop, language detection,
the 30-second window, SFT labels, and OPD steps with Whisper and Qwen3-ASR teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.common.errors import UserError
from stages.demo.sentences import LANGUAGES, generate_sentence
from stages.demo.tiny import save_dir
from stages.demo.tiny_whisper import build_whisper, train_whisper_tokenizer
from stages.models import family_of, load_adapter
from stages.opd.config import OpdConfig
from stages.opd.step import opd_forward, opd_step, prepare_teacher
from stages.opd.vocab import build_vocab_map
from stages.train.objectives import SftObjective
from tests.helpers import greedy_by_full_forwards
from tests.short_run import batch_of

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = OpdConfig(top_k=8, max_new_tokens=6)


@pytest.fixture(scope="module")
def whisper_dir(opd_corpus, tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [u.text for u in opd_corpus] + [
        generate_sentence(LANGUAGES[i % len(LANGUAGES)], rng).text for i in range(300)]
    tokenizer = train_whisper_tokenizer(texts, 700)
    root = tmp_path_factory.mktemp("whisper")
    save_dir(root / "teacher", *build_whisper(tokenizer, {"d_model": 96}, seed=0))
    save_dir(root / "student", *build_whisper(tokenizer, seed=1))
    return root


@pytest.fixture
def student(whisper_dir):
    return load_adapter(str(whisper_dir / "student"))


@pytest.fixture(scope="module")
def batch(opd_corpus):
    return batch_of(opd_corpus[:4], keep_language=[True, False, True, True])


def test_the_family_is_detected_and_its_tokens_resolved(student, whisper_dir):
    assert family_of(str(whisper_dir / "student")) == "whisper"
    tokenizer = student.tokenizer
    assert student.stop_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert {"en", "zh", "ja", "ko", "fr", "de"} <= student.prompt_languages
    prefix = student.prefix("zh")
    assert tokenizer.convert_ids_to_tokens(prefix) == [
        "<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
    blocked = set(student.blocked_token_ids.tolist())
    assert set(prefix) <= blocked and student.stop_token_id not in blocked
    assert set(range(len(tokenizer), student.vocab_size)) <= blocked
    with pytest.raises(UserError, match="no Whisper language token"):
        student.prefix("xx")


def append_to_decoder(inputs: dict, chosen: torch.Tensor) -> dict:
    """Encoder-decoder layout: the chosen ids join the decoder ids."""
    return {**inputs,
            "decoder_input_ids": torch.cat([inputs["decoder_input_ids"], chosen[:, None]], 1)}


def test_greedy_decoding_equals_a_per_token_reference_loop(student, batch):
    languages = [u.language for u in batch.utterances]
    with StopAfter(student, row=2, steps=2):
        got = student.generate(batch.audios, languages, max_new_tokens=7)
        built = student.build_batch(batch.audios, languages).inputs
        want = greedy_by_full_forwards(
            student, {k: built[k] for k in ("input_features", "decoder_input_ids")}, 7,
            append_to_decoder)
    assert got == want
    assert got[2][-1] == student.stop_token_id and len(got[2]) == 3  # an early stop
    assert all(len(r) == 7 for row, r in enumerate(got) if row != 2)


class StopAfter:
    """Make row ``row`` write the stop token as its new token number ``steps`` (0-based), in a
    full forward (the reference loop) and in cached decoding alike (forward hook on the head)."""

    PREFIX = 4

    def __init__(self, adapter, row: int, steps: int):
        self.adapter, self.row, self.steps = adapter, row, steps

    def __enter__(self):
        self.generated = 0

        def hook(_module, _args, out):
            length = out.shape[1]
            # A forward over the whole decoder input, or one cached step after a prefill.
            self.generated = length - self.PREFIX if length > 1 else self.generated + 1
            if self.generated == self.steps:
                out = out.clone()
                out[self.row, -1, self.adapter.stop_token_id] += 1e4
            return out
        self.handle = self.adapter.model.get_output_embeddings().register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_language_detection_fills_the_prefix(student, batch):
    audios = batch.audios[:3]
    detected = student.detect_languages(
        student.build_batch(audios, ["en"] * 3).inputs["input_features"])
    built = student.build_batch(audios, [None, "fr", None])
    prefixes = built.inputs["decoder_input_ids"][:, :built.prompt_length].tolist()
    assert prefixes == [student.prefix(detected[0]), student.prefix("fr"),
                        student.prefix(detected[2])]


def test_clips_over_thirty_seconds_are_refused(student):
    with pytest.raises(UserError, match=r"30\.5 s clip is longer than Whisper's 30 s window"):
        student.generate([np.zeros(int(30.5 * 16000), dtype=np.float32)], ["en"],
                         max_new_tokens=2)


def test_sft_labels_follow_the_trainers_convention(student, batch):
    texts = ["hello world", "你好"]
    two = type(batch)([batch.utterances[0], batch.utterances[2]],  # rows with a language
                      [batch.audios[0], batch.audios[2]])
    inputs = student.sft_inputs(two.audios, two.languages, texts)
    labels, ids = inputs["labels"], inputs["decoder_input_ids"]
    for row, text in enumerate(texts):
        target = student.encode_response(text)  # transcript ids and the stop token
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == target
        assert ids[row, 4:4 + len(target)].tolist() == target
        assert (labels[row, :4] == -100).all()
    # The trainer's loss (shifted by one inside) equals cross-entropy by hand.
    objective = SftObjective.__new__(SftObjective)
    objective.adapter, objective.texts = student, lambda _batch: texts
    loss_sum, tokens, _ = objective.loss(student.model, two, 0)
    logits = student.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                              labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    assert int(tokens) == sum(len(student.encode_response(t)) for t in texts)
    torch.testing.assert_close(loss_sum, by_hand, rtol=1e-5, atol=1e-5)


def test_sft_needs_every_language(student, batch):
    with pytest.raises(UserError, match="Whisper fine-tuning needs the language"):
        student.sft_inputs(batch.audios[:2], ["en", None], ["hello", "world"])


def test_identical_whisper_teacher_and_student_agree_exactly(student, whisper_dir, batch):
    twin = prepare_teacher(load_adapter(str(whisper_dir / "student")))
    loss_sum, positions, stats = opd_step(student, twin, build_vocab_map(student, twin), batch,
                                          CFG)
    assert positions > 0 and abs(loss_sum.item()) / positions < 1e-6
    assert stats["top1_agree_sum"] == stats["top1_agree_count"] == positions


@pytest.mark.parametrize("teacher_kind", ["whisper", "qwen3_asr"])
def test_opd_steps_train_a_whisper_student(student, whisper_dir, opd_models_dir, batch,
                                           teacher_kind):
    path = (whisper_dir / "teacher" if teacher_kind == "whisper"
            else opd_models_dir / "teacher_init")
    teacher = prepare_teacher(load_adapter(str(path)))
    vocab_map = build_vocab_map(student, teacher)
    student.model.train()
    out = opd_forward(student, teacher, vocab_map, batch, CFG)
    assert out.positions > 0 and torch.isfinite(out.loss_sum) and out.loss_sum.item() > 0
    assert CFG.top_k <= out.stats["vuss_sum"] / out.positions <= 2 * CFG.top_k
    out.loss_sum.backward()
    grads = [p.grad for p in student.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.slow
def test_two_sharded_ranks_decode_and_score_a_whisper_student(whisper_dir, opd_models_dir,
                                                              tmp_path):
    """tests/opd_driver.py with a Whisper student (FSDP2 over its encoder and decoder layers,
    gloo) and the Qwen3-ASR teacher: rank 0 stops at once, rank 1 never; one row per rank has
    no manifest language, so each rank detects its own. The decoding copy, the sharded model
    decoding itself and an unsharded reference agree."""
    from tests.helpers import launch, ok

    models = tmp_path / "models"
    models.mkdir()
    (models / "student_init").symlink_to(whisper_dir / "student")
    (models / "teacher_init").symlink_to(opd_models_dir / "teacher_init")
    out = tmp_path / "out"
    ok(launch([Path(__file__).with_name("opd_driver.py"), "--models", models, "--out", out,
               "--max-new-tokens", 5], ranks=2, timeout=300))
    early, late = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert early["responses"] == [[r[-1]] for r in early["responses"]]
    assert all(len(r) == 5 for r in late["responses"])
    for rank in (early, late):
        assert rank["responses"] == rank["reference_responses"] == rank["resharded_responses"]
        assert rank["loss_sum"] == pytest.approx(rank["reference_loss_sum"], rel=1e-5, abs=1e-6)
        assert rank["resharded_loss_sum"] == pytest.approx(rank["loss_sum"], rel=1e-5,
                                                           abs=1e-6)
        assert rank["positions"] == rank["reference_positions"] > 0 and rank["grads_finite"]
        assert rank["empty_grads"] == rank["parameters"]
    assert early["empty_positions"] == 0


def test_batched_features_give_whisper_the_processors_features(student, batch):
    """The GPU path (forced here on the CPU): one STFT per batch, checked against the processor
    on probe clips and on each new prompt; decoding is unchanged."""
    assert student._batched_features() is None  # CPU default: the processor per clip
    student.batched_features = True
    assert student._batched_features() is not None
    languages = [u.language for u in batch.utterances]
    fast = student.build_batch(batch.audios, languages).inputs
    student.batched_features = False
    slow = student.build_batch([a.copy() for a in batch.audios], languages).inputs
    assert set(fast) == set(slow) == {"input_features", "decoder_input_ids",
                                      "decoder_attention_mask"}
    torch.testing.assert_close(fast["input_features"], slow["input_features"], atol=1e-5,
                               rtol=0)
    assert torch.equal(fast["decoder_input_ids"], slow["decoder_input_ids"])
    student.batched_features = True
    assert student._feature_recipe is not None  # no disagreement found on the way
    with pytest.raises(UserError, match="longer than Whisper's 30 s window"):
        student.build_batch([np.zeros(30 * 16000 + 1, dtype=np.float32)], ["en"])


def test_transcripts_report_the_language_whisper_detected(student, batch):
    from stages.models.transcribe import transcribe_batch

    detected = student.own_languages(batch.audios, [None] * len(batch))
    open_prompts = transcribe_batch(student, batch.utterances, max_new_tokens=3,
                                    language_hint=False, loader=lambda: batch)
    assert [t.language for t in open_prompts] == detected
    hinted = transcribe_batch(student, batch.utterances, max_new_tokens=3, loader=lambda: batch)
    # With the hint, rows with a manifest language name it in the prompt (nothing detected).
    assert [t.language for t in hinted] == [None if u.language else detected[row]
                                            for row, u in enumerate(batch.utterances)]
