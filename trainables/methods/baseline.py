"""The baseline: the untouched base model, evaluated zero- or k-shot (the trial's `shots` examples
from the train split in front of each prompt). It trains nothing and keeps no checkpoint, so it
ranks beside the trained methods as their reference, and is never a candidate or a winner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.methods.base import BuildContext, Hyperparameters, Method

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _untouched(
    base: PreTrainedModel, hyperparameters: Hyperparameters, context: BuildContext
) -> PreTrainedModel:
    return base


METHOD = Method("base", _untouched, trains=False, saved_files=(), mergeable=False, in_default_sweep=False)
