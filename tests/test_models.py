"""Tiny demo models and the model adapters (stages/models).

One session fixture builds a small tokenizer + teacher + student from an inline multilingual
corpus; the adapter tests drive both families through decoding, teacher-forced scoring and SFT
inputs on synthetic clips (sines and noise: enough for the mechanics, which is what is tested).
"""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoProcessor,
    AutoTokenizer,
    GlmAsrForConditionalGeneration,
    LlamaConfig,
    Qwen3ASRForConditionalGeneration,
)

from stages.common.errors import UserError
from stages.demo.tiny import build_tiny_models, resolve_spec
from stages.models import load_adapter
from stages.models.audio_chat_lm import AudioChatLmAdapter
from stages.models.qwen3_asr import Qwen3AsrAdapter
from stages.tiny_models import build_parser, main
from tests.helpers import greedy_by_full_forwards
from tests.short_run import SPEC as SMALL_SPEC  # small enough for seconds per test

CORPUS = {
    "zh": ["今天天气很好，我们去公园散步。", "我想喝一杯热茶。", "这个问题很难回答。"],
    "ja": ["こんにちは、げんきですか。", "きょうはあめがふっています。", "カタカナもつかいます。"],
    "ko": ["안녕하세요 반갑습니다.", "오늘은 날씨가 좋아요."],
    "de": ["Guten Tag, wie geht's?", "Äpfel über Öl und Straße."],
    "fr": ["Bonjour, ça va ? Très bien, merci.", "Où est la gare, s'il vous plaît ?"],
    "en": ["Hello world, this is a test.", "The quick brown fox jumps over the lazy dog."],
}
ATOL = 1e-4  # generation (KV cache, one step at a time) vs one teacher-forced pass
# Same clip, same code path, other batch mates: only padding changes. Batching through the
# processors' own batched feature extraction differs by ~1e-5 for Qwen3-ASR (tail frames).
BATCH_ATOL = 2e-6


def _write_manifest(path, texts, with_text=True):
    rows = [{"audio": f"a{i}.wav", **({"text": t} if with_text else {})}
            for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _clip(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.2 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core box OpenMP threads that
    wait on each other make these tests 5x slower; results do not depend on the count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    texts = [t for group in CORPUS.values() for t in group] * 5
    manifest = _write_manifest(root / "train.jsonl", texts)
    pool = _write_manifest(root / "td_pool.jsonl", texts[:4], with_text=False)
    summary = build_tiny_models([manifest, pool], root / "out", SMALL_SPEC, seed=0)
    return root / "out", summary


@pytest.fixture(scope="session")
def teacher(tiny):
    return load_adapter(str(tiny[0] / "teacher_init"))


@pytest.fixture(scope="session")
def student(tiny):
    return load_adapter(str(tiny[0] / "student_init"))


@pytest.fixture(params=["teacher", "student"])
def adapter(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def clips():
    # 0.3 s is under Qwen3-ASR's 0.5 s minimum; 6.5 s spans two 4 s GLM windows.
    return [_clip(1.2, 220, 0), _clip(6.5, 330, 1), _clip(0.3, 440, 2), _clip(3.1, 150, 3)]


class LogitBias:
    """Forward hook on the LM head adding ``value`` to token ``token`` (rows ``rows`` only)."""

    def __init__(self, adapter, token: int, value: float, rows=None):
        self.head, self.token, self.value, self.rows = (
            adapter.model.get_output_embeddings(), token, value, rows)

    def __enter__(self):
        def hook(_module, _args, out):
            out = out.clone()
            rows = slice(None) if self.rows is None else self.rows
            out[rows, ..., self.token] += self.value
            return out
        self.handle = self.head.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---- tiny models --------------------------------------------------------------------------------

def test_tokenizer_round_trips_every_demo_language(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny[0] / "tokenizer")
    unseen = ["鬱陶しい", "Ærøskøbing", "🙂 ok", "Ça coûte 5 €"]
    for text in [t for group in CORPUS.values() for t in group] + unseen:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    asr_text = tokenizer.convert_tokens_to_ids("<asr_text>")
    assert not tokenizer.added_tokens_decoder[asr_text].special
    ids = tokenizer.encode("language Chinese<asr_text>你好", add_special_tokens=False)
    assert ids.count(asr_text) == 1
    # Training learned merges: common text is shorter than its bytes.
    sample = CORPUS["en"][1]
    assert len(tokenizer.encode(sample, add_special_tokens=False)) < len(sample.encode()) / 2


def test_tokenizer_never_merges_across_chinese_characters_or_kana(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny[0] / "tokenizer")
    for text in [t for lang in ("zh", "ja") for t in CORPUS[lang]]:
        for token in tokenizer.encode(text, add_special_tokens=False):
            piece = tokenizer.decode([token])
            # A token is part of one character or one whole character, never a phrase.
            assert len(piece) <= 1 or not any("\u3040" <= c <= "\u9fff" for c in piece), piece


def test_audio_front_end_keeps_feature_scale(tiny):
    # transformers' N(0, 0.02) would shrink the mel features ~1000x through three convolutions;
    # the tiny models re-initialise them scale-preserving (kaiming) so the audio is heard.
    for name, cls in (("teacher_init", Qwen3ASRForConditionalGeneration),
                      ("student_init", GlmAsrForConditionalGeneration)):
        tower = cls.from_pretrained(tiny[0] / name).model.audio_tower
        convs = [m for m in tower.modules() if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)]
        assert convs
        for conv in convs:
            fan_in = conv.weight[0].numel()
            assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)


def test_saved_dirs_reload_with_auto_classes(tiny):
    out, summary = tiny
    shared = AutoTokenizer.from_pretrained(out / "tokenizer").get_vocab()
    expected = {"teacher_init": Qwen3ASRForConditionalGeneration,
                "student_init": GlmAsrForConditionalGeneration}
    for name, cls in expected.items():
        model = AutoModelForSeq2SeqLM.from_pretrained(out / name)
        processor = AutoProcessor.from_pretrained(out / name)
        assert type(model) is cls
        assert processor.tokenizer.get_vocab() == shared
        width = model.config.text_config.vocab_size
        assert width % 64 == 0 and len(processor.tokenizer) <= width < len(processor.tokenizer) + 64
        assert sum(p.numel() for p in model.parameters()) == (
            summary[name.split("_")[0]]["parameters"]["total"])
        assert model.generation_config.pad_token_id is not None
    teacher = AutoModelForSeq2SeqLM.from_pretrained(out / "teacher_init")
    assert teacher.config.audio_config.output_dim == teacher.config.text_config.hidden_size
    student = AutoModelForSeq2SeqLM.from_pretrained(out / "student_init")
    audio = student.config.audio_config
    assert audio.intermediate_size == 4 * audio.hidden_size
    assert AutoProcessor.from_pretrained(out / "student_init").feature_extractor.chunk_length == 4


def test_same_seed_same_models_other_seed_other_weights(tiny, tmp_path):
    out, _ = tiny
    manifest = _write_manifest(tmp_path / "m.jsonl",
                               [t for group in CORPUS.values() for t in group] * 5)
    build_tiny_models([manifest], tmp_path / "again", SMALL_SPEC, seed=0)
    build_tiny_models([manifest], tmp_path / "other", SMALL_SPEC, seed=1)
    for name in ("teacher_init", "student_init"):
        first = AutoModelForSeq2SeqLM.from_pretrained(out / name).state_dict()
        again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "again" / name).state_dict()
        other = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "other" / name).state_dict()
        assert all(torch.equal(first[k], again[k]) for k in first)
        assert not all(torch.equal(first[k], other[k]) for k in first)
    assert (AutoTokenizer.from_pretrained(out / "tokenizer").get_vocab()
            == AutoTokenizer.from_pretrained(tmp_path / "again" / "tokenizer").get_vocab())


def test_spec_errors_name_the_key():
    with pytest.raises(UserError, match="unknown key 'layerz'.*known keys: hidden_size"):
        resolve_spec({"teacher": {"layerz": 2}})
    with pytest.raises(UserError, match="chunk_seconds must be even"):
        resolve_spec({"chunk_seconds": 3})
    with pytest.raises(UserError, match="positive integer"):
        resolve_spec({"vocab_size": "big"})
    with pytest.raises(UserError, match="multiple of student.heads"):
        resolve_spec({"student": {"hidden_size": 66}})


def test_cli_builds_offline_and_rejects_bad_input(tmp_path, venv_env):
    texts = [t for group in CORPUS.values() for t in group]
    manifest = _write_manifest(tmp_path / "m.jsonl", texts)
    argv = ["--manifests", str(manifest), "--output-dir", str(tmp_path / "out"),
            "--spec", json.dumps(SMALL_SPEC), "--seed", "3"]
    # A real process with the hub switched off: build, reload through the adapters, decode.
    done = subprocess.run([sys.executable, "-m", "stages.tiny_models", *argv], env=venv_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "tiny_models.json").read_text())
    assert summary["seed"] == 3 and summary["provenance"]["config_hash"]
    assert summary["teacher"]["stop_token"] == "<|im_end|>"
    assert summary["student"]["stop_token"] == "<|endoftext|>"
    assert summary["teacher"]["parameters"]["total"] > summary["student"]["parameters"]["total"]
    empty = _write_manifest(tmp_path / "pool.jsonl", texts, with_text=False)
    with pytest.raises(UserError, match="no transcripts"):
        main(build_parser().parse_args(["--manifests", str(empty), "--output-dir",
                                        str(tmp_path / "x")]))
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav", "text": 5}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:1: `text` must be a string"):
        main(build_parser().parse_args(["--manifests", str(tmp_path / "bad.jsonl"),
                                        "--output-dir", str(tmp_path / "x")]))
    with pytest.raises(UserError, match="--spec: invalid JSON"):
        main(build_parser().parse_args(["--manifests", str(manifest), "--output-dir",
                                        str(tmp_path / "x"), "--spec", "{teacher"]))


# ---- adapters: identity -------------------------------------------------------------------------

def test_families_stop_tokens_and_blocked_sets(teacher, student):
    assert isinstance(teacher, Qwen3AsrAdapter) and isinstance(student, AudioChatLmAdapter)
    for adapter, stop in ((teacher, "<|im_end|>"), (student, "<|endoftext|>")):
        tok = adapter.tokenizer
        assert tok.convert_ids_to_tokens(adapter.stop_token_id) == stop
        blocked = set(adapter.blocked_token_ids.tolist())
        specials = {i for i, t in tok.added_tokens_decoder.items() if t.special}
        # Every declared end id stops a response (real Qwen3-ASR: <|im_end|> and
        # <|endoftext|>; GLM-ASR: <|endoftext|> and <|user|>): none of them is blocked.
        assert adapter.stop_token_ids[0] == adapter.stop_token_id
        assert len(adapter.stop_token_ids) == 2
        assert blocked >= specials - set(adapter.stop_token_ids)
        assert not blocked & set(adapter.stop_token_ids)
        # Qwen3-ASR writes its header marker; for the audio chat LM sharing the tokenizer it is
        # a markup-spelled control token like any other (added, not special): blocked.
        marker_blocked = tok.convert_tokens_to_ids("<asr_text>") in blocked
        assert marker_blocked is (adapter is student)
        assert blocked >= set(range(len(tok), adapter.vocab_size))
        assert adapter.vocab_size == adapter.model.config.text_config.vocab_size > len(tok)


def test_registry_detects_families_and_rejects_unknown(tiny, tmp_path):
    with pytest.raises(UserError, match="unknown model family 'whisperx'.*qwen3_asr"):
        load_adapter(str(tiny[0] / "teacher_init"), family="whisperx")
    LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="model_type 'llama'.*audio_chat_lm"):
        load_adapter(str(tmp_path))
    with pytest.raises(UserError, match="cannot read the model config"):
        load_adapter(str(tmp_path / "missing"))


def test_response_encoding_round_trips(adapter):
    for text in [t for group in CORPUS.values() for t in group]:
        ids = adapter.encode_response(text)
        assert ids[-1] == adapter.stop_token_id and ids.count(adapter.stop_token_id) == 1
        assert adapter.decode_response(ids) == text
        assert adapter.decode_response(ids[:-1]) == text  # unstopped responses decode too


# ---- adapters: decoding and scoring -------------------------------------------------------------

def test_recorded_logprobs_equal_the_log_softmax_of_the_generation_logits(adapter, clips):
    """output_logprobs keeps one step's logits at a time yet gives what the full logits give."""
    languages = ["zh", None, "en", "de"]
    with LogitBias(adapter, adapter.stop_token_id, 1e4, rows=[1]):
        responses, logits = adapter.generate(clips, languages, max_new_tokens=6,
                                             output_logits=True)
        again, logprobs = adapter.generate(clips, languages, max_new_tokens=6,
                                           output_logprobs=True)
    assert again == responses and [len(v) for v in logprobs] == [len(r) for r in responses]
    for row, response in enumerate(responses):
        masked = logits[row, :len(response)].index_fill(-1, adapter.blocked_token_ids,
                                                        float("-inf"))
        expected = torch.log_softmax(masked, -1).gather(
            -1, torch.tensor(response)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(logprobs[row]), expected, atol=1e-5, rtol=0)


def test_teacher_forced_logits_equal_generation_logits(adapter, clips):
    languages = ["zh", None, "en", "de"]
    # Row 1 is pushed to stop at once, so the batch holds ragged responses.
    with LogitBias(adapter, adapter.stop_token_id, 1e4, rows=[1]):
        responses, gen_logits = adapter.generate(clips, languages, max_new_tokens=6,
                                                 output_logits=True)
        logits, mask = adapter.response_logits(clips, languages, responses)
    assert responses[1] == [adapter.stop_token_id]
    assert [len(r) for r in responses] == [6, 1, 6, 6]
    assert logits.dtype == torch.float32 and logits.shape == (4, 6, adapter.vocab_size)
    assert mask.tolist() == [[True] * 6, [True] + [False] * 5, [True] * 6, [True] * 6]
    for row, response in enumerate(responses):
        n = len(response)
        torch.testing.assert_close(logits[row, :n], gen_logits[row, :n], atol=ATOL, rtol=ATOL)
        masked = logits[row, :n].index_fill(-1, adapter.blocked_token_ids, float("-inf"))
        assert masked.argmax(-1).tolist() == response  # greedy picked the best allowed id
    with torch.no_grad(), LogitBias(adapter, adapter.stop_token_id, 1e4, rows=[1]):
        blocked, _ = adapter.response_logits(clips, languages, responses, mask_blocked=True)
    ids = adapter.blocked_token_ids
    assert bool(torch.isneginf(blocked[..., ids]).all())
    keep = torch.ones(adapter.vocab_size, dtype=torch.bool)
    keep[ids] = False
    torch.testing.assert_close(blocked[..., keep], logits[..., keep].detach())


def test_rows_that_stop_keep_the_stop_and_no_padding(adapter, clips):
    with LogitBias(adapter, adapter.stop_token_id, 1e4, rows=[0, 2]):
        responses = adapter.generate(clips, [None] * 4, max_new_tokens=5)
    assert responses[0] == responses[2] == [adapter.stop_token_id]
    assert all(len(r) == 5 and adapter.stop_token_id not in r for r in (responses[1],
                                                                       responses[3]))


def test_blocked_token_is_never_generated(adapter, clips):
    audio_slot = adapter.model.config.audio_token_id  # the placeholder: worst possible output
    with LogitBias(adapter, audio_slot, 1e3):
        saved = adapter.blocked_token_ids
        adapter.blocked_token_ids = torch.empty(0, dtype=torch.long)
        try:
            unblocked = adapter.generate(clips[:2], ["en", "en"], max_new_tokens=4)
        finally:
            adapter.blocked_token_ids = saved
        greedy = adapter.generate(clips[:2], ["en", "en"], max_new_tokens=4)
        sampled = adapter.generate(clips[:2], ["en", "en"], max_new_tokens=4, do_sample=True,
                                   generator=torch.Generator().manual_seed(0))
    assert unblocked == [[audio_slot] * 4] * 2
    assert audio_slot in adapter.blocked_token_ids.tolist()
    for rows in (greedy, sampled):
        assert not {i for r in rows for i in r} & set(adapter.blocked_token_ids.tolist())


def test_sampling_is_reproducible_with_a_generator(adapter, clips):
    def draw(seed):
        return adapter.generate(clips, [None] * 4, max_new_tokens=6, do_sample=True,
                                temperature=2.0, generator=torch.Generator().manual_seed(seed))
    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first
    assert first != adapter.generate(clips, [None] * 4, max_new_tokens=6)


def test_clip_logits_do_not_depend_on_the_batch(adapter, clips):
    short, longer = clips[0], clips[1]
    response = adapter.encode_response("hello 你好 world")
    alone, _ = adapter.response_logits([short], ["en"], [response])
    batched, _ = adapter.response_logits([longer, short], ["zh", "en"],
                                         [adapter.encode_response("x"), response])
    torch.testing.assert_close(batched[1], alone[0], atol=BATCH_ATOL, rtol=0)
    assert adapter.generate([short], ["en"], max_new_tokens=5) == (
        adapter.generate([longer, short], ["zh", "en"], max_new_tokens=5)[1:])


def test_lm_head_runs_only_at_response_positions(adapter, clips):
    seen = []
    handle = adapter.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        responses = [adapter.encode_response("hello"), adapter.encode_response("bonjour à tous")]
        logits, _ = adapter.response_logits(clips[:2], ["en", "fr"], responses)
    finally:
        handle.remove()
    longest = max(map(len, responses))
    assert seen == [(2, longest, seen[0][2])]
    assert logits.shape[:2] == (2, longest)
    batch = adapter.build_batch(clips[:2], ["en", "fr"], responses)
    assert batch.inputs["input_ids"].shape[1] > 4 * longest  # the full sequence is far longer


def test_scoring_carries_gradients_only_when_asked(student, clips):
    responses = [student.encode_response("hello"), student.encode_response("你好")]
    logits, mask = student.response_logits(clips[:2], [None, None], responses)
    logits[mask].logsumexp(-1).sum().backward()
    grads = [p.grad for p in student.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    student.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits, _ = student.response_logits(clips[:2], [None, None], responses)
    assert not logits.requires_grad


def test_empty_responses_give_empty_logits(adapter, clips):
    logits, mask = adapter.response_logits(clips[:2], [None, None], [[], []])
    assert logits.shape == (2, 0, adapter.vocab_size) and mask.shape == (2, 0)


# ---- adapters: SFT and the language header ------------------------------------------------------

@pytest.mark.parametrize(("name", "assistant"), [
    ("teacher", "language Chinese<asr_text>你好世界<|im_end|>"),
    ("student", "你好世界<|endoftext|>"),
])
def test_sft_labels_cover_exactly_the_assistant_turn(request, clips, name, assistant):
    adapter = request.getfixturevalue(name)
    inputs = adapter.sft_inputs(clips[:2], ["zh", "en"], ["你好世界", "hello"])
    labels, ids = inputs["labels"], inputs["input_ids"]
    kept = labels[0][labels[0] != -100].tolist()
    assert adapter.tokenizer.decode(kept) == assistant
    # Labels equal the input ids wherever they are set, and only on attended positions.
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert bool(inputs["attention_mask"][labels != -100].all())
    # The assistant turn is the tail of each row's real tokens.
    last = inputs["attention_mask"][0].nonzero().max().item()
    assert labels[0, last].item() == adapter.stop_token_id
    loss = adapter.model(**inputs).loss
    assert torch.isfinite(loss) and loss.item() > 0


def test_qwen_prompt_ends_with_forced_header_only_when_language_known(teacher, clips):
    batch = teacher.build_batch(clips[:2], ["zh", None])
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    forced = teacher.tokenizer.decode(ids[0][mask[0].bool()])
    open_ = teacher.tokenizer.decode(ids[1][mask[1].bool()])
    assert forced.endswith("<|im_start|>assistant\nlanguage Chinese<asr_text>")
    assert open_.endswith("<|im_start|>assistant\n")
    assert teacher.header("ko") == "language Korean<asr_text>"
    with pytest.raises(UserError, match="language 'xx'"):
        teacher.build_batch(clips[:1], ["xx"])
    with pytest.raises(UserError, match="needs the language"):
        teacher.sft_inputs(clips[:1], [None], ["hello"])


def test_qwen_generated_header_is_parsed_and_stripped(teacher):
    response = teacher.tokenizer.encode("language German<asr_text>Guten Tag",
                                        add_special_tokens=False) + [teacher.stop_token_id]
    assert teacher.response_language(response) == "de"
    assert teacher.decode_response(response) == "Guten Tag"
    assert teacher.split_header(response)[0] == "German"
    plain = teacher.encode_response("Guten Tag")
    assert teacher.response_language(plain) is None
    assert teacher.decode_response(plain) == "Guten Tag"
    none_header = teacher.tokenizer.encode("language None<asr_text>", add_special_tokens=False)
    assert teacher.response_language(none_header) is None
    # A marker that is not a leading header (a model repeating it after a forced header) is a
    # control token: dropped, with the text on both sides kept.
    repeated = teacher.tokenizer.encode("你好<asr_text>世界", add_special_tokens=False)
    assert teacher.split_header(repeated)[0] is None
    assert teacher.decode_response(repeated + [teacher.stop_token_id]) == "你好世界"


def test_a_clip_is_encoded_once_per_language_while_it_lives(adapter, monkeypatch):
    """Decoding and then scoring a batch (an OPD step) encode each clip once; a clip's entries
    go when the clip array does, and an equal but different array is encoded anew."""
    calls = []
    real_encode = adapter._encode_clip

    def counting_encode(audio, language):
        calls.append(language)
        return real_encode(audio, language)

    monkeypatch.setattr(adapter, "_encode_clip", counting_encode)
    batch = [_clip(1.0, 200, 7), _clip(2.0, 300, 8)]
    before = len(adapter._encodings)
    responses = adapter.generate(batch, ["en", "zh"], max_new_tokens=3)
    adapter.response_logits(batch, ["en", "zh"], responses)
    assert calls == ["en", "zh"]
    adapter.generate(batch, ["zh", "zh"], max_new_tokens=1)
    assert calls == ["en", "zh", "zh"]  # a new language for the first clip only
    adapter.generate([batch[0].copy()], ["en"], max_new_tokens=1)
    assert calls == ["en", "zh", "zh", "en"]
    assert len(adapter._encodings) == before + 2  # the copy died with its call
    del batch, responses
    gc.collect()
    assert len(adapter._encodings) == before


def append_to_prompt(inputs: dict, chosen: torch.Tensor) -> dict:
    """Decoder-only layout: the chosen ids join the input ids, the mask and the positions."""
    mask, positions = inputs["attention_mask"], inputs["position_ids"]
    return {**inputs, "input_ids": torch.cat([inputs["input_ids"], chosen[:, None]], dim=1),
            "attention_mask": torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1),
            "position_ids": torch.cat([positions, positions[:, -1:] + 1], dim=1)}


def test_greedy_decoding_equals_a_per_token_reference_loop(adapter, clips):
    """Mixed clip lengths (prompts left-padded to different widths), one row stopping early,
    and the audio slot id (blocked) given the highest logit: token for token the same."""
    languages = ["zh", None, "en", "de"]
    audio_slot = adapter.model.config.audio_token_id
    with LogitBias(adapter, adapter.stop_token_id, 1e4, rows=[1]), \
            LogitBias(adapter, audio_slot, 1e3):
        got = adapter.generate(clips, languages, max_new_tokens=6)
        want = greedy_by_full_forwards(adapter, adapter.build_batch(clips, languages).inputs, 6,
                                       append_to_prompt)
    prompts = adapter.build_batch(clips, languages).inputs["attention_mask"].sum(-1)
    assert len(set(prompts.tolist())) > 1  # the rows really are padded differently
    assert got == want
    assert got[1] == [adapter.stop_token_id] and all(len(got[r]) == 6 for r in (0, 2, 3))
    assert audio_slot not in {t for row in got for t in row}


def test_sampling_matches_the_softmax_frequencies(adapter, clips):
    """2,000 first tokens drawn for one clip at temperature 1.5 against the probabilities of the
    model's blocked-masked softmax: each likely token within 4.5 binomial standard deviations,
    and no blocked id ever drawn. Three allowed ids get a logit bias (a random tiny model is
    nearly uniform), and the most likely id of all is blocked on purpose."""
    temperature, rows, rounds = 1.5, 400, 5
    clip = clips[0]
    blocked = set(adapter.blocked_token_ids.tolist())
    allowed = [i for i in range(adapter.vocab_size) if i not in blocked][:3]
    biases = [LogitBias(adapter, token, value)
              for token, value in zip(allowed, (5.0, 6.0, 7.0), strict=True)]
    biases.append(LogitBias(adapter, adapter.model.config.audio_token_id, 20.0))
    with contextlib.ExitStack() as stack:
        for bias in biases:
            stack.enter_context(bias)
        logits, _ = adapter.response_logits([clip], ["en"], [[adapter.stop_token_id]],
                                            mask_blocked=True)
        probs = torch.softmax(logits[0, 0].detach() / temperature, -1)
        counts = torch.zeros_like(probs)
        for seed in range(rounds):
            drawn = adapter.generate([clip] * rows, ["en"] * rows, max_new_tokens=1,
                                     do_sample=True, temperature=temperature,
                                     generator=torch.Generator().manual_seed(seed))
            for row in drawn:
                counts[row[0]] += 1
    total = rows * rounds
    assert float(counts[adapter.blocked_token_ids].sum()) == 0
    frequencies = counts / total
    likely = (probs > 0.01).nonzero().flatten()
    assert set(allowed) <= set(likely.tolist())
    sd = (probs[likely] * (1 - probs[likely]) / total).sqrt()
    gaps = (frequencies[likely] - probs[likely]).abs() / sd
    assert float(gaps.max()) < 4.5, (likely.tolist(), gaps.tolist())
    assert abs(float(frequencies[likely].sum() - probs[likely].sum())) < 0.05
