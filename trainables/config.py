"""The typed trial config: the one boundary where Ray Tune's dict becomes a validated object.

It knows no registry: the methods and tasks a config is checked against come in as `Registries`
(trainables.registries binds the real ones), so validating a config dict imports neither PEFT
nor the task data (datasets, bert-score).
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trainables.decoding import lookup
from trainables.decoding.lookup import PromptLookup
from trainables.errors import ConfigError, problems

METHOD_SCOPE = "."  # lora.learning_rate: the learning rate of LoRA trials, a dimension of its own


class Hyperparameters(BaseModel):
    """A method's own hyperparameters; each method subclasses it with its fields and defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class MethodFacts(Protocol):
    """What the config reads of a registered method."""

    name: str
    hyperparameters: type[Hyperparameters]


@dataclass(frozen=True)
class Registries:
    """The registries a config is checked against."""

    methods: Mapping[str, MethodFacts]
    canonical_task: Callable[[str], str]  # a task's canonical name; KeyError naming the known ones


def check_task(task: str, canonical_task: Callable[[str], str]) -> str:
    """The task's canonical name, or a ValueError (what a pydantic validator raises) naming the known ones."""
    try:
        return canonical_task(task)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


class TrialConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    method: str
    model: str = "embedded"
    # Shared by every method (each searches it in its own range).
    learning_rate: float = Field(2e-4, gt=0, le=1)
    # The method's own, typed by its module (trainables/methods/); named `<method>.<field>` in a sweep.
    hyperparameters: Hyperparameters = Hyperparameters()
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
    # NEFTune (Jain et al. 2023): uniform noise on the input embeddings while training, at most
    # alpha / sqrt(sequence length x hidden size) per element. Off by default: on the embedded
    # model it did not raise quality clearly (docs/training-notes.md).
    neftune_alpha: float = Field(0.0, ge=0, description="NEFTune noise on the input embeddings; 0: off")
    max_length: int = Field(384, ge=16)
    train_examples: int | None = Field(None, ge=1, description="use only the first N training examples")
    eval_every: int = Field(20, ge=1)
    eval_examples: int = Field(32, ge=1)
    # The evaluations that decide (the ranking figure on validation, the verdict on test) use the
    # whole split; a cap only makes sense for smoke runs, whose verdicts mean nothing anyway.
    full_eval_examples: int | None = Field(None, ge=1, description="cap the whole-split evaluations")
    eval_batch_size: int = Field(16, ge=1)
    # Prompt-lookup decoding (trainables.decoding.lookup): the same answers in fewer forward passes.
    prompt_lookup: bool = Field(True, description="draft answer tokens from the prompt; off: plain decoding")
    prompt_lookup_tokens: int = Field(PromptLookup.tokens, ge=1, description="longest draft (k)")
    prompt_lookup_ngram: int = Field(PromptLookup.ngram, ge=1, description="longest suffix looked up (n)")
    # Sweeps select on validation; only a final, explicit evaluation may look at the test split.
    eval_split: Literal["validation", "test"] = "validation"
    seed: int = 0
    price_per_hour: float | None = Field(
        None, ge=0, description="the trial's dollars per hour, instead of its share of the price table"
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str, info: ValidationInfo) -> str:
        return check_task(task, info.context["known"].canonical_task)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str, info: ValidationInfo) -> str:
        methods = info.context["known"].methods
        if method not in methods:
            raise ValueError(f"unknown method '{method}'; known: {', '.join(methods)}")
        return method

    @classmethod
    def parse(cls, values: dict, known: Registries) -> "TrialConfig":
        """The typed config of a trial; every problem, the method's own fields included, at once."""
        values = unscoped(values, known.methods)
        method = known.methods.get(values.get("method"))
        own = method.hyperparameters if method else Hyperparameters
        former = _former_names(values, own, known.methods)
        found = [f"{key}: unknown option; did you mean {hint}?" for key, hint in former.items()]
        hyperparameters = Hyperparameters()
        try:
            hyperparameters = own.model_validate({k: v for k, v in values.items() if k in own.model_fields})
        except ValidationError as error:
            found += problems(error, prefix=f"{method.name}{METHOD_SCOPE}")
        shared = {k: v for k, v in values.items() if k not in own.model_fields and k not in former}
        try:
            config = cls.model_validate(
                shared | {"hyperparameters": hyperparameters}, context={"known": known}
            )
        except ValidationError as error:
            found += problems(error)
        if found:
            raise ConfigError("invalid config: " + "; ".join(found))
        return config

    def lookup(self) -> PromptLookup | None:
        """Prompt lookup's settings for this trial's decoding; None where it is off."""
        return lookup.chosen(self.prompt_lookup, self.prompt_lookup_tokens, self.prompt_lookup_ngram)

    def usable_train_size(self, available: int) -> int:
        return min(available, self.train_examples or available)

    def total_steps(self, train_size: int) -> int:
        if self.epochs is None:
            return self.max_steps
        batches_per_epoch = math.ceil(train_size / self.batch_size)
        return max(1, math.ceil(self.epochs * batches_per_epoch / self.grad_accum))


def unscoped(values: dict, methods: Mapping[str, MethodFacts]) -> dict:
    """Tune's dict names a method's searched hyperparameters `<method>.<field>` (so that the
    sampler models each method's own dimensions apart); the config names the field alone. Options
    of another registered method (a sweep's `trial:` block holds every method's) do not apply to
    this trial; any other scope stays as it is, and is refused as an unknown option."""
    method = values.get("method")
    kept = {}
    for key, value in values.items():
        scope, _, field = key.rpartition(METHOD_SCOPE)
        if scope == method:
            kept[field] = value
        elif scope not in methods:
            kept[key] = value
    return kept


def _former_names(
    values: dict, own: type[Hyperparameters], methods: Mapping[str, MethodFacts]
) -> dict[str, str]:
    """Unknown keys that read as `<method>_<field>`, the names per-method options once had
    (adalora_tinit), each with the scoped name it now has (adalora.tinit)."""
    hints = {}
    for key in values.keys() - own.model_fields.keys() - TrialConfig.model_fields.keys():
        for name, method in methods.items():
            field = key.removeprefix(f"{name}_")
            if field != key and field in method.hyperparameters.model_fields:
                hints[key] = f"{name}{METHOD_SCOPE}{field}"
    return hints
