"""--budget-usd: the search stops starting trials once the sweep's dollars would pass the budget.

A Searcher wrapper, in the way of Ray Tune's own ConcurrencyLimiter: Tune asks the search for each
new trial, and a searcher that answers Searcher.FINISHED ends the search while the running trials
run on to their end. That is the Tune-native place for "start no more": a Stopper can only stop
trials or, with stop_all, the whole experiment, running trials included, and a scheduler cannot
refuse a trial the searcher has already created.
"""

from ray.tune.search import Searcher

from sweeps.searchers import SearcherWrapper


class DollarBudget(SearcherWrapper):
    """Starts a trial only while spent + committed + the new trial's expected cost stay within the
    budget. Spent: what the sweep's earlier stages and trials cost (spent_before) plus what each
    trial of this search has reported. Committed: each running trial's cost per step so far times
    the steps it has left. A new (or not yet reported) trial is expected to cost what the trials so
    far cost per step, times a whole trial's steps. Early stopping makes that an over-estimate, so
    while trials run an over-budget search waits (their stopping may free the room) rather than
    ending; once none runs, it ends.
    """

    def __init__(self, searcher: Searcher, budget_usd: float, total_steps: int, spent_before: float = 0.0):
        super().__init__(searcher)
        self.budget_usd = budget_usd
        self.total_steps = total_steps
        self.spent_before = spent_before
        self.spent: dict[str, float] = {}  # trial id -> dollars it has reported so far
        self.steps: dict[str, int] = {}  # trial id -> steps it has reported so far
        self.running: set[str] = set()

    def cost_per_step(self) -> float:
        steps = sum(self.steps.values())
        return sum(self.spent[trial_id] for trial_id in self.steps) / steps if steps else 0.0

    def committed(self) -> float:
        """Expected dollars of the running trials' remaining steps."""
        return self.cost_per_step() * sum(
            max(self.total_steps - self.steps.get(trial_id, 0), 0) for trial_id in self.running
        )

    def total_spent(self) -> float:
        return self.spent_before + sum(self.spent.values())

    def affordable(self) -> bool:
        expected_new_trial = self.cost_per_step() * self.total_steps
        return self.total_spent() + self.committed() + expected_new_trial <= self.budget_usd

    def suggest(self, trial_id: str):
        if not self.affordable():
            return None if self.running else Searcher.FINISHED
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.running.add(trial_id)
        return suggestion

    def _record(self, trial_id: str, result: dict | None) -> None:
        if result and "cost_usd" in result:
            self.spent[trial_id] = result["cost_usd"]
            if result.get("step"):
                self.steps[trial_id] = result["step"]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._record(trial_id, result)
        self.running.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
