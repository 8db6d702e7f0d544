"""Qwen3-ASR's audio encoder attention in one SDPA call for all of a batch's windows.

The encoder attends within windows (``cu_seqlens``). Without a flash-attention package,
transformers' ``Qwen3ASRAudioAttention`` runs one attention call per window in a Python loop,
in every layer, forward and backward, and syncs the GPU to split the windows each time, so the
encoder's cost grows with the number of clips. Registered with ``AttentionInterface`` under a
name containing "flash" (the switch that makes the encoder pass ``cu_seqlens`` to the attention
function instead of looping), :func:`packed_window_attention` gathers the windows into a
[windows, heads, longest window, dim] batch and masks the padding.

Measured (``benchmarks/bench_audio_windows.py``, README "The GPU study"): the same outputs and
gradients in fp32; the encoder's forward and backward 3.3x faster at 64 clips and 4.0x at 256
on an H200, about as fast on a 2-core CPU; the GPU study's teacher bootstrap step 165 ms
against ~200-220 ms. Off by default (``models.packed_audio_windows``, each model-loading
stage's ``--packed-audio-windows``): in the one bf16 bootstrap run with it, the from-scratch
teacher left its loss plateau later and ended worse (clean WER 17.7 % against 4.7 %;
benchmarks/results/h200/gpu_study_packed_attention.txt), and one run cannot tell chance from
a real cost. Turning it on by default needs a few seeds per path first.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder

log = logging.getLogger(__name__)

# "flash" in the name is what routes ``cu_seqlens`` here (transformers'
# ``is_flash_attention_requested``); the function itself is plain SDPA.
PACKED_WINDOWS = "packed_windows_flash"


def packed_window_attention(module, query, key, value, attention_mask=None, scaling=None,
                            dropout=0.0, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """Attention within each window of ``cu_seq_lens_q`` in one SDPA call. query/key/value:
    [1, heads, tokens, dim]; returns ([1, tokens, heads, dim], None) like flash attention."""
    starts = cu_seq_lens_q[:-1].long()
    lengths = cu_seq_lens_q[1:].long() - starts
    longest = int(max_length_q) if max_length_q is not None else int(lengths.max())
    offsets = torch.arange(longest, device=query.device)
    valid = offsets[None, :] < lengths[:, None]                          # [windows, longest]
    # Padding positions read the last token (any real one would do): masked out as keys, and
    # their query rows are dropped from the output.
    index = (starts[:, None] + offsets[None, :]).clamp(max=query.shape[2] - 1)

    def windows(states):  # [1, H, T, D] -> [windows, H, longest, D]
        return states[0][:, index].permute(1, 0, 2, 3)

    out = F.scaled_dot_product_attention(
        windows(query), windows(key), windows(value), attn_mask=valid[:, None, None, :],
        dropout_p=dropout if module.training else 0.0, scale=scaling)
    return out.permute(0, 2, 1, 3)[valid].unsqueeze(0), None


def use_packed_window_attention(model) -> bool:
    """Switch a Qwen3-ASR model's audio tower from the per-window SDPA loop to
    :func:`packed_window_attention`; True when it switched. Towers on eager or a real flash
    attention, and other families' towers, keep theirs. Only the runtime setting changes: a
    saved config does not carry it."""
    tower = getattr(getattr(model, "model", None), "audio_tower", None)
    # Other families' towers (GLM-ASR's, Whisper's) attend over whole clips: nothing to pack.
    if not isinstance(tower, Qwen3ASREncoder) or tower.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(PACKED_WINDOWS, packed_window_attention)
    tower.config._attn_implementation = PACKED_WINDOWS
    log.debug("audio tower attention: %s", PACKED_WINDOWS)
    return True
