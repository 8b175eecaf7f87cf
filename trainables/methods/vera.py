"""VeRA: one pair of frozen random projections shared by every adapted layer, and per layer two
trained scaling vectors (b, d): the update is diag(b) B diag(d) A.

The projections come from projection_seed and the rank, so adapters served on one base together
must agree on both (PEFT refuses otherwise); those that differ take turns. PEFT's mixed-adapter
batches are LoRA's only, so each VeRA adapter answers in a batch of its own. The projections are
saved with the adapter, which then needs nothing but the base to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from trainables.methods.base import BuildContext, Dimension, Hyperparameters, Method, with_peft

if TYPE_CHECKING:
    from peft import VeraConfig


class VeraHyperparameters(Hyperparameters):
    rank: int = Field(256, ge=1)  # the shared projections' rank: cheap, as only the vectors train
    dropout: float = Field(0.0, ge=0, lt=1)
    projection_seed: int = Field(0, ge=0, description="seed of the shared random projections")
    d_initial: float = Field(0.1, gt=0, description="initial value of the d scaling vectors")


DIMENSIONS = (
    # Scaling vectors move far less per step than LoRA matrices: larger steps (the paper's ~1e-2).
    Dimension("learning_rate", "vera_learning_rate", (1e-3, 1e-1), log=True),
    Dimension("dropout", "dropout", (0.0, 0.2), below_one=True),
    Dimension("rank", "vera_ranks", [128, 256]),
)


def _vera(hyperparameters: VeraHyperparameters, context: BuildContext) -> VeraConfig:
    from peft import TaskType, VeraConfig

    return VeraConfig(
        r=hyperparameters.rank,
        vera_dropout=hyperparameters.dropout,
        projection_prng_key=hyperparameters.projection_seed,
        d_initial=hyperparameters.d_initial,
        save_projection=True,
        target_modules="all-linear",
        task_type=TaskType.CAUSAL_LM,
    )


def _lora_factors(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """diag(b) B diag(d) A as plain LoRA factors of the projections' rank: d scales A's rows, b B's rows."""
    projection_a = layer.vera_A[adapter][:, : layer.in_features]
    projection_b = layer.vera_B[adapter][: layer.out_features, :]
    return layer.vera_lambda_d[adapter][:, None] * projection_a, layer.vera_lambda_b[adapter][
        :, None
    ] * projection_b


METHOD = Method(
    "vera",
    with_peft(_vera),
    hyperparameters=VeraHyperparameters,
    dimensions=DIMENSIONS,
    served_together_when_equal=("r", "projection_prng_key"),
    lora_factors=_lora_factors,
    in_default_sweep=False,
)
