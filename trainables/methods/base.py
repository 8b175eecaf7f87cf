"""What a method is: the facts every other part reads from the METHODS registry.

A method's module holds its typed hyperparameters, its search dimensions with their default
ranges, how it wraps the base model, its training hooks, how it saves and reloads what it trained,
and how it may be served. Nothing outside that module asks which method it is.

The registry's facts import no PEFT and no model classes: the sweep's driver reads them (names,
search dimensions) and never trains, and those imports would add seconds to every sweep's start
while the trial slots wait. A method's functions import what they use when called, in the trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainables import models
from trainables.config import Hyperparameters

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# What a PEFT method saves, and what full fine-tuning saves: safetensors only, never pickles.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class BuildContext:
    total_steps: int
    model_path: str
    instruction: str


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a float range, or choices when `default` is a list."""

    field: str  # what it sets: a field of the method's Hyperparameters, or the trial's learning_rate
    search_key: str  # its key in a sweep's `search:` block; methods that search it alike share the key
    default: tuple[float, float] | list
    log: bool = False
    below_one: bool = False  # a float range must stay below 1 (dropout), not reach it (learning rate)

    @property
    def categorical(self) -> bool:
        return isinstance(self.default, list)

    def problem(self, bounds) -> str | None:
        """Why a range given for this dimension is impossible, or None."""
        if self.categorical:
            return None if bounds and min(bounds) > 0 else "needs at least one choice, all above 0"
        low, high = bounds
        if 0 <= low < high and (high < 1 or (high == 1 and not self.below_one)):
            return None
        return f"impossible range [{low}, {high}]: need 0 <= low < high {'< 1' if self.below_one else '<= 1'}"

    def centre(self, bounds) -> float | None:
        """The middle of a float range (a log range's geometric middle); None for choices."""
        if self.categorical:
            return None
        low, high = bounds
        return math.sqrt(low * high) if self.log else (low + high) / 2

    def suggest(self, trial, bounds) -> None:
        if self.categorical:
            trial.suggest_categorical(self.field, list(bounds))
        else:
            trial.suggest_float(self.field, *bounds, log=self.log)


def adamw(
    model: torch.nn.Module, hyperparameters: Hyperparameters, learning_rate: float, weight_decay: float
):
    """Every trainable weight in one AdamW group: the optimizer of every method without its own."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


def lora_factors(layer: torch.nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a LoRA layer's update B @ A, its scaling folded into B (rsLoRA's alpha / sqrt(r) too)."""
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight * layer.scaling[adapter]


def save_adapter(model, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    model.save_pretrained(directory)


def load_adapter(model_path: str, saved: Path, quantize_4bit: bool) -> PeftModel:
    from peft import PeftModel

    return PeftModel.from_pretrained(models.load_model(model_path, quantize_4bit=quantize_4bit), saved)


@dataclass(frozen=True)
class Method:
    name: str
    # The base model -> the model that trains: a PeftModel, or the base itself.
    wrap: Callable[[PreTrainedModel, Hyperparameters, BuildContext], torch.nn.Module]
    hyperparameters: type[Hyperparameters] = Hyperparameters
    # What the search varies for this method; the trial config names them `<method>.<field>`.
    dimensions: tuple[Dimension, ...] = ()
    quantize_4bit: bool = False
    # Called after each optimizer step, while gradients are still there (AdaLoRA needs them).
    after_optimizer_step: Callable[[object, int], None] | None = None
    # What the method carries from step to step beyond its trainable weights (AdaLoRA's rank
    # allocation): saved with each checkpoint, so that a resumed run continues exactly.
    training_state: Callable[[torch.nn.Module], dict] = lambda model: {}
    restore_training_state: Callable[[torch.nn.Module, dict], None] = lambda model, state: None
    # Problems with the hyperparameters that only this method has, given the run's length.
    problems: Callable[[Hyperparameters, int], list[str]] = lambda hyperparameters, total_steps: []
    # Problems with a sweep's search ranges (a mapping of search keys) that only this method has.
    search_problems: Callable[[Mapping[str, Any]], list[str]] = lambda ranges: []
    # Writes what the trial keeps into a directory; saved_files are what that directory holds.
    save: Callable[[torch.nn.Module, PreTrainedTokenizerBase, Path], None] = save_adapter
    saved_files: tuple[str, ...] = ADAPTER_FILES
    # (base model path, saved directory, 4-bit base) -> the trained model again, for scoring.
    load_trained: Callable[[str, Path, bool], torch.nn.Module] = load_adapter
    # The saved directory is a whole model: served as a model of its own, not as an adapter on the base.
    standalone: bool = False
    # Serving: its adapters on one base answer one batch together, each row its own adapter
    # (PEFT's mixed-adapter batches); otherwise each adapter's requests are a batch of their own.
    shares_mixed_batch: bool = False
    # Serving: the adapter config fields that adapters injected into one base together must share
    # (VeRA's projections are shared: same rank and seed); adapters that differ take turns.
    served_together_when_equal: tuple[str, ...] = ()
    # What it trains; the baseline (the untouched base model, k-shot) trains nothing.
    trains: bool = True
    # The optimizer over the wrapped model (LoRA+ gives B a larger learning rate than A).
    optimizer: Callable[[torch.nn.Module, Hyperparameters, float, float], torch.optim.Optimizer] = adamw
    # Export (serve/export.py). mergeable: its update merges into the base weights (merge_and_unload)
    # with the same outputs. lora_factors: each adapted layer's update as exact low-rank factors
    # (A, B), scaling folded in; None when the update is no plain LoRA (DoRA's magnitudes, IA3).
    mergeable: bool = True
    lora_factors: Callable[[torch.nn.Module, str], tuple[torch.Tensor, torch.Tensor]] | None = None
    # In the default sweep (for base models with fewer parameters than default_below_params, when
    # set); otherwise the method is opt-in through --methods.
    in_default_sweep: bool = True
    default_below_params: int | None = None
    # Serving: positions the saved adapter (its directory) puts in front of every prompt, which
    # count in the model's context beside the prompt and the answer (prompt tuning's virtual tokens).
    prompt_positions: Callable[[Path], int] = lambda saved: 0
    # Why the method cannot run on a model, from its skeleton (trainables.architecture), or None:
    # asked before any trial starts.
    refusal: Callable[[PreTrainedModel], str | None] = lambda model: None

    @property
    def export_forms(self) -> tuple[str, ...]:
        """What `python -m serve.export --to` can write of its winners."""
        return (
            *(["merged"] if self.mergeable and self.trains else []),
            *(["lora"] if self.lora_factors else []),
        )


def with_peft(peft_config: Callable[[Hyperparameters, BuildContext], PeftConfig]):
    """A PEFT method's wrap: the base with the adapter that peft_config describes."""

    def wrap(base: PreTrainedModel, hyperparameters: Hyperparameters, context: BuildContext) -> PeftModel:
        from peft import get_peft_model

        return get_peft_model(base, peft_config(hyperparameters, context))

    return wrap


# The learning rate of a weight adapter; methods whose steps differ by decades search their own.
ADAPTER_LEARNING_RATE = Dimension("learning_rate", "learning_rate", (1e-4, 1e-2), log=True)


def is_prompt_learning(model) -> bool:
    """Whether the model's active adapter puts virtual tokens in front of every input (prompt
    tuning): its rows share no prompt cache, and it decodes from embeddings (decoding.calls)."""
    peft_config = getattr(model, "active_peft_config", None)
    return peft_config is not None and peft_config.is_prompt_learning
