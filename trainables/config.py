"""The typed trial config: the one boundary where Ray Tune's dict becomes a validated object."""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BASELINE = "base"  # the untouched base model, evaluated zero- or k-shot; trains nothing
METHOD_SCOPE = "."  # lora.learning_rate: the learning rate of LoRA trials, a dimension of its own


class ConfigError(ValueError):
    """A trial or sweep config is invalid; the message names every field at fault, on one line."""


class TrialConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    method: str
    model: str = "embedded"
    # Shared by every method.
    learning_rate: float = Field(2e-4, gt=0, le=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # LoRA family: rank is AdaLoRA's initial rank; target_rank its final average rank.
    rank: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    target_rank: int = Field(4, ge=1)
    adalora_tinit: int | None = Field(None, ge=0, description="AdaLoRA warm-up steps; default 10% of the run")
    adalora_tfinal: int | None = Field(None, ge=0, description="AdaLoRA final fine-tuning steps; default 20%")
    # Prompt tuning.
    num_virtual_tokens: int = Field(16, ge=1)
    prompt_init: Literal["text", "random"] = "text"
    # Baseline trials: examples from the train split put in the prompt.
    shots: int = Field(0, ge=0, le=8)
    # Budget and optimisation.
    max_steps: int = Field(60, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(384, ge=16)
    train_examples: int | None = Field(None, ge=1, description="use only the first N training examples")
    eval_every: int = Field(20, ge=1)
    eval_examples: int = Field(32, ge=1)
    # The evaluations that decide (the ranking figure on validation, the verdict on test) use the
    # whole split; a cap only makes sense for smoke runs, whose verdicts mean nothing anyway.
    full_eval_examples: int | None = Field(None, ge=1, description="cap the whole-split evaluations")
    eval_batch_size: int = Field(16, ge=1)
    # Sweeps select on validation; only a final, explicit evaluation may look at the test split.
    eval_split: Literal["validation", "test"] = "validation"
    seed: int = 0
    price_per_hour: float | None = Field(
        None, ge=0, description="the trial's dollars per hour, instead of its share of the price table"
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        return known_task(task)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from trainables.methods import METHODS

        if method != BASELINE and method not in METHODS:
            raise ValueError(f"unknown method '{method}'; known: {', '.join([*METHODS, BASELINE])}")
        return method

    @classmethod
    def parse(cls, values: dict) -> "TrialConfig":
        try:
            return cls.model_validate(unscoped(values))
        except ValidationError as error:
            raise ConfigError(describe(error)) from None

    def usable_train_size(self, available: int) -> int:
        return min(available, self.train_examples or available)

    def total_steps(self, train_size: int) -> int:
        if self.epochs is None:
            return self.max_steps
        batches_per_epoch = math.ceil(train_size / self.batch_size)
        return max(1, math.ceil(self.epochs * batches_per_epoch / self.grad_accum))


def unscoped(values: dict) -> dict:
    """Tune's dict names a method's searched hyperparameters `<method>.<field>` (so that the
    sampler models each method's own dimensions apart); the config names the field alone. Another
    method's scoped name stays as it is, and is refused as an unknown option."""
    prefix = f"{values.get('method')}{METHOD_SCOPE}"
    return {key.removeprefix(prefix): value for key, value in values.items()}


def known_task(task: str) -> str:
    from trainables.tasks import canonical_task

    try:
        return canonical_task(task)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def describe(error: ValidationError) -> str:
    """Every problem of a ValidationError on one line, each naming its field."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown option"
        problems.append(f"{field}: {message}")
    return "invalid config: " + "; ".join(problems)
