"""Search spaces: the method is a dimension, and each method brings its own hyperparameters.

Written define-by-run for Optuna, so a trial only samples the dimensions its method uses. Each
method's dimensions are named after it (lora.learning_rate, prompt_tuning.learning_rate), so they
are dimensions of their own for the sampler: TPE learns LoRA's learning rate from LoRA trials only,
rather than one distribution pooled over methods whose good regions lie decades apart. With
`group=True` it models each method's dimensions jointly, as the group of dimensions that occur
together. TrialConfig.parse maps the scoped names back to its fields.
"""

import warnings
from dataclasses import dataclass

import optuna
from pydantic import BaseModel

from trainables.methods import METHODS, scoped


@dataclass(frozen=True)
class MethodScope:
    """An Optuna trial as one method's dimensions see it: every name they suggest is scoped to the method."""

    trial: optuna.Trial
    method: str

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.trial.suggest_float(scoped(self.method, name), low, high, log=log)

    def suggest_categorical(self, name: str, choices: list):
        return self.trial.suggest_categorical(scoped(self.method, name), choices)


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
    ranges: BaseModel  # sweeps.settings.SearchRanges: a range per search key
    constants: dict

    def __call__(self, trial: optuna.Trial) -> dict:
        method = trial.suggest_categorical("method", self.methods)
        for dimension in METHODS[method].dimensions:
            dimension.suggest(MethodScope(trial, method), getattr(self.ranges, dimension.search_key))
        return self.constants


def first_points(methods: list[str], ranges: BaseModel) -> list[dict]:
    """One trial per method comes first, so every method is tried whatever TPE prefers later.

    It sits at the centre of the method's float ranges (a log range's geometric centre): drawn at
    random, a method's only early trial can land on a learning rate a decade too low, learn
    nothing by ASHA's first rung and be stopped, and the verdict then ranks the method on that
    draw. Its choices (rank, alpha, ...) stay TPE's random draws.
    """
    return [{"method": method, **centre_of_ranges(method, ranges)} for method in methods]


def centre_of_ranges(method: str, ranges: BaseModel) -> dict[str, float]:
    """The centre of each float dimension of the method, under its scoped name."""
    return {
        scoped(method, dimension.field): dimension.centre(getattr(ranges, dimension.search_key))
        for dimension in METHODS[method].dimensions
        if not dimension.categorical
    }
