"""--resume finds the sweep to continue, whichever stage was interrupted."""

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

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
    """An older sweep past its baselines, and a newer one interrupted during them."""
    now = time.time()
    _state(tmp_path / "qg" / "older", saved_at=now - 3600)
    _state(tmp_path / "qg" / "older" / run.BASELINES_DIR, saved_at=now - 3700)
    _state(tmp_path / "qg" / "newer" / run.BASELINES_DIR, saved_at=now)
    return tmp_path


@pytest.mark.parametrize(("name", "expected"), [(None, "newer"), ("newer", "newer"), ("older", "older")])
def test_resume_finds_a_sweep_interrupted_during_its_baselines(tiny_model, two_sweeps, name, expected):
    settings = resolve(
        "qg", None, {"model": tiny_model, "storage": str(two_sweeps), "resume": True, "name": name}
    )
    assert run.experiment_dir(settings) == two_sweeps / "qg" / expected


def test_a_new_sweep_may_not_take_the_name_of_one_interrupted_during_its_baselines(tiny_model, two_sweeps):
    settings = resolve("qg", None, {"model": tiny_model, "storage": str(two_sweeps), "name": "newer"})
    with pytest.raises(ConfigError, match="already holds a sweep; pass --resume"):
        run.experiment_dir(settings)


@pytest.mark.slow
def test_driver_killed_during_the_baselines_resumes_with_the_printed_command(tiny_model, tmp_path):
    samples = 2
    command = [
        sys.executable, "-m", "sweeps.run", "qg", "--smoke", "--model", tiny_model, "--storage", str(tmp_path),
        "--methods", "lora", "--samples", str(samples), "--concurrency", "1", "--name", "early",
    ]  # fmt: skip
    sweep_dir = tmp_path / "qg" / "early"
    driver = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not list((sweep_dir / run.BASELINES_DIR).glob(run.EXPERIMENT_STATE)) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait()
    assert list((sweep_dir / run.BASELINES_DIR).glob(run.EXPERIMENT_STATE)), "the baselines never started"
    assert not list(sweep_dir.glob(run.EXPERIMENT_STATE)), "killed after the baselines, not during them"
    time.sleep(5)  # let the experiment-state snapshot from before the kill settle on disk

    # What the driver prints when interrupted: --name early --resume.
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pl.read_csv(sweep_dir / "trials.csv")
    assert sorted(trials["method"]) == ["base"] + ["lora"] * samples
    assert trials["status"].is_in(["completed", "stopped_early"]).all()
