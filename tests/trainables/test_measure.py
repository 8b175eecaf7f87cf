"""Cost: a trial pays for the share of the machine it holds."""

import subprocess
import sys

import pytest
import torch

from trainables import measure


def test_a_cpu_trial_pays_for_its_cores():
    assert measure.hourly_price(measure.Share(gpus=0, cpus=2)) == pytest.approx(
        2 * measure.CPU_CORE_HOURLY_USD
    )


def test_a_trial_pays_its_share_of_the_gpu_plus_its_cores(monkeypatch):
    # No GPU here: the device name is what CUDA would report on an H100.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")
    whole = measure.hourly_price(measure.Share(gpus=1, cpus=4))
    half = measure.hourly_price(measure.Share(gpus=0.5, cpus=4))
    assert whole == pytest.approx(measure.GPU_HOURLY_USD["H100"] + 4 * measure.CPU_CORE_HOURLY_USD)
    assert half == pytest.approx(measure.GPU_HOURLY_USD["H100"] / 2 + 4 * measure.CPU_CORE_HOURLY_USD)


def test_a_given_price_is_the_trials_own():
    assert measure.hourly_price(measure.Share(gpus=0.5, cpus=4), override=1.5) == 1.5


@pytest.mark.parametrize(("gpus", "shares"), [(0, False), (0.25, True), (0.5, True), (1, False), (2, False)])
def test_only_a_fraction_of_a_gpu_is_shared(gpus, shares):
    assert measure.Share(gpus=gpus, cpus=1).shares_a_gpu is shares


@pytest.mark.skipif(
    not measure.PROC_CLEAR_REFS.exists() or torch.cuda.is_available(), reason="Linux CPU peak RSS"
)
def test_each_trial_in_a_reused_worker_has_its_own_peak_memory():
    # In a fresh process: in this one, memory freed by earlier tests stays resident and hides a peak.
    script = """
import torch
from trainables import measure
measure.reset_peak_memory()
resident = measure.peak_memory_mb()
earlier_trial = torch.ones(100 * 2**20)  # 400 MiB, touched
del earlier_trial
assert measure.peak_memory_mb() > resident + 300, "the earlier trial's peak"
measure.Meter()  # the next trial starts in the same process
assert measure.peak_memory_mb() < resident + 100, "the next trial's own peak"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
