"""Teacher transcription throughput (audio seconds per second) of a Qwen3-ASR-1.7B-size teacher.

Builds a random-weight teacher with the published Qwen3-ASR-1.7B shapes from a config (nothing
is downloaded; 2.04 B parameters, 0.31 B of them the audio encoder): text decoder = hidden 2048,
28 layers, 16 heads, 8 KV heads, head dim 128, MLP 6144, vocabulary 151,936, tied embeddings
(transformers' Qwen3ASRConfig text defaults); audio encoder = d_model 1024, 24 layers, 16
heads, FFN 4096, 128 mel bins, conv width 480 (the Qwen3ASRConfig audio defaults) with
output_dim 2048 (= the text hidden size; the class default 3584 is not the 1.7B value).
The tokenizer is the demo's byte-level BPE, so ids past it are blocked, as control tokens are
for real checkpoints.

It then times exactly what one teacher_data batch does (stages.td.shards.transcribe_records:
audio loading from wav files, feature extraction, greedy generation with the blocked-token
mask, fp32 log-softmax of every generated token's logits) on batches of --seconds clips with a
forced language header, for each --batch-sizes value, after one warm-up batch. Random weights
rarely write the stop token, so nearly every clip generates --max-new-tokens tokens (tokens/s
counts the generated ones): an upper bound on decoding work (real 10 s transcripts are roughly
20-60 tokens).

Prints one line per batch size (audio s/s, generated tokens/s, s per batch, peak GPU memory)
and writes --json.

Run from the repository root (an H100, bf16):
    python -m benchmarks.bench_teacher_data --device cuda --dtype bfloat16 \\
        --batch-sizes 16 40 64 --batches 3 --max-new-tokens 64 --json bench_td.json
CPU smoke check (tiny shapes, seconds):
    python -m benchmarks.bench_teacher_data --small
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    Qwen3ASRConfig,
    Qwen3ASRFeatureExtractor,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRProcessor,
)

from stages.data.audio import TARGET_SAMPLE_RATE, write_wav
from stages.data.batching import Utterance
from stages.demo.tiny import (
    ENDOFTEXT,
    IM_END,
    QWEN_AUDIO,
    QWEN_CHAT_TEMPLATE,
    TIMESTAMP,
    train_tokenizer,
)
from stages.models.qwen3_asr import Qwen3AsrAdapter
from stages.td.shards import transcribe_records

# The 1.7B shapes checked against Qwen3ASRConfig's defaults in full_config().
FULL_TEXT = {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144,
             "vocab_size": 151936}
FULL_AUDIO = {"d_model": 1024, "encoder_layers": 24, "encoder_attention_heads": 16,
              "encoder_ffn_dim": 4096, "num_mel_bins": 128, "downsample_hidden_size": 480,
              "output_dim": 2048}
SMALL_AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4,
               "encoder_ffn_dim": 128, "num_mel_bins": 128, "downsample_hidden_size": 32,
               "output_dim": 64}
SMALL_TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
              "vocab_size": 2048}
TOKENIZER_TEXTS = ["今天天气很好，我们去公园散步。", "the quick brown fox jumps over the lazy dog",
                   "Guten Tag, wie geht es Ihnen?", "こんにちは、げんきですか。"] * 20


def build_teacher(small: bool, device: torch.device, dtype: torch.dtype) -> Qwen3AsrAdapter:
    tokenizer = train_tokenizer(TOKENIZER_TEXTS, 1024)
    ids = {name: int(tokenizer.convert_tokens_to_ids(name))
           for name in (ENDOFTEXT, IM_END, QWEN_AUDIO["audio_token"], TIMESTAMP)}
    eos, pad = [ids[ENDOFTEXT], ids[IM_END]], ids[ENDOFTEXT]
    # Start from the class's own sub-config defaults (a partial dict would fall back to the
    # plain Qwen3Config defaults, a 7B-size decoder), then apply the sizes.
    defaults = Qwen3ASRConfig()
    text = {**defaults.text_config.to_dict(), **(SMALL_TEXT if small else FULL_TEXT),
            "bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad}
    text.pop("layer_types", None)  # derived from the layer count
    audio = {**defaults.audio_config.to_dict(), **(SMALL_AUDIO if small else FULL_AUDIO)}
    config = Qwen3ASRConfig(
        audio_config=audio, text_config=text,
        audio_token_id=ids[QWEN_AUDIO["audio_token"]], timestamp_token_id=ids[TIMESTAMP],
        pad_token_id=pad, eos_token_id=eos)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the target device: minutes faster on GPU
        model = Qwen3ASRForConditionalGeneration(config)
    model = model.to(dtype).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(feature_size=config.audio_config.num_mel_bins),
        tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    return Qwen3AsrAdapter(model, processor)


def make_clips(folder: Path, count: int, seconds: float) -> list[Utterance]:
    """Speech-like test clips (harmonics + noise) written as 16-bit wavs, loaded as the stage
    loads them."""
    rng = np.random.default_rng(0)
    t = np.arange(int(TARGET_SAMPLE_RATE * seconds)) / TARGET_SAMPLE_RATE
    clips = []
    for i in range(count):
        f0 = 100 + 10 * (i % 12)
        audio = sum(0.1 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))
        audio = audio * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
        path = folder / f"clip{i:04d}.wav"
        write_wav(path, audio.astype(np.float32))
        clips.append(Utterance(id=f"clip{i:04d}", audio=str(path), duration=seconds,
                               language="zh"))
    return clips


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes on CPU (smoke check)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: 16 40 64 (--small: 2 4)")
    p.add_argument("--batches", type=int, default=None,
                   help="timed batches per batch size, after one warm-up (default 3; small 1)")
    p.add_argument("--seconds", type=float, default=None, help="clip length (10; small 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="(64; small 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()
    small = args.small
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not small
                                          else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    batch_sizes = args.batch_sizes or ([2, 4] if small else [16, 40, 64])
    batches = args.batches or (1 if small else 3)
    seconds = args.seconds or (2.0 if small else 10.0)
    max_new_tokens = args.max_new_tokens or (8 if small else 64)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    adapter = build_teacher(small, device, dtype)
    params = sum(p.numel() for p in adapter.model.parameters())
    if not small:  # the shapes this benchmark promises, as built
        text, audio = adapter.model.config.text_config, adapter.model.config.audio_config
        assert {k: getattr(text, k) for k in FULL_TEXT} == FULL_TEXT, text
        assert {k: getattr(audio, k) for k in FULL_AUDIO} == FULL_AUDIO, audio
    print(f"teacher: {params / 1e9:.3f} B parameters, {device}, {dtype}, built in "
          f"{time.perf_counter() - start:.1f} s; {len(adapter.blocked_token_ids)} blocked ids",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), max(batch_sizes) * (batches + 1), seconds)
        for size in batch_sizes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            groups = [clips[i * size:(i + 1) * size] for i in range(batches + 1)]
            transcribe_records(adapter, groups[0], max_new_tokens=max_new_tokens)  # warm-up
            sync(device)
            times, tokens = [], 0
            for group in groups[1:]:
                t0 = time.perf_counter()
                records = transcribe_records(adapter, group, max_new_tokens=max_new_tokens)
                sync(device)
                times.append(time.perf_counter() - t0)
                tokens += sum(r["teacher_tokens"] for r in records)
            total = sum(times)
            audio = seconds * size * batches
            row = {"batch_size": size, "batches": batches, "clip_seconds": seconds,
                   "max_new_tokens": max_new_tokens, "audio_seconds_per_second": audio / total,
                   "generated_tokens_per_second": tokens / total,
                   "seconds_per_batch": total / batches, "seconds_per_batch_each": times,
                   "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                           if device.type == "cuda" else None)}
            results.append(row)
            memory = (f", peak {row['peak_gpu_memory_gib']:.1f} GiB"
                      if row["peak_gpu_memory_gib"] is not None else "")
            print(f"batch {size:>3}: {row['audio_seconds_per_second']:8.1f} audio s/s  "
                  f"{row['generated_tokens_per_second']:8.1f} tok/s  "
                  f"{row['seconds_per_batch']:.2f} s/batch{memory}", flush=True)
    if args.json:
        info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or "cpu", "dtype": str(dtype), "small": small,
                "parameters": params, "torch": torch.__version__, "python": sys.version.split()[0]}
        args.json.write_text(json.dumps({"setup": info, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
