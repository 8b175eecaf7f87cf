"""What a trial measures about itself: time, memory, size on disk, and cost in dollars."""

import json
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

# On-demand dollars per hour of one whole GPU, typical of 2026 cloud list prices; a trial pays its
# share (--gpus-per-trial) plus its CPU cores. Override per sweep with the trial option
# price_per_hour. Matched as substrings of the CUDA device name, most specific first.
GPU_HOURLY_USD = {
    "H200": 3.50,
    "H100": 2.50,
    "A100": 1.60,
    "L40S": 1.00,
    "A10G": 1.00,
    "A10": 0.90,
    "L4": 0.70,
    "V100": 0.90,
    "T4": 0.35,
}
UNKNOWN_GPU_HOURLY_USD = 2.00
CPU_CORE_HOURLY_USD = 0.04


def hardware_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu x{torch.get_num_threads()}"


@dataclass(frozen=True)
class Share:
    """The part of a machine a trial holds (Ray's resources for it): what it is charged for."""

    gpus: float
    cpus: float

    @classmethod
    def whole_machine(cls) -> "Share":
        """Outside Ray a trial holds what its process sees: the GPU, if any, and its threads."""
        return cls(gpus=float(torch.cuda.is_available()), cpus=float(torch.get_num_threads()))

    @property
    def shares_a_gpu(self) -> bool:
        return 0 < self.gpus < 1


def gpu_hourly_price() -> float:
    name = torch.cuda.get_device_name()
    return next((price for gpu, price in GPU_HOURLY_USD.items() if gpu in name), UNKNOWN_GPU_HOURLY_USD)


def hourly_price(share: Share, override: float | None = None) -> float:
    """Dollars per hour for the share of the machine a trial holds; override is the trial's own price."""
    if override is not None:
        return override
    gpu_price = share.gpus * gpu_hourly_price() if share.gpus else 0.0
    return gpu_price + share.cpus * CPU_CORE_HOURLY_USD


def cost_usd(seconds: float, price_per_hour: float) -> float:
    return seconds / 3600 * price_per_hour


# Linux keeps a process's peak resident set in /proc (VmHWM), and resets it on request.
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"


def reset_peak_memory() -> None:
    """Starts a new peak-memory window: a worker process that runs one trial after another
    (Ray Tune's reused actors) must not charge a trial with an earlier trial's peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    elif PROC_CLEAR_REFS.exists():
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)


def peak_memory_mb() -> float:
    """CUDA max allocated on GPU; on CPU the process's peak resident set since reset_peak_memory()
    (VmHWM; where there is no /proc, since the process started)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    if PROC_STATUS.exists():
        high_water_kib = next(
            line.split()[1] for line in PROC_STATUS.read_text().splitlines() if line.startswith("VmHWM:")
        )
        return int(high_water_kib) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # no /proc: macOS, in bytes


def size_on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


class Stopwatch:
    """Adds up the seconds spent in each named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


# What a checkpoint carries of a trial's spending, so that a resumed trial adds to it.
SPENDING_FILE = "spending.json"
SPENDING = ("wall_time_s", "cost_usd", "eval_time_s")


class Meter:
    """What a trial has spent (wall time, evaluation time, dollars) over every process that ran it:
    a resumed or retried trial adds to what its checkpoint says the earlier processes spent."""

    def __init__(self, earlier: dict[str, float] | None = None) -> None:
        reset_peak_memory()
        self.started = time.perf_counter()
        self.earlier = earlier or dict.fromkeys(SPENDING, 0.0)
        self.stopwatch = Stopwatch()

    @classmethod
    def resumed_from(cls, checkpoint: Path | None) -> "Meter":
        return cls(json.loads((checkpoint / SPENDING_FILE).read_text()) if checkpoint else None)

    def spent(self, price_per_hour: float) -> dict[str, float]:
        """Totals so far; this process's time is charged at its own price (a retry may run elsewhere)."""
        wall = time.perf_counter() - self.started
        return {
            "wall_time_s": self.earlier["wall_time_s"] + wall,
            "cost_usd": self.earlier["cost_usd"] + cost_usd(wall, price_per_hour),
            "eval_time_s": self.earlier["eval_time_s"] + self.stopwatch.seconds.get("eval", 0.0),
        }

    @staticmethod
    def save(spent: dict[str, float], checkpoint: Path) -> None:
        (checkpoint / SPENDING_FILE).write_text(json.dumps({key: spent[key] for key in SPENDING}))
