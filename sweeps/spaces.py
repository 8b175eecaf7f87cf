"""Search spaces: the method is a dimension, and each method brings its own hyperparameters.

Written define-by-run for Optuna, so a trial only samples the dimensions its method uses and
TPE learns each method's region separately.
"""

from collections.abc import Callable
from dataclasses import dataclass

import optuna

from sweeps.settings import SearchRanges


def _shared(trial: optuna.Trial, ranges: SearchRanges) -> None:
    trial.suggest_float("learning_rate", *ranges.learning_rate, log=True)
    trial.suggest_float("dropout", *ranges.dropout)


def _lora_family(trial: optuna.Trial, ranges: SearchRanges) -> None:
    _shared(trial, ranges)
    trial.suggest_categorical("rank", ranges.ranks)
    trial.suggest_categorical("alpha", ranges.alphas)


def _adalora(trial: optuna.Trial, ranges: SearchRanges) -> None:
    _lora_family(trial, ranges)
    trial.suggest_categorical("target_rank", ranges.adalora_target_ranks)


def _prompt_tuning(trial: optuna.Trial, ranges: SearchRanges) -> None:
    # Soft prompts need far larger steps than weight adapters.
    trial.suggest_float("learning_rate", *ranges.prompt_tuning_learning_rate, log=True)
    trial.suggest_float("dropout", *ranges.dropout)
    trial.suggest_categorical("num_virtual_tokens", ranges.virtual_tokens)


# Each method's own dimensions; a new method adds one entry here.
DIMENSIONS: dict[str, Callable[[optuna.Trial, SearchRanges], None]] = {
    "qlora": _lora_family,
    "lora": _lora_family,
    "adalora": _adalora,
    "ia3": _shared,
    "prompt_tuning": _prompt_tuning,
}


@dataclass(frozen=True)
class DefineByRun:
    """The space Optuna samples; an object, not a closure, because Tune pickles the searcher."""

    methods: list[str]
    ranges: SearchRanges
    constants: dict

    def __call__(self, trial: optuna.Trial) -> dict:
        DIMENSIONS[trial.suggest_categorical("method", self.methods)](trial, self.ranges)
        return self.constants


def first_points(methods: list[str]) -> list[dict]:
    """One trial per method comes first, so every method is tried whatever TPE prefers later."""
    return [{"method": method} for method in methods]
