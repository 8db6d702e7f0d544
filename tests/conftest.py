"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from stages.data.batching import Utterance

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def venv_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, so `python` and `snakemake`
    resolve to the test environment, and no hub access."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="module")
def env():
    """A world of one CPU process (gloo) for a module; left as found afterwards."""
    import torch.distributed as dist

    from stages.train import init_distributed, shutdown

    created = not dist.is_initialized()
    env = init_distributed("cpu")
    yield env
    if created:
        shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny tensors gain nothing from threads, and on a shared 2-core box they only wait. Results
    do not depend on the count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def opd_corpus() -> list[Utterance]:
    """12 espeak sentences in 6 languages, clips in memory (``tests.short_run``)."""
    from tests.short_run import synthesize_corpus

    return synthesize_corpus(12, seed=0)


@pytest.fixture(scope="session")
def opd_models_dir(opd_corpus, tmp_path_factory) -> Path:
    """The short run's tiny teacher and student (random init, tokenizer trained on the corpus
    texts): ``teacher_init/`` and ``student_init/``. Shared: tests load their own copies."""
    from tests.short_run import build_models

    return build_models(tmp_path_factory.mktemp("opd"), [u.text for u in opd_corpus], seed=0)
