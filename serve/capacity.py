"""Whether a model replica can hold the base models its sweeps need: checked at start, from the
models' configs alone, before anything loads."""

import subprocess
import sys

import psutil
import torch

from serve.adapters import Registry
from trainables import models
from trainables.config import ConfigError

GIB = 2**30
# NF4 weights take half a byte a parameter (their quantization statistics and the layers left
# unquantized add a little): a lower bound, as is the whole estimate.
FOUR_BIT_BYTES_PER_PARAMETER = 0.5


def weights_bytes(registry: Registry) -> dict[str, float]:
    """The bytes of each base model's weights in a replica, every copy (precision) it holds."""
    full = torch.finfo(models.compute_dtype()).bits // 8
    needed = {}
    for base_id, base_model in registry.bases.items():
        parameters = models.parameter_count(base_model) or 0
        copies = registry.quantized_bases(base_model)
        needed[base_id] = sum(parameters * (FOUR_BIT_BYTES_PER_PARAMETER if q else full) for q in copies)
    return needed


# Asked in a process of its own: a CUDA context made here would stay on the GPU a replica then uses.
FREE_GPU_MEMORY = "import torch; print(torch.cuda.mem_get_info(0)[0])"


def available_bytes(gpus: int) -> int:
    """What a replica may fill: the first GPU's free memory (each replica has a GPU of its own),
    else this machine's available memory."""
    if not gpus:
        return psutil.virtual_memory().available
    asked = subprocess.run(
        [sys.executable, "-c", FREE_GPU_MEMORY], capture_output=True, text=True, check=True
    )
    return int(asked.stdout)


def check_fits(needed: dict[str, float], replicas_here: int, available: float) -> None:
    """A ConfigError, saying the memory it would need, where the base models' weights alone
    (the least the replicas need) outgrow what is available."""
    total = sum(needed.values()) * replicas_here
    if total > available:
        each = ", ".join(f"{base_id} {size / GIB:.2f} GiB" for base_id, size in needed.items())
        replicas = f" x {replicas_here} replicas" if replicas_here > 1 else ""
        raise ConfigError(
            f"the base models need at least {total / GIB:.2f} GiB ({each}{replicas}) and "
            f"{available / GIB:.2f} GiB is free; serve fewer base models or sweeps in one server"
        )
