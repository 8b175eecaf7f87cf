"""--budget-usd: the real OptunaSearch behind the DollarBudget wrapper, fed hand-made results."""

import optuna
import pytest
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.budget import DollarBudget


def _budget(budget_usd: float = 1.0, spent_before: float = 0.2) -> DollarBudget:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="quality", mode="max"
    )
    return DollarBudget(ConcurrencyLimiter(searcher, max_concurrent=4), budget_usd, 10, spent_before)


def _result(cost: float, step: int) -> dict:
    return {"cost_usd": cost, "step": step, "quality": 0.5, "training_iteration": 1}


def test_no_trial_starts_past_the_budget_and_the_search_ends_once_none_runs():
    budget = _budget()
    assert "x" in budget.suggest("t1")  # nothing known of the cost yet
    budget.on_trial_result("t1", _result(0.1, 2))  # $0.05 a step: t1 is committed to 8 more ($0.40)
    # 0.2 before + 0.1 spent + 0.4 committed + 0.5 for a new 10-step trial > $1: wait for t1.
    assert budget.suggest("t2") is None
    budget.on_trial_complete("t1", _result(0.15, 3))  # stopped early at step 3: nothing committed
    assert "x" in budget.suggest("t3")  # 0.2 + 0.15 + 0.5 <= 1
    budget.on_trial_complete("t3", _result(0.5, 10))
    assert budget.total_spent() == pytest.approx(0.85)
    assert budget.suggest("t4") == Searcher.FINISHED  # 0.85 + 0.5 > 1, and no trial runs


def test_the_budget_is_kept_with_tunes_searcher_state():
    budget = _budget()
    budget.suggest("t1")
    budget.on_trial_result("t1", _result(0.1, 2))
    restored = _budget()
    restored.set_state(budget.get_state())
    assert restored.running == {"t1"} and restored.total_spent() == budget.total_spent()
    assert restored.suggest("t2") is None
