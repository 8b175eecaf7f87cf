"""IA3: learnt scaling vectors on attention keys, values and the feed-forward layers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from trainables import architecture
from trainables.methods.base import ADAPTER_LEARNING_RATE, BuildContext, Hyperparameters, Method

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# Attention's key and value projections by the names architectures give them, fused with the
# query (Phi-3's qkv_proj, GPT-2's c_attn, Falcon's query_key_value) or not.
KEY_VALUE = re.compile(
    r"(^|_)(k|v|key|value|kv)(_proj)?$|^w[kv]$|qkv|query_key_value|^c_attn$", re.IGNORECASE
)
FEED_FORWARD_BLOCKS = ("mlp", "feed_forward", "ffn", "mlp_block")


class CannotTarget(ValueError):
    """IA3 finds no layers to scale in this architecture."""


def known_to_peft(model: PreTrainedModel) -> bool:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    return architecture.model_type(model) in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING


def derived_modules(model: PreTrainedModel) -> dict[str, list[str]]:
    """IA3's target and feed-forward modules where PEFT's table lacks the model type, as the table
    picks them for Llama: attention's key and value projections, and the feed-forward block's
    output projection (the linear layer back to the hidden size), whose input IA3 scales."""
    hidden_size = model.config.get_text_config().hidden_size
    key_value, feed_forward = set(), set()
    for name, layer in architecture.linear_layers(model):
        *blocks, leaf = name.split(".")
        if (
            blocks
            and blocks[-1] in FEED_FORWARD_BLOCKS
            and architecture.output_features(layer) == hidden_size
        ):
            feed_forward.add(f"{blocks[-1]}.{leaf}")  # GPT-2 has a c_proj in attention too
        elif KEY_VALUE.search(leaf):
            key_value.add(leaf)
    if not key_value:
        raise CannotTarget("no attention key or value projection found by name")
    if not feed_forward:
        raise CannotTarget(
            "no feed-forward linear layer back to the hidden size (a mixture of experts keeps its experts' weights in fused tensors)"
        )
    return {"target_modules": sorted(key_value | feed_forward), "feedforward_modules": sorted(feed_forward)}


def _modules(model: PreTrainedModel) -> dict[str, list[str]]:
    return {} if known_to_peft(model) else derived_modules(model)


def _refusal(model: PreTrainedModel) -> str | None:
    try:
        _modules(model)
    except CannotTarget as reason:
        return str(reason)
    return None


def _ia3(base: PreTrainedModel, hyperparameters: Hyperparameters, context: BuildContext) -> PeftModel:
    # IA3 has no dropout, so the search varies only its learning rate.
    from peft import IA3Config, TaskType, get_peft_model

    return get_peft_model(base, IA3Config(task_type=TaskType.CAUSAL_LM, **_modules(base)))


METHOD = Method("ia3", _ia3, dimensions=(ADAPTER_LEARNING_RATE,), refusal=_refusal)
