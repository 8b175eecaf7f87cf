"""What the verdict will need, measured while the search still runs, in slots it leaves free:
a trial's kept checkpoint as soon as the trial ends, and the baselines' test scores once the
search has started its last trial."""

import sys
from pathlib import Path

import polars as pl
from ray.tune import Callback
from ray.tune.experiment import Trial

from analysis import measurements
from trainables.evaluation import scoring
from trainables.methods import METHODS

WAITING = (Trial.PENDING, Trial.PAUSED)  # trials that still need a slot


class MeasureEndedTrials(Callback):
    """When a trial ends without its last evaluation having measured its kept checkpoint (ASHA
    stopped it, or its best evaluation came early), measures that checkpoint at once as a Ray task
    holding a trial's resources, rather than after the search. The task waits for a free slot:
    chiefly the tail of the search, where its last trials run alone and the other slots idle.

    That tail also scores the completed baselines on the test split, which every verdict compares
    its winners with: once all `planned` trials exist and none waits for a slot, no trial can lose
    one to them (earlier, they would only delay the search's trials). The k-shot prompt, the
    longest to score, goes first.

    Each result is kept where the verdict looks for it (trainables.evaluation.scoring), under the checkpoint's
    name, so the verdict computes only what is missing, and again a checkpoint that Tune has since
    replaced. The search does not wait for the jobs still running when it ends: they stay in
    flight in `workers`, which the sweep's verdict shares and waits for, so that the verdict's
    own scoring starts in whichever slot frees first."""

    def __init__(self, workers: scoring.ScoringPool, planned: int):
        self.workers, self.planned = workers, planned
        self._completed_baselines: list[Trial] = []  # scored on test in the search's tail

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not METHODS[trial.config["method"]].trains:
            if trial.last_result.get("status") == "completed":
                self._completed_baselines.append(trial)
            return
        results = Path(trial.local_path) / "result.json"  # Tune's logger writes it there first
        try:
            measurement = (
                measurements.ended_trial_measurement(Path(trial.path), results) if results.is_file() else None
            )
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as error:
            # An unreadable file must not end the sweep: the verdict measures the trial after the search.
            print(f"measuring {Path(trial.path).name} early: {error}", file=sys.stderr)
            return
        if measurement is not None:
            self.workers.start(measurement)

    def on_step_begin(self, iteration, trials, **info):
        self.workers.keep_finished()
        if self._completed_baselines and self._in_tail(trials):
            by_shots = sorted(self._completed_baselines, key=lambda t: -t.config.get("shots", 0))
            for baseline in by_shots:
                if (job := scoring.baseline_test_scoring(Path(baseline.path))) is not None:
                    self.workers.start(job)
            self._completed_baselines = []

    def on_experiment_end(self, trials, **info):
        self.workers.keep_finished()

    def _in_tail(self, trials: list[Trial]) -> bool:
        return len(trials) >= self.planned and not any(trial.status in WAITING for trial in trials)
