"""LoRA: a low-rank update B @ A beside each linear layer; the family's shared hyperparameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from trainables.methods.base import (
    ADAPTER_LEARNING_RATE,
    BuildContext,
    Dimension,
    Hyperparameters,
    Method,
    lora_factors,
    with_peft,
)

if TYPE_CHECKING:
    from peft import LoraConfig


class LoraHyperparameters(Hyperparameters):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)


DIMENSIONS = (
    ADAPTER_LEARNING_RATE,
    Dimension("dropout", "dropout", (0.0, 0.2), below_one=True),
    Dimension("rank", "ranks", [4, 8, 16]),
    Dimension("alpha", "alphas", [8, 16, 32]),
)


def lora_config(hyperparameters: LoraHyperparameters, context: BuildContext, **variant) -> LoraConfig:
    """The family's LoraConfig; a variant (DoRA, rsLoRA) adds its own switch."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=hyperparameters.rank,
        lora_alpha=hyperparameters.alpha,
        lora_dropout=hyperparameters.dropout,
        target_modules="all-linear",
        task_type=TaskType.CAUSAL_LM,
        **variant,
    )


METHOD = Method(
    "lora",
    with_peft(lora_config),
    hyperparameters=LoraHyperparameters,
    dimensions=DIMENSIONS,
    shares_mixed_batch=True,
    lora_factors=lora_factors,
)
