"""LoRA+: LoRA whose B matrices learn loraplus_lr_ratio times faster than its A matrices (PEFT's
create_loraplus_optimizer); the ratio is searched with the learning rate it multiplies."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from pydantic import Field

from trainables.methods import lora
from trainables.methods.base import Dimension

if TYPE_CHECKING:
    from peft import PeftModel


class LoraPlusHyperparameters(lora.LoraHyperparameters):
    loraplus_lr_ratio: float = Field(16, ge=1, description="B's learning rate over A's")


def _optimizer(
    model: PeftModel, hyperparameters: LoraPlusHyperparameters, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=learning_rate,
        loraplus_lr_ratio=hyperparameters.loraplus_lr_ratio,
        weight_decay=weight_decay,
    )


METHOD = dataclasses.replace(
    lora.METHOD,
    name="lora_plus",
    hyperparameters=LoraPlusHyperparameters,
    dimensions=(*lora.DIMENSIONS, Dimension("loraplus_lr_ratio", "loraplus_lr_ratios", [4, 8, 16])),
    optimizer=_optimizer,
    in_default_sweep=False,
)
