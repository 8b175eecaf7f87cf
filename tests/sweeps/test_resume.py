"""--resume finds the sweep to continue, whichever stage saved it last."""

import os
import time

import pytest

from analysis import load
from sweeps import run
from sweeps.settings import resolve
from trainables.config import ConfigError


def _state(directory, saved_at: float) -> None:
    """What Tune leaves in an experiment directory it has saved."""
    directory.mkdir(parents=True)
    state = directory / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text("{}")
    os.utime(state, (saved_at, saved_at))


@pytest.fixture
def two_sweeps(tmp_path):
    """An older sweep, and a newer one whose search was saved first but whose finalists' re-runs
    were saved last of all."""
    now = time.time()
    _state(tmp_path / "qg" / "older", saved_at=now - 3600)
    _state(tmp_path / "qg" / "newer", saved_at=now - 7200)
    _state(tmp_path / "qg" / "newer" / load.FINALISTS_DIR, saved_at=now)
    return tmp_path


@pytest.mark.parametrize(("name", "expected"), [(None, "newer"), ("newer", "newer"), ("older", "older")])
def test_resume_finds_the_sweep_saved_last_whichever_stage_saved_it(tiny_model, two_sweeps, name, expected):
    settings = resolve(
        "qg", None, {"model": tiny_model, "storage": str(two_sweeps), "resume": True, "name": name}
    )
    assert run.experiment_dir(settings) == two_sweeps / "qg" / expected


def test_a_new_sweep_may_not_take_the_name_of_one_already_started(tiny_model, two_sweeps):
    settings = resolve("qg", None, {"model": tiny_model, "storage": str(two_sweeps), "name": "newer"})
    with pytest.raises(ConfigError, match="already holds a sweep; pass --resume"):
        run.experiment_dir(settings)
