"""Searcher wrappers, in the way of Ray Tune's own ConcurrencyLimiter: each passes the searcher it
wraps what concerns it and changes what Tune gets from the search.

- BaselinesFirst: the untouched base model's trials (zero- and k-shot) come first, in the search's
  own Tuner.
- sweeps.budget.DollarBudget: no trial starts past the dollar budget.
"""

import copy

from ray.tune.search import Searcher


class SearcherWrapper(Searcher):
    """Passes everything to `searcher`; subclasses change what they must."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def suggest(self, trial_id: str):
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    # Tune saves a wrapper's state apart from the searcher it wraps (SearchGenerator.save_to_dir).
    def get_state(self) -> dict:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class BaselinesFirst(SearcherWrapper):
    """Hands out the baselines' configs before the search's own trials.

    Run in the search's Tuner, the baselines take no phase of their own: no second set of trial
    workers to start (each imports torch, transformers and peft), no gap between two phases, and
    the slot of the baseline that ends first goes straight to a search trial. They never reach the
    searcher (they are no point of its space), and they report no evaluation count, which is what
    ASHA and the Pareto scheduler measure a trial's progress in (trial.EVALUATIONS): neither
    compares nor stops them.
    """

    def __init__(self, searcher: Searcher, baselines: list[dict]):
        super().__init__(searcher)
        self.waiting = list(baselines)  # configs not handed out yet, in order
        self.baseline_ids: set[str] = set()

    def suggest(self, trial_id: str):
        if self.waiting:
            self.baseline_ids.add(trial_id)
            return self.waiting.pop(0)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.baseline_ids:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.baseline_ids:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
