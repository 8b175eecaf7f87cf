"""Prompt tuning: learnt virtual tokens put in front of the prompt, initialised from the task's instruction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainables.methods.base import BuildContext, Dimension, Hyperparameters, Method, with_peft

if TYPE_CHECKING:
    from peft import PromptTuningConfig


class PromptTuningHyperparameters(Hyperparameters):
    num_virtual_tokens: int = Field(16, ge=1)
    prompt_init: Literal["text", "random"] = "text"


DIMENSIONS = (
    # Soft prompts need far larger steps than weight adapters.
    Dimension("learning_rate", "prompt_tuning_learning_rate", (1e-3, 1e-1), log=True),
    Dimension("num_virtual_tokens", "virtual_tokens", [8, 16, 32]),
)


def _prompt_tuning(hyperparameters: PromptTuningHyperparameters, context: BuildContext) -> PromptTuningConfig:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    from_text = hyperparameters.prompt_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=hyperparameters.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=context.instruction if from_text else None,
        tokenizer_name_or_path=context.model_path if from_text else None,
    )


def virtual_tokens(saved: Path) -> int:
    """The virtual tokens a saved prompt-tuning adapter puts in front of every prompt."""
    return int(json.loads((saved / "adapter_config.json").read_text())["num_virtual_tokens"])


METHOD = Method(
    "prompt_tuning",
    with_peft(_prompt_tuning),
    hyperparameters=PromptTuningHyperparameters,
    dimensions=DIMENSIONS,
    mergeable=False,  # virtual tokens in front of the prompt: no weight to merge them into
    prompt_positions=virtual_tokens,
)
