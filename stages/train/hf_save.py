"""Save a model trained under FSDP2 as an ordinary Hugging Face folder.

The trained parameters are DTensor shards spread over the ranks. ``save_hf_folder`` gathers the
full state dict onto rank 0 (on CPU, so a model larger than one device's spare memory still
fits), loads it into a plain model built from the *base* folder's config with the Auto classes
(the same classes every stage loads models with), and writes it with ``save_pretrained``
(safetensors). Everything else a user needs to load and run the model — processor, tokenizer,
chat template, feature-extractor and generation configs, remote code — is copied unchanged from
the base folder: training never changes them, and copying keeps them byte-identical.

The folder appears atomically: it is written under a temporary name beside the target and
renamed when complete, so a killed save leaves the previous export (or nothing) in place. Its
files are 0644 and its folders 0755 whatever the umask (others on a cluster load it).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import AutoConfig

from stages.common.errors import UserError
from stages.common.fsutil import publish_dir, staging_dir
from stages.common.runtime import DTYPES
from stages.models.base import MODEL_AUTO_CLASSES
from stages.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)

# Files of the base folder that hold weights (replaced by the trained ones) or the model config
# (written by save_pretrained from the same config); everything else is copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_NOT_COPIED = frozenset({"config.json", "model.safetensors.index.json",
                         "pytorch_model.bin.index.json"})
# Dtypes the weights can be saved in: those of --dtype everywhere.
EXPORT_DTYPES = DTYPES


def resolve_model_dir(path_or_id: str | Path) -> Path:
    """The local folder of a model: the path itself, or a hub id's folder in the local cache
    (nothing is downloaded)."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), local_files_only=True))
    except (OSError, ValueError) as err:  # not cached, or not a valid hub id
        raise UserError(f"{path_or_id}: not a model folder, and not a hub id in the local cache "
                        f"({err}); give the folder the model was trained from") from err


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain CPU tensors on rank 0 ({} on the other ranks).
    Collective: every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def plain_model_from_config(base_dir: str | Path, *, trust_remote_code: bool = False
                            ) -> nn.Module:
    """A randomly initialised, unsharded model of the base folder's architecture (CPU)."""
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=trust_remote_code)
    errors = []
    for auto in MODEL_AUTO_CLASSES:  # the adapters' loading order
        try:
            return auto.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as err:  # this Auto class does not know the config's model type
            errors.append(f"{auto.__name__}: {err}")
    raise UserError(f"{base_dir}: no Auto class builds this model ({'; '.join(errors)}); set "
                    "trust_remote_code if the checkpoint ships its own code")


def copy_side_files(base_dir: Path, target: Path) -> list[str]:
    """Copy every non-weight file of ``base_dir`` (recursively, hidden entries skipped) into
    ``target``, overwriting what ``save_pretrained`` wrote there (e.g. the generation config)."""
    copied = []
    for source in sorted(base_dir.rglob("*")):
        relative = source.relative_to(base_dir)
        if any(part.startswith(".") for part in relative.parts) or not source.is_file():
            continue
        if source.name in _NOT_COPIED or source.name.endswith(_WEIGHT_SUFFIXES):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        copied.append(str(relative))
    return copied


def save_hf_folder(model: nn.Module, base_dir: str | Path, export_dir: str | Path, env: DistEnv,
                   *, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
                   ) -> Path:
    """Write the (FSDP-wrapped or plain) ``model`` as a Hugging Face folder at ``export_dir``.

    ``base_dir``: the folder (or cached hub id) training started from; its config defines the
    architecture and its processor/tokenizer/generation files are copied. ``dtype``: the dtype
    of the saved weights (fp32 keeps the trained master weights exactly). Collective: every rank
    calls it; rank 0 writes. Returns ``export_dir``.
    """
    state = full_state_dict(model)
    export_dir = Path(export_dir)
    if env.is_main:
        base = resolve_model_dir(base_dir)
        plain = plain_model_from_config(base, trust_remote_code=trust_remote_code)
        try:
            plain.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"the trained weights do not fit the architecture in {base}/config."
                            f"json ({err}); export with the folder training started from") from err
        plain.to(dtype)
        with staging_dir(export_dir) as staging:
            plain.save_pretrained(staging)
            copy_side_files(base, staging)
            publish_dir(staging, export_dir, shared=True)
        log.info("saved the trained model to %s", export_dir)
    barrier()
    return export_dir

