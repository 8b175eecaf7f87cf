"""A trial's kept checkpoint measured as soon as the trial ends, in a slot the search leaves free."""

import sys
from pathlib import Path

import polars as pl
import ray
from ray.tune import Callback

from analysis import rescore


class MeasureEndedTrials(Callback):
    """When a trial ends without its last evaluation having measured its kept checkpoint (ASHA
    stopped it, or its best evaluation came early), measures that checkpoint at once as a Ray task
    holding a trial's resources, rather than after the search. The task waits for a free slot:
    chiefly the tail of the search, where its last trials run alone and the other slots idle. The
    result is kept where the verdict looks for it (analysis.rescore) under the checkpoint's name,
    so the verdict measures only what is missing, and again a checkpoint that Tune has since
    replaced."""

    def __init__(self, workers: rescore.Workers):
        self.workers = workers
        self._pending: dict = {}  # the task's ObjectRef -> the measurement it computes

    def on_trial_complete(self, iteration, trials, trial, **info):
        results = Path(trial.local_path) / "result.json"  # Tune's logger writes it there first
        try:
            measurement = (
                rescore.ended_trial_measurement(Path(trial.path), results) if results.is_file() else None
            )
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as error:
            # An unreadable file must not end the sweep: the verdict measures the trial after the search.
            print(f"measuring {Path(trial.path).name} early: {error}", file=sys.stderr)
            return
        if measurement is not None:
            self._pending[self.workers.submit(measurement.compute)] = measurement

    def on_step_begin(self, iteration, trials, **info):
        self._keep_finished(timeout=0)

    def on_experiment_end(self, trials, **info):
        self._keep_finished(timeout=None)

    def _keep_finished(self, timeout: float | None) -> None:
        if not self._pending:
            return
        finished, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout)
        for reference in finished:
            measurement = self._pending.pop(reference)
            try:
                measurement.keep(ray.get(reference))
            except ray.exceptions.RayError as error:  # not fatal: the verdict measures it after the search
                print(f"measuring {measurement.path.parent.name} early failed: {error}", file=sys.stderr)
