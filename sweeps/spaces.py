"""Search spaces: the method is a dimension, and each method brings its own hyperparameters.

Written define-by-run for Optuna, so a trial only samples the dimensions its method uses. Each
method's dimensions are named after it (lora.learning_rate, prompt_tuning.learning_rate), so they
are dimensions of their own for the sampler: TPE learns LoRA's learning rate from LoRA trials only,
rather than one distribution pooled over methods whose good regions lie decades apart. With
`group=True` it models each method's dimensions jointly, as the group of dimensions that occur
together. TrialConfig.parse maps the scoped names back to its fields.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from sweeps.settings import SearchRanges
from trainables.config import METHOD_SCOPE


def _shared(trial: "MethodScope", ranges: SearchRanges) -> None:
    trial.suggest_float("learning_rate", *ranges.learning_rate, log=True)
    trial.suggest_float("dropout", *ranges.dropout)


def _lora_family(trial: "MethodScope", ranges: SearchRanges) -> None:
    _shared(trial, ranges)
    trial.suggest_categorical("rank", ranges.ranks)
    trial.suggest_categorical("alpha", ranges.alphas)


def _adalora(trial: "MethodScope", ranges: SearchRanges) -> None:
    _lora_family(trial, ranges)
    trial.suggest_categorical("target_rank", ranges.adalora_target_ranks)


def _prompt_tuning(trial: "MethodScope", ranges: SearchRanges) -> None:
    # Soft prompts need far larger steps than weight adapters.
    trial.suggest_float("learning_rate", *ranges.prompt_tuning_learning_rate, log=True)
    trial.suggest_float("dropout", *ranges.dropout)
    trial.suggest_categorical("num_virtual_tokens", ranges.virtual_tokens)


def _full(trial: "MethodScope", ranges: SearchRanges) -> None:
    # Every weight trains: steps far smaller than an adapter's; no adapter, so no adapter dropout.
    trial.suggest_float("learning_rate", *ranges.full_learning_rate, log=True)


# Each method's own dimensions; a new method adds one entry here.
DIMENSIONS: dict[str, Callable[["MethodScope", SearchRanges], None]] = {
    "qlora": _lora_family,
    "lora": _lora_family,
    "adalora": _adalora,
    "ia3": _shared,
    "prompt_tuning": _prompt_tuning,
    "full": _full,
}


def scoped(method: str, name: str) -> str:
    return f"{method}{METHOD_SCOPE}{name}"


@dataclass(frozen=True)
class MethodScope:
    """An Optuna trial as one method's dimensions see it: every name they suggest is scoped to the method."""

    trial: optuna.Trial
    method: str

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.trial.suggest_float(scoped(self.method, name), low, high, log=log)

    def suggest_categorical(self, name: str, choices: list):
        return self.trial.suggest_categorical(scoped(self.method, name), choices)


@dataclass
class _NameRecorder:
    """Stands in for an Optuna trial to read off the names a method's dimensions use, sampling nothing."""

    names: list[str] = field(default_factory=list)

    def suggest_float(self, name: str, *args, **kwargs) -> None:
        self.names.append(name)

    suggest_categorical = suggest_float


def hyperparameter_names(methods: list[str] | None = None) -> list[str]:
    """The scoped names of every dimension of the methods (all of them by default), in order."""
    recorder = _NameRecorder()
    for method in methods or DIMENSIONS:
        DIMENSIONS[method](MethodScope(recorder, method), SearchRanges())
    return recorder.names


def sampler(seed: int) -> optuna.samplers.TPESampler:
    """TPE over each method's own dimensions, jointly (multivariate) within each group that occurs
    together (group), seeded for a reproducible search."""
    with warnings.catch_warnings():
        # `group` is marked experimental since Optuna 2.8; it is what keeps the methods' groups apart.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed)


@dataclass(frozen=True)
class DefineByRun:
    """The space Optuna samples; an object, not a closure, because Tune pickles the searcher."""

    methods: list[str]
    ranges: SearchRanges
    constants: dict

    def __call__(self, trial: optuna.Trial) -> dict:
        method = trial.suggest_categorical("method", self.methods)
        DIMENSIONS[method](MethodScope(trial, method), self.ranges)
        return self.constants


def first_points(methods: list[str]) -> list[dict]:
    """One trial per method comes first, so every method is tried whatever TPE prefers later."""
    return [{"method": method} for method in methods]
