"""CUDA paths: bf16 (with FlashAttention 2 where flash-attn is installed), and 4-bit NF4 on the GPU.
Skipped without CUDA. The trials use qa: its metrics need no BERTScore weights."""

import importlib.util
import math

import pytest
import torch

from trainables import models
from trainables.training import trial

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_bf16_and_flash_attention_2(tiny_model):
    model = models.load_model(tiny_model)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "flash_attention_2"


@needs_cuda
def test_a_model_loads_in_bf16_on_cuda_with_the_attention_the_machine_has(tiny_model):
    model = models.load_model(tiny_model)
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert model.config._attn_implementation == models.attention_implementation(tiny_model)


@needs_cuda
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_a_trial_trains_on_cuda(tiny_model, method):
    final = trial.execute(
        {
            "task": "qa",
            "method": method,
            "model": tiny_model,
            "max_steps": 4,
            "eval_every": 4,
            "eval_examples": 4,
        },
        lambda metrics, checkpoint: None,
    )
    assert final["status"] == "completed" and final["peak_memory_mb"] > 0
    assert final["train_tokens_per_s"] > 0 and math.isfinite(final["train_loss"])
