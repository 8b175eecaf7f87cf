"""AdaLoRA: LoRA in SVD form whose rank budget is reallocated during training, by importance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from trainables.methods import lora
from trainables.methods.base import BuildContext, Dimension, Method, with_peft

if TYPE_CHECKING:
    from peft import AdaLoraConfig, PeftModel


class AdaLoraHyperparameters(lora.LoraHyperparameters):
    # rank is the initial rank; target_rank the final average rank.
    target_rank: int = Field(4, ge=1)
    tinit: int | None = Field(None, ge=0, description="warm-up steps; default 10% of the run")
    tfinal: int | None = Field(None, ge=0, description="final fine-tuning steps; default 20% of the run")


DIMENSIONS = (*lora.DIMENSIONS, Dimension("target_rank", "adalora_target_ranks", [2, 4]))


def schedule(hyperparameters: AdaLoraHyperparameters, total_steps: int) -> tuple[int, int]:
    tinit = hyperparameters.tinit if hyperparameters.tinit is not None else total_steps // 10
    tfinal = hyperparameters.tfinal if hyperparameters.tfinal is not None else total_steps // 5
    return tinit, tfinal


def _problems(hyperparameters: AdaLoraHyperparameters, total_steps: int) -> list[str]:
    tinit, tfinal = schedule(hyperparameters, total_steps)
    problems = []
    if tinit + tfinal >= total_steps:
        problems.append(
            f"adalora.tinit + adalora.tfinal: {tinit} + {tfinal} must be below the run's {total_steps} steps"
        )
    if hyperparameters.target_rank > hyperparameters.rank:
        problems.append(
            f"adalora.target_rank: {hyperparameters.target_rank} is above the initial rank {hyperparameters.rank}"
        )
    return problems


def _search_problems(ranges: Mapping[str, Any]) -> list[str]:
    if max(ranges["adalora_target_ranks"]) > min(ranges["ranks"]):
        return ["adalora_target_ranks must not exceed the smallest of ranks"]
    return []


def _adalora(hyperparameters: AdaLoraHyperparameters, context: BuildContext) -> AdaLoraConfig:
    from peft import AdaLoraConfig, TaskType

    tinit, tfinal = schedule(hyperparameters, context.total_steps)
    return AdaLoraConfig(
        init_r=hyperparameters.rank,
        target_r=hyperparameters.target_rank,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, (context.total_steps - tinit - tfinal) // 10),
        total_step=context.total_steps,
        lora_alpha=hyperparameters.alpha,
        lora_dropout=hyperparameters.dropout,
        target_modules="all-linear",
        task_type=TaskType.CAUSAL_LM,
    )


def _budget_update(model, step: int) -> None:
    model.base_model.update_and_allocate(step)


# The rank allocator's smoothed importance and uncertainty of every adapter weight: what decides
# which singular values the next allocation keeps.
ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def _state(model: PeftModel) -> dict:
    """The rank pattern (which singular values survive; after tfinal, every step re-applies it) and
    the allocator's estimates: without them a resumed run reallocates differently, or crashes."""
    allocator = model.base_model.rankallocator
    return {
        "rank_pattern": model.peft_config[allocator.adapter_name].rank_pattern,
        **{name: getattr(allocator, name) for name in ALLOCATOR_STATE},
    }


def _restore_state(model: PeftModel, state: dict) -> None:
    allocator = model.base_model.rankallocator
    model.peft_config[allocator.adapter_name].rank_pattern = state["rank_pattern"]
    for name in ALLOCATOR_STATE:
        setattr(allocator, name, state[name])


def _lora_factors(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The SVD-form update B diag(E) A as plain LoRA factors: the singular values E and the scaling
    folded into B; the singular values the allocation pruned (E = 0) are left out."""
    kept = layer.lora_E[adapter].flatten() != 0
    scale = layer.scaling[adapter] / (layer.ranknum[adapter] + 1e-5)
    lora_b = layer.lora_B[adapter] * layer.lora_E[adapter].T * scale
    return layer.lora_A[adapter][kept], lora_b[:, kept]


METHOD = Method(
    "adalora",
    with_peft(_adalora),
    hyperparameters=AdaLoraHyperparameters,
    dimensions=DIMENSIONS,
    after_optimizer_step=_budget_update,
    training_state=_state,
    restore_training_state=_restore_state,
    problems=_problems,
    search_problems=_search_problems,
    lora_factors=_lora_factors,
)
