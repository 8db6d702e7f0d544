"""Export a training checkpoint (DCP) as a verified Hugging Face model folder with a model card.

The trained weights live in a DCP checkpoint (``checkpoints/step_<n>/``); the architecture,
processor, tokenizer, chat template and generation config live in the *base* folder training
started from. An export joins them: a plain model is built from the base folder's config
(:func:`stages.train.hf_save.plain_model_from_config`), the checkpoint's weights are loaded into
it, and it is written with ``save_pretrained`` beside a copy of the base folder's side files.

Nothing is declared exported until the folder, read back from disk with the Auto classes the
other stages use, behaves like the checkpoint-loaded model:

- weights: every model tensor stored in the checkpoint (read straight from the DCP metadata, not
  through the base architecture) must equal the reloaded export's tensor of the same name,
  after casting to the export dtype. This catches a base whose config ties tensors the run
  trained separately, dropped or renamed tensors, and lossy casts;
- logits: both models decode a probe batch greedily, then score the reference model's responses
  teacher-forced (``response_logits``); the largest absolute logit difference must be within a
  tolerance, and the greedy responses must agree.

The folder is written under a temporary name beside the target and renamed only when both
checks pass, so a failed or killed export never leaves a folder at the target.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import AutoProcessor, GenerationConfig

from stages.common.errors import UserError
from stages.common.fsutil import publish_dir, staging_dir
from stages.common.jsonl import read_json
from stages.common.settings import setting
from stages.data.audio import TARGET_SAMPLE_RATE
from stages.data.batching import load_batch, read_utterances
from stages.models import FAMILIES, ModelLoading, family_of, load_adapter
from stages.models.base import AsrAdapter
from stages.models.window_attention import use_packed_window_attention
from stages.train.checkpoint import (
    META_FILE,
    load_model_weights,
    newest_intact,
    read_meta,
    root_cause,
    verify_checkpoint,
)
from stages.train.hf_save import (
    EXPORT_DTYPES,
    copy_side_files,
    plain_model_from_config,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "export_summary.json"
# Largest tolerated |logit difference| by export dtype. The reference is cast to the export
# dtype and runs on the same device, so a faithful export matches it (almost) exactly.
DEFAULT_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-3, "float16": 1e-3}
_SUMMARY_NAME = "train_summary.json"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name


# ---- the checkpoint -------------------------------------------------------------------------

@dataclass
class CheckpointSource:
    """A complete checkpoint and what its run folder says about it."""

    path: Path
    step: int
    meta: dict[str, Any]
    run_dir: Path | None = None
    train_summary: dict[str, Any] | None = None

    @property
    def recorded_base(self) -> str | None:
        """The model folder (or hub id) the run started from, when the run summary says so."""
        return (self.train_summary or {}).get("base_model")


def resolve_checkpoint(spec: str | Path) -> CheckpointSource:
    """A checkpoint from a ``step_<n>`` folder, a ``checkpoints/`` folder or a run folder
    (the newest intact checkpoint of the last two: a corrupt one is skipped with a warning,
    and left where it is). Every checkpoint is verified against its checksums."""
    path = Path(spec)
    if not path.is_dir():
        raise UserError(f"--checkpoint {path}: no such folder; give a step_<n> checkpoint, "
                        "a checkpoints/ folder or a training run folder")
    if not (path / META_FILE).is_file():
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        latest, corrupt = newest_intact(root)
        for bad, problems in corrupt:
            log.warning("checkpoint %s is corrupt (%s): skipped", bad, "; ".join(problems))
        if latest is None and corrupt:
            raise UserError(f"--checkpoint {path}: no intact checkpoint under {root} (all "
                            f"{len(corrupt)} are damaged, see the warnings above)")
        if latest is None:
            raise UserError(f"--checkpoint {path}: no complete checkpoint (step_<n>/ with "
                            f"{META_FILE}) under {root}; has training saved one yet?")
        path = latest
    else:
        problems = verify_checkpoint(path)
        if problems:
            raise UserError(f"{path} is damaged: {'; '.join(problems)}. Export another "
                            "checkpoint (a run folder exports its newest intact one)")
    meta = read_meta(path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    summary = None
    if run_dir is not None and (run_dir / _SUMMARY_NAME).is_file():
        summary = read_json(run_dir / _SUMMARY_NAME)
    return CheckpointSource(path=path, step=int(meta["step"]), meta=meta, run_dir=run_dir,
                            train_summary=summary)


def checkpoint_model_tensors(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every model tensor a checkpoint stores, by name, read without any model architecture."""
    reader = dcp.FileSystemReader(str(ckpt_dir))
    entries = reader.read_metadata().state_dict_metadata
    wanted = {key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
              for key, meta in entries.items()
              if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    if not wanted:
        raise UserError(f"{ckpt_dir}: the checkpoint holds no model tensors")
    with warnings.catch_warnings():  # DCP warns on every single-process load; that is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": wanted}, checkpoint_id=Path(ckpt_dir), no_dist=True)
    return wanted


def model_from_checkpoint(ckpt: CheckpointSource, base_dir: Path, *,
                          trust_remote_code: bool = False) -> nn.Module:
    """A plain fp32 model of the base folder's architecture holding the checkpoint's weights,
    with the base folder's generation config (what ``from_pretrained`` would attach)."""
    model = plain_model_from_config(base_dir, trust_remote_code=trust_remote_code).float()
    try:
        load_model_weights(ckpt.path, model)
    except (CheckpointException, ValueError, RuntimeError) as err:
        raise UserError(f"{ckpt.path}: the checkpoint does not fit the architecture in "
                        f"{base_dir}/config.json ({root_cause(err)}); give the model folder "
                        "the run started from as --base") from err
    if (base_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(base_dir)
    return model.eval()


def cast_saved_tensors(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters and persistent floating buffers to ``dtype``, as loading a folder of
    that dtype does; non-persistent buffers (e.g. rotary frequencies, which models compute in
    fp32) keep their dtype, or the reference would differ from any faithful reload."""
    saved = set(model.state_dict())
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.to(dtype)
        for name, buffer in model.named_buffers():
            if name in saved and buffer.is_floating_point():
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name)
                setattr(module, attr, buffer.to(dtype))
    return model


# ---- probe clips ----------------------------------------------------------------------------

@dataclass
class ProbeBatch:
    """The clips both models are run on."""

    audios: list[np.ndarray]
    languages: list[str | None]
    ids: list[str]
    source: str  # the manifest, or "synthetic"


def synthetic_probe(count: int, *, seed: int = 0) -> ProbeBatch:
    """Deterministic clips of different lengths: a chirp plus noise (no data needed)."""
    rng = np.random.default_rng(seed)
    audios = []
    for index in range(count):
        seconds = 1.0 + 0.7 * index
        t = np.arange(int(seconds * TARGET_SAMPLE_RATE)) / TARGET_SAMPLE_RATE
        chirp = np.sin(2 * np.pi * (200 + 300 * t) * t)
        audios.append((0.3 * chirp + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return ProbeBatch(audios, [None] * count, [f"synthetic_{i}" for i in range(count)],
                      "synthetic")


def manifest_probe(manifest: str | Path, count: int) -> ProbeBatch:
    """The first ``count`` utterances of a validated manifest, with their languages."""
    utterances = read_utterances(manifest)[:count]
    batch = load_batch(utterances)
    return ProbeBatch(batch.audios, batch.languages, batch.ids, str(manifest))


# ---- verification ---------------------------------------------------------------------------

def compare_weights(expected: dict[str, torch.Tensor], model: nn.Module,
                    dtype: torch.dtype) -> dict[str, Any]:
    """Compare the checkpoint's tensors (cast to ``dtype``) with ``model``'s, name by name.

    ``passed`` demands every checkpoint tensor present with its shape and bitwise-equal values.
    """
    actual = model.state_dict()
    missing, shape_mismatch, differing = [], [], []
    worst, worst_name = 0.0, None
    for name, tensor in expected.items():
        if name not in actual:
            missing.append(name)
            continue
        got = actual[name].detach().cpu()
        if got.shape != tensor.shape:
            shape_mismatch.append(f"{name}: checkpoint {list(tensor.shape)}, "
                                  f"export {list(got.shape)}")
            continue
        want = tensor.to(dtype) if tensor.is_floating_point() else tensor
        if torch.equal(got, want):
            continue
        differing.append(name)
        diff = (got.double() - want.double()).abs().max().item()
        if not math.isfinite(diff) or diff > worst or worst_name is None:
            worst, worst_name = diff, name
    return {
        "passed": not (missing or shape_mismatch or differing),
        "tensors": len(expected),
        "missing": missing,
        "shape_mismatch": shape_mismatch,
        "differing": differing,
        "max_abs_diff": worst,
        "worst_tensor": worst_name,
        "extra_in_export": sorted(set(actual) - set(expected)),
    }


@torch.no_grad()
def compare_logits(reference: AsrAdapter, exported: AsrAdapter, probe: ProbeBatch, *,
                   max_new_tokens: int, tolerance: float) -> dict[str, Any]:
    """Greedy responses of both models and the teacher-forced logits of the reference's
    responses under both; ``passed`` when the responses agree and max |Δlogit| <= tolerance."""
    wanted = reference.generate(probe.audios, probe.languages, max_new_tokens=max_new_tokens)
    got = exported.generate(probe.audios, probe.languages, max_new_tokens=max_new_tokens)
    ref_logits, mask = reference.response_logits(probe.audios, probe.languages, wanted)
    exp_logits, _ = exported.response_logits(probe.audios, probe.languages, wanted)
    diff = (ref_logits[mask] - exp_logits[mask]).abs()
    finite = bool(torch.isfinite(ref_logits[mask]).all() and torch.isfinite(exp_logits[mask]).all())
    max_diff = diff.max().item() if diff.numel() else 0.0
    if not finite:
        max_diff = math.inf
    same_responses = wanted == got
    same_stop = reference.stop_token_id == exported.stop_token_id
    return {
        "passed": bool(finite and max_diff <= tolerance and same_responses and same_stop),
        "max_abs_diff": max_diff,
        "mean_abs_diff": diff.mean().item() if diff.numel() and finite else None,
        "tolerance": tolerance,
        "positions": int(mask.sum()),
        "clips": len(probe.audios),
        "clip_ids": probe.ids,
        "source": probe.source,
        "responses_equal": same_responses,
        "response_lengths": [len(r) for r in wanted],
        "stop_token_ids": [reference.stop_token_id, exported.stop_token_id],
        "max_new_tokens": max_new_tokens,
    }


# ---- the export -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ExportSettings(ModelLoading):
    """export and its reload check"""

    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", help="dtype of the saved weights (float32: the master weights)")
    device: str = setting("cpu", metavar="DEVICE", help="where the reload check runs: cpu, "
                                                        "cuda, cuda:N or auto")
    tolerance: float | None = setting(
        None, help="max |logit diff| accepted (default by dtype: "
                   + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCE.items()) + ")")
    probe_clips: int = setting(4, help="clips in the probe batch")
    probe_max_new_tokens: int = setting(16, help="greedy tokens decoded per probe clip")

    def __post_init__(self) -> None:
        if self.dtype not in EXPORT_DTYPES:
            raise UserError(f"export dtype {self.dtype!r} is not one of "
                            f"{', '.join(EXPORT_DTYPES)}")
        if self.tolerance is None:  # frozen: fill the dtype's default once
            object.__setattr__(self, "tolerance", DEFAULT_TOLERANCE[self.dtype])
        if self.tolerance < 0 or self.probe_max_new_tokens < 1:
            raise UserError("the tolerance must be >= 0 and the probe's max new tokens >= 1")
        if self.probe_clips < 1:
            raise UserError(f"--probe-clips must be >= 1, got {self.probe_clips}")


@dataclass
class ExportResult:
    """What an export did; ``passed`` is False when verification failed (nothing published)."""

    passed: bool
    output: Path
    checkpoint: CheckpointSource
    base: Path
    family: str
    weights: dict[str, Any]
    probe: dict[str, Any]
    files: list[str] = field(default_factory=list)
    parameters: int = 0
    seconds: float = 0.0

    def failures(self) -> list[str]:
        out = []
        w, p = self.weights, self.probe
        if not w["passed"]:
            out.append(f"weights: {len(w['differing'])} of {w['tensors']} tensors differ from "
                       f"the checkpoint (max |diff| {w['max_abs_diff']:.3g} in "
                       f"{w['worst_tensor']}), {len(w['missing'])} missing, "
                       f"{len(w['shape_mismatch'])} with another shape")
        if not p["passed"]:
            out.append(f"logits: max |diff| {p['max_abs_diff']:.3g} over {p['positions']} "
                       f"response positions (tolerance {p['tolerance']:g}); greedy responses "
                       f"{'agree' if p['responses_equal'] else 'DIFFER'}; stop token ids "
                       f"{p['stop_token_ids']}")
        return out


def export_checkpoint(ckpt: CheckpointSource, base: str | Path, output: str | Path,
                      probe: ProbeBatch, settings: ExportSettings, *,
                      finish: Any = None) -> ExportResult:
    """Build, write and verify the export; publish it at ``output`` only when it passes.

    ``finish(result, staging_dir)`` runs after a passing verification, before publishing (the
    stage writes the model card and the summary into the folder there).
    """
    started = time.perf_counter()
    output = Path(output)
    base_dir = resolve_model_dir(base)
    family = settings.family or family_of(str(base_dir),
                                          trust_remote_code=settings.trust_remote_code)
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    dtype = EXPORT_DTYPES[settings.dtype]
    device = torch.device(settings.device)

    log.info("loading %s (step %d) into the architecture of %s", ckpt.path, ckpt.step, base_dir)
    model = model_from_checkpoint(ckpt, base_dir, trust_remote_code=settings.trust_remote_code)
    cast_saved_tensors(model, dtype)
    with staging_dir(output) as staging:  # removed unless published
        model.save_pretrained(staging)
        copy_side_files(base_dir, staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())

        log.info("verifying %s: weights against the checkpoint, logits on %d probe clip(s)",
                 output, len(probe.audios))
        exported = load_adapter(str(staging), family=family, device=device, dtype=dtype,
                                trust_remote_code=settings.trust_remote_code,
                                packed_audio_windows=settings.packed_audio_windows)
        weights = compare_weights(checkpoint_model_tensors(ckpt.path), exported.model, dtype)
        processor = AutoProcessor.from_pretrained(base_dir,
                                                  trust_remote_code=settings.trust_remote_code)
        if settings.packed_audio_windows:  # both sides of the comparison attend alike
            use_packed_window_attention(model)
        reference = FAMILIES[family](model.to(device), processor)
        probe_report = compare_logits(reference, exported, probe,
                                      max_new_tokens=settings.probe_max_new_tokens,
                                      tolerance=float(settings.tolerance))
        result = ExportResult(
            passed=weights["passed"] and probe_report["passed"], output=output, checkpoint=ckpt,
            base=base_dir, family=family, weights=weights, probe=probe_report, files=files,
            parameters=sum(p.numel() for p in model.parameters()))
        result.seconds = round(time.perf_counter() - started, 2)
        if result.passed:
            if finish is not None:
                finish(result, staging)
            publish_dir(staging, output, shared=True)
            log.info("export verified and written to %s", output)
        return result


# ---- summary and model card -----------------------------------------------------------------

def export_summary(result: ExportResult, settings: ExportSettings) -> dict[str, Any]:
    """The JSON record of an export (``export_summary.json``; without provenance)."""
    ckpt, meta = result.checkpoint, result.checkpoint.meta
    training = result.checkpoint.train_summary or {}
    return {
        "passed": result.passed,
        "failures": result.failures(),
        "output": str(result.output),
        "checkpoint": {
            "path": str(ckpt.path), "step": ckpt.step,
            "optimizer_steps": meta.get("optimizer_steps"),
            "skipped_steps": meta.get("skipped_steps"),
            "world_size": meta.get("world_size"),
            "config_hash": meta.get("config_hash"),
            "saved_utc": meta.get("saved_utc"),
            "git_commit": (meta.get("provenance") or {}).get("git_commit"),
            "run_dir": str(ckpt.run_dir) if ckpt.run_dir else None,
        },
        "training": {key: training.get(key) for key in
                     ("stage", "base_model", "teacher", "steps", "final_loss", "seconds")
                     } if training else None,
        "base_model": str(result.base),
        "family": result.family,
        "dtype": settings.dtype,
        "device": settings.device,
        "parameters": result.parameters,
        "weights": result.weights,
        "probe": result.probe,
        "files": result.files,
        "seconds": result.seconds,
    }


def _cell(value: Any) -> str:
    text = "n/a" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows)]


def _auto_class_name(family: str) -> str:
    """The transformers Auto class that loads a family's exported folder."""
    return "AutoModelForSpeechSeq2Seq" if family == "whisper" else "AutoModelForSeq2SeqLM"


def model_card(summary: dict[str, Any], provenance: dict[str, Any], *, name: str,
               location: str | None = None, results: Sequence[dict[str, Any]] = ()) -> str:
    """The folder's README.md: front matter, provenance, verification, results, usage
    (``location``: the folder as users will name it; default ``name``)."""
    import yaml  # only the card needs it

    ckpt, weights, probe = summary["checkpoint"], summary["weights"], summary["probe"]
    training = summary.get("training") or {}
    front = {"library_name": "transformers", "pipeline_tag": "automatic-speech-recognition",
             "tags": ["audio-opd", "speech-recognition", "knowledge-distillation"]}
    base = str(training.get("base_model") or summary["base_model"])
    if _HUB_ID.match(base) and not Path(base).exists():
        front["base_model"] = base  # a hub id; local paths mean nothing on the hub
    stage = training.get("stage") or "training"
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---",
             "", f"# {name}", "",
             f"A speech-recognition model ({summary['family']}, "
             f"{summary['parameters']:,} parameters) exported by audio-opd from step "
             f"{ckpt['step']} of a `{stage}` run that started from `{base}`.", "",
             "## Provenance", ""]
    lines += _table([
        ("base model (architecture, processor, tokenizer)", f"`{summary['base_model']}`"),
        ("run started from", f"`{base}`"),
        ("training stage", stage),
        ("teacher", f"`{training['teacher']}`" if training.get("teacher") else None),
        ("checkpoint", f"`{ckpt['path']}`"),
        ("step (optimizer steps, skipped)",
         f"{ckpt['step']} ({ckpt['optimizer_steps']}, {ckpt['skipped_steps']})"),
        ("checkpoint saved (UTC)", ckpt["saved_utc"]),
        ("train config hash", f"`{ckpt['config_hash']}`"),
        ("training git commit", f"`{ckpt['git_commit']}`"),
        ("export git commit", f"`{provenance['git_commit']}`"),
        ("exported (UTC)", provenance["created_utc"]),
        ("weights dtype", summary["dtype"]),
    ])
    lines += ["", "## Verification", "",
              f"Reloaded from this folder with the transformers Auto classes and compared with "
              f"the checkpoint-loaded model on {summary['device']}:", "",
              f"- weights: {weights['tensors']} checkpoint tensors, "
              f"{len(weights['differing'])} differing, {len(weights['missing'])} missing "
              f"(max |diff| {weights['max_abs_diff']:.3g})",
              f"- logits: max |diff| {probe['max_abs_diff']:.3g} (tolerance "
              f"{probe['tolerance']:g}) over {probe['positions']} response positions of "
              f"{probe['clips']} probe clips ({probe['source']}); greedy responses "
              f"{'identical' if probe['responses_equal'] else 'DIFFERENT'}",
              f"- result: {'passed' if summary['passed'] else 'FAILED'}"]
    if results:
        lines += ["", "## Results", "",
                  "| preset | metric | error rate (%) | errors / reference units | utterances "
                  "| evaluated folder |", "|---|---|---:|---:|---:|---|"]
        for row in results:
            rate = "n/a" if row.get("rate") is None else f"{100 * row['rate']:.2f}"
            lines.append(f"| {_cell(row.get('preset'))} | {_cell(row.get('metric'))} | {rate} "
                         f"| {row.get('errors')} / {row.get('ref_len')} "
                         f"| {row.get('utterances')} | `{_cell(row.get('model'))}` |")
    lines += ["", "## Usage", "", "```python",
              "from stages.models import load_adapter  # audio-opd",
              "",
              f'adapter = load_adapter("{location or name}")',
              "responses = adapter.generate([audio_16khz], [None], max_new_tokens=64)",
              "print(adapter.decode_response(responses[0]))",
              "```", "",
              f"Plain transformers: `{_auto_class_name(summary['family'])}"
              ".from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)`.", "",
              "## Versions (export environment)", ""]
    lines += _table(sorted(provenance["versions"].items()))
    return "\n".join(lines) + "\n"
