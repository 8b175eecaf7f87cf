"""Shared fixtures: a tiny random-weight model built in seconds, and an isolated cache."""

import subprocess
import sys
from pathlib import Path

import pytest

from trainables import embedded


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's cache (and so never the cached default model)."""
    cache = tmp_path_factory.mktemp("cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PEFT_SWEEPS_CACHE", str(cache))
    yield cache
    patcher.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Directory of a random-weight Llama with its own tokenizer; loads like any HF model."""
    return str(embedded.build(embedded.TINY_SPEC, tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def smoke_sweep(tiny_model, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One real `python -m sweeps.run qg --smoke` on the tiny model, its finalists re-trained with a
    second seed, shared by the tests that read it."""
    storage = tmp_path_factory.mktemp("results")
    command = [
        sys.executable,
        "-m",
        "sweeps.run",
        "qg",
        "--smoke",
        "--model",
        tiny_model,
        "--finalist-seeds",
        "2",
    ]
    done = subprocess.run(
        [*command, "--storage", str(storage), "--name", "smoke", "--concurrency", "2"],
        capture_output=True,
        text=True,
        # The sweep, finalist re-runs and verdict take a few minutes alone; room for a busy machine.
        timeout=1200,
    )
    return done, storage / "qg" / "smoke"
