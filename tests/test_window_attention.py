"""Qwen3-ASR's audio tower with every attention window in one SDPA call: the same outputs and
gradients as transformers' per-window loop, switched on only where asked, never saved."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen3ASRForConditionalGeneration

from stages.models import load_adapter
from stages.models.window_attention import PACKED_WINDOWS, use_packed_window_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(tower, lengths_s: list[float]):
    """Random log-mel features padded as the processor pads them (a multiple of the chunk)."""
    chunk = tower.n_window * 2
    frames = torch.tensor([int(s * 100) for s in lengths_s])
    width = int(-(-frames.max() // chunk) * chunk)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(lengths_s), tower.config.num_mel_bins, width, generator=generator)
    mask = (torch.arange(width)[None, :] < frames[:, None]).long()
    return features, mask


def _forward_backward(model, features, mask):
    model.zero_grad(set_to_none=True)
    out = model.model.audio_tower(features, input_features_mask=mask).last_hidden_state
    out.pow(2).mean().backward()
    grads = {name: p.grad.clone() for name, p in model.model.audio_tower.named_parameters()
             if p.grad is not None}
    return out.detach(), grads


def test_packed_windows_match_the_per_window_loop(opd_models_dir, tmp_path):
    model = Qwen3ASRForConditionalGeneration.from_pretrained(
        opd_models_dir / "teacher_init", attn_implementation="sdpa").train()
    tower = model.model.audio_tower
    # Clips of one to several windows (8 s each here): 8 windows of 9 to 104 tokens.
    lengths = [0.7, 2.3, 4.0, 9.1, 13.6, 1.2]
    features, mask = _features(tower, lengths)
    looped, looped_grads = _forward_backward(model, features, mask)

    assert use_packed_window_attention(model) is True
    assert tower.config._attn_implementation == PACKED_WINDOWS
    assert use_packed_window_attention(model) is False  # already switched: left alone
    packed, packed_grads = _forward_backward(model, features, mask)

    assert packed.shape == looped.shape
    torch.testing.assert_close(packed, looped, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == looped_grads.keys() and len(packed_grads) > 10
    for name, grad in looped_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    model.save_pretrained(tmp_path / "saved")  # a runtime setting: not in the saved config
    assert PACKED_WINDOWS not in (tmp_path / "saved" / "config.json").read_text("utf-8")
    reloaded = json.loads((tmp_path / "saved" / "config.json").read_text("utf-8"))
    assert reloaded["model_type"] == "qwen3_asr"


def test_only_qwen3_asr_sdpa_towers_switch_and_the_adapter_keeps_the_loop(opd_models_dir):
    eager = Qwen3ASRForConditionalGeneration.from_pretrained(
        opd_models_dir / "teacher_init", attn_implementation="eager")
    assert use_packed_window_attention(eager) is False
    assert eager.model.audio_tower.config._attn_implementation == "eager"
    adapter = load_adapter(str(opd_models_dir / "teacher_init"))
    assert adapter.model.model.audio_tower.config._attn_implementation == "sdpa"
    student = load_adapter(str(opd_models_dir / "student_init"))  # GLM-ASR: no windowed tower
    assert use_packed_window_attention(student.model) is False


def test_the_loading_option_packs_the_teachers_windows_and_scores_the_same(opd_models_dir,
                                                                             opd_corpus):
    """``packed_audio_windows`` (every model-loading stage's --packed-audio-windows): the
    teacher's tower switches, the student's has nothing to pack, and the teacher decodes the
    same clips to the same ids with the same teacher-forced logits."""
    audios = [u.row["samples"] for u in opd_corpus]
    languages = [u.language for u in opd_corpus]

    def decoded(adapter):
        responses = adapter.generate(audios, languages, max_new_tokens=8)
        with torch.no_grad():
            logits, mask = adapter.response_logits(audios, languages, responses)
        return responses, logits[mask]

    loop = load_adapter(str(opd_models_dir / "teacher_init"))
    packed = load_adapter(str(opd_models_dir / "teacher_init"), packed_audio_windows=True)
    assert packed.model.model.audio_tower.config._attn_implementation == PACKED_WINDOWS
    assert loop.model.model.audio_tower.config._attn_implementation == "sdpa"
    responses, logits = decoded(loop)
    packed_responses, packed_logits = decoded(packed)
    assert packed_responses == responses
    # Random weights answer every clip alike, but their logits still depend on the audio.
    assert float((logits[0] - logits[-1]).abs().max()) > 1e-2
    torch.testing.assert_close(packed_logits, logits, rtol=1e-4, atol=1e-4)
    student = load_adapter(str(opd_models_dir / "student_init"), packed_audio_windows=True)
    assert student.model.model.audio_tower.config._attn_implementation == "sdpa"
