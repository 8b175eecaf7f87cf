"""What a model's architecture is made of, read from its config alone: a skeleton on the meta device.

Users bring any Hugging Face causal LM, and each names its layers its own way. The sweep's driver
asks here, before any trial starts, whether the project can run the model at all, and each method
asks what it needs of the layers (IA3 its key, value and feed-forward layers). Building the
skeleton reads no weights and allocates no memory.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.pytorch_utils import Conv1D

if TYPE_CHECKING:
    from collections.abc import Iterator

    from transformers import PreTrainedModel

# The cache layers the decoding runtime (trainables.decoding) drives: attention keys and values,
# whole or in a sliding window. Recurrent state (Mamba, linear attention) cannot be cut per row.
ATTENTION_CACHE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


@functools.cache
def skeleton(model_path: str) -> PreTrainedModel:
    """The model built from its config on the meta device: its modules and shapes, no weights."""
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_type(model: PreTrainedModel) -> str:
    return model.config.model_type


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why no method of this project can run on the model, or None."""
    config = model.config
    if quantization := getattr(config, "quantization_config", None):
        method = (quantization if isinstance(quantization, dict) else quantization.to_dict()).get(
            "quant_method"
        )
        return f"its checkpoint is already quantized ({method}); give the full-precision model"
    cache_layers = {type(layer) for layer in DynamicCache(config=config.get_text_config()).layers}
    if other := sorted(layer.__name__ for layer in cache_layers if layer not in ATTENTION_CACHE_LAYERS):
        return (
            f"its layers keep recurrent state ({', '.join(other)}), and decoding here caches attention "
            "keys and values only"
        )
    return None


def sliding_window(config) -> int | None:
    """The shortest window of the model's sliding-window attention layers, None where none slides
    (transformers' own cache layout for the config says which layers do)."""
    layers = DynamicCache(config=config.get_text_config()).layers
    return min(
        (layer.sliding_window for layer in layers if isinstance(layer, DynamicSlidingWindowLayer)),
        default=None,
    )


def linear_layers(model: PreTrainedModel) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every linear layer but the output head: nn.Linear, and GPT-2's Conv1D (its weight transposed)."""
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head:
            yield name, module


def conv1d_layer_names(model_path: str) -> set[str]:
    """The architecture's GPT-2-style Conv1D layers, by their names in the model itself."""
    return {name for name, layer in skeleton(model_path).named_modules() if isinstance(layer, Conv1D)}


def with_conv1d_layers_restored(model: PreTrainedModel, model_path: str) -> PreTrainedModel:
    """The model with GPT-2's Conv1D layers back where its architecture has them.

    bitsandbytes quantizes a Conv1D layer as a linear layer (its weight transposed), and
    dequantizing leaves that nn.Linear in place: the model would save weights transposed from what
    its class reads. Each such layer becomes a Conv1D again, with the same weights.
    """
    conv1d = conv1d_layer_names(model_path)
    for name, layer in list(model.named_modules()):
        if name in conv1d and isinstance(layer, torch.nn.Linear):
            restored = Conv1D(layer.out_features, layer.in_features).to(
                layer.weight.device, layer.weight.dtype
            )
            with torch.no_grad():
                restored.weight.copy_(layer.weight.T)
                if layer.bias is not None:  # else Conv1D's own bias: zeros
                    restored.bias.copy_(layer.bias)
            model.set_submodule(name, restored)
    return model


def output_features(layer: torch.nn.Module) -> int:
    return layer.nf if isinstance(layer, Conv1D) else layer.out_features
