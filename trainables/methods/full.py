"""Full fine-tuning: every weight trains. The reference the parameter-efficient methods are measured against."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trainables import models
from trainables.methods.base import MODEL_FILES, BuildContext, Dimension, Hyperparameters, Method

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _train_every_weight(
    base: PreTrainedModel, hyperparameters: Hyperparameters, context: BuildContext
) -> PreTrainedModel:
    return base.requires_grad_(True)


def _save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """A standalone model directory: AutoModelForCausalLM and AutoTokenizer load it as they are."""
    model.save_pretrained(directory, max_shard_size="1000GB")  # one file, as MODEL_FILES names
    tokenizer.save_pretrained(directory)


def _load_model(model_path: str, saved: Path, quantize_4bit: bool) -> PreTrainedModel:
    return models.load_model(str(saved), safetensors_only=True)


METHOD = Method(
    "full",
    _train_every_weight,
    # Every weight moves: steps far smaller than an adapter's; no adapter, so no adapter dropout.
    dimensions=(Dimension("learning_rate", "full_learning_rate", (1e-5, 1e-3), log=True),),
    save=_save_model,
    saved_files=MODEL_FILES,
    load_trained=_load_model,
    standalone=True,
    # Weights, gradients and AdamW's two moments: too much to try by default on a large model.
    default_below_params=1_000_000_000,
)
