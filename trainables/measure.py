"""What a trial measures about itself: time, memory, size on disk, and cost in dollars."""

import resource
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# On-demand dollars per hour, typical of 2026 cloud list prices; override per sweep with
# --price-per-hour. Matched as substrings of the CUDA device name, most specific first.
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


def hourly_price(override: float | None = None) -> float:
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return CPU_CORE_HOURLY_USD * torch.get_num_threads()
    name = torch.cuda.get_device_name()
    return next((price for gpu, price in GPU_HOURLY_USD.items() if gpu in name), UNKNOWN_GPU_HOURLY_USD)


def cost_usd(seconds: float, price_per_hour: float) -> float:
    return seconds / 3600 * price_per_hour


def peak_memory_mb() -> float:
    """CUDA max allocated on GPU; the process's peak resident set on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
