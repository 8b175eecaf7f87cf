"""The search keeps methods apart: real Optuna, the sweep's own sampler and space, no training."""

import math
import statistics

import optuna
import pytest

from sweeps.settings import SearchRanges
from sweeps.spaces import DefineByRun, first_points, sampler
from trainables.config import ConfigError
from trainables.methods import hyperparameter_names
from trainables.registries import trial_config

# A synthetic objective whose best learning rate lies two decades apart for the two methods.
BEST_LEARNING_RATE = {"lora": 3e-4, "prompt_tuning": 5e-2}
TRIALS = 100
LAST = 10
# Log-uniform draws over [1e-5, 1] have their median at 3e-3, a decade from either best.
WITHIN_DECADES = 0.75


def _suggested_learning_rates(study_sampler: optuna.samplers.BaseSampler) -> dict[str, list[float]]:
    # Both methods get the same wide range, so only what the sampler learnt can tell them apart.
    ranges = SearchRanges(learning_rate=(1e-5, 1.0), prompt_tuning_learning_rate=(1e-5, 1.0))
    space = DefineByRun(list(BEST_LEARNING_RATE), ranges, {})
    study = optuna.create_study(direction="maximize", sampler=study_sampler)
    suggested = {method: [] for method in BEST_LEARNING_RATE}
    for number in range(TRIALS):
        # Alternate the methods, as the sweep's first points fix one trial per method.
        study.enqueue_trial({"method": list(BEST_LEARNING_RATE)[number % 2]})
        trial = study.ask()
        space(trial)
        method = trial.params["method"]
        learning_rate = trial.params[f"{method}.learning_rate"]
        suggested[method].append(learning_rate)
        study.tell(trial, -abs(math.log10(learning_rate / BEST_LEARNING_RATE[method])))
    return suggested


def _decades_off(suggested: dict[str, list[float]]) -> dict[str, float]:
    return {
        method: abs(math.log10(statistics.median(rates[-LAST:]) / BEST_LEARNING_RATE[method]))
        for method, rates in suggested.items()
    }


def test_each_methods_suggestions_concentrate_in_its_own_region():
    off = _decades_off(_suggested_learning_rates(sampler(seed=0)))
    assert all(decades < WITHIN_DECADES for decades in off.values()), off


def test_without_learning_the_suggestions_do_not_concentrate():
    """The check above can fail: random search, same seed, misses at least one method's region."""
    off = _decades_off(_suggested_learning_rates(optuna.samplers.RandomSampler(seed=0)))
    assert any(decades >= WITHIN_DECADES for decades in off.values()), off


def test_scoped_names_cover_every_dimension_and_map_back_to_the_config():
    names = hyperparameter_names()
    assert {
        "lora.learning_rate",
        "prompt_tuning.learning_rate",
        "adalora.target_rank",
        "full.learning_rate",
    } <= set(names)
    assert "learning_rate" not in names and len(names) == len(set(names))
    config = trial_config({"task": "qg", "method": "lora", "lora.learning_rate": 0.003, "lora.rank": 4})
    assert config.learning_rate == 0.003 and config.hyperparameters.rank == 4
    # Another method's option is not this trial's; a scope that names no method is refused.
    assert (
        trial_config({"task": "qg", "method": "lora", "prompt_tuning.learning_rate": 0.1}).learning_rate
        == 2e-4
    )
    with pytest.raises(ConfigError, match=r"lorra\.learning_rate: unknown option"):
        trial_config({"task": "qg", "method": "lora", "lorra.learning_rate": 0.1})


def test_each_methods_first_trial_sits_at_the_centre_of_its_float_ranges():
    methods, ranges = ["lora", "prompt_tuning", "full"], SearchRanges()
    study = optuna.create_study(direction="maximize", sampler=sampler(seed=0))
    for point in first_points(methods, ranges):
        study.enqueue_trial(point)
    trials = [study.ask() for _ in methods]
    for trial in trials:
        DefineByRun(methods, ranges, {})(trial)
    lora, prompt_tuning, full = (trial.params for trial in trials)
    assert [lora["method"], prompt_tuning["method"], full["method"]] == methods
    assert lora["lora.learning_rate"] == pytest.approx(1e-3)  # the geometric centre of 1e-4 to 1e-2
    assert lora["lora.dropout"] == pytest.approx(0.1)
    assert lora["lora.rank"] in (4, 8, 16)  # a choice: drawn, not set
    assert prompt_tuning["prompt_tuning.learning_rate"] == pytest.approx(1e-2)
    assert full == {"method": "full", "full.learning_rate": pytest.approx(1e-4)}
