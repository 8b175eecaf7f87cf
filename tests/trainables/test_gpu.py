"""CUDA paths: bf16 + FlashAttention 2, and 4-bit NF4 on the GPU. Skipped without CUDA."""

import importlib.util

import pytest
import torch

from trainables import models, trial

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_bf16_and_flash_attention_2(tiny_model):
    model = models.load_model(tiny_model)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "flash_attention_2"


@needs_cuda
def test_qlora_trains_in_4bit_on_cuda(tiny_model):
    final = trial.execute(
        {
            "task": "qg",
            "method": "qlora",
            "model": tiny_model,
            "max_steps": 4,
            "eval_every": 4,
            "eval_examples": 4,
        },
        lambda metrics, checkpoint: None,
    )
    assert final["status"] == "completed" and final["peak_memory_mb"] > 0
