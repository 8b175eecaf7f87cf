"""The sweep's quiet terminal: one line per finished trial and, on a terminal, one live status line
(trials done, running, stopped early and failed; the best quality so far and its method; the
sweep's dollars spent, of its budget when it has one; elapsed time and an estimate of the time left) in place of Tune's tables (--verbose)."""

import math
import sys
import time

from ray import tune

from trainables.terminal import CLEAR_LINE, fitted

REDRAW_EVERY_S = 1.0


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def outcome(result: dict) -> str:
    """A trial Tune ended says what it came to; one that had not finished was stopped by ASHA or by
    the time budget."""
    return {"completed": "completed", "failed": "failed"}.get(result.get("status"), "stopped early")


class SweepProgress(tune.Callback):
    """Ray Tune callback for one stage of the sweep (search with its baselines, extensions, finalists)."""

    # Tune pickles its callbacks with the experiment (to resume it): plain values only, no stream,
    # and wall-clock time, which a resumed sweep can still subtract from.
    def __init__(self, stage: str, planned: int, budget_usd: float | None = None, spent_before: float = 0.0):
        self.stage = stage
        self.planned = planned
        self.budget_usd = budget_usd  # --budget-usd, shown beside the sweep's running total
        self.spent_before = spent_before  # what the sweep's earlier stages and trials cost
        self.started = time.time()
        self.last_drawn = 0.0
        self.outcomes: dict[str, str] = {}  # trial id -> completed, stopped early, failed
        self.spent: dict[str, float] = {}  # trial id -> dollars so far (each result has its running total)
        self.best: tuple[float, str] | None = None  # quality, method

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.spent[trial.trial_id] = result.get("cost_usd", 0.0)
        quality = result.get("quality")
        if quality is not None and math.isfinite(quality) and (self.best is None or quality > self.best[0]):
            self.best = (quality, result["method"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result
        self.outcomes[trial.trial_id] = outcome(result)
        if outcome(result) == "failed":
            detail = result.get("error", "")
        else:
            at_step = f" at step {result['step']}" if "step" in result else ""
            detail = f"quality {result['quality']:.3f}{at_step}, ${result.get('cost_usd', 0.0):.4f}"
        self._finished(f"{trial.trial_id} {result.get('method', '')}: {outcome(result)}, {detail}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.outcomes[trial.trial_id] = "failed"
        self._finished(f"{trial.trial_id}: failed, Tune's error file {trial.error_file}")

    @property
    def live(self) -> bool:
        """A terminal gets the status line redrawn in place; a log file only the finished trials."""
        return sys.stdout.isatty()

    def on_step_end(self, iteration, trials, **info):
        if self.live and time.time() - self.last_drawn >= REDRAW_EVERY_S:
            self._write(CLEAR_LINE + fitted(self.status(trials)), end="")

    def on_experiment_end(self, trials, **info):
        self._write(CLEAR_LINE + self.status(trials) if self.live else self.status(trials))

    def status(self, trials) -> str:
        done = len(self.outcomes)
        outcomes = list(self.outcomes.values())
        counts = ", ".join(f"{outcomes.count(name)} {name}" for name in ("stopped early", "failed"))
        running = sum(1 for trial in trials if trial.status == "RUNNING")
        elapsed = time.time() - self.started
        best = f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "no evaluation yet"
        left = (
            f", about {duration(elapsed / done * (self.planned - done))} left"
            if 0 < done < self.planned
            else ""
        )
        return (
            f"[{self.stage}] {done}/{self.planned} trials done ({counts}), {running} running | {best} | "
            f"{self.dollars()} | {duration(elapsed)}{left}"
        )

    def dollars(self) -> str:
        """The sweep's running total, of its budget when it has one."""
        total = self.spent_before + sum(self.spent.values())
        return f"${total:.4f}" + (f" of ${self.budget_usd:g} budget" if self.budget_usd is not None else "")

    def _finished(self, line: str) -> None:
        self._write(f"{CLEAR_LINE if self.live else ''}[{self.stage}] trial {line}")
        self.last_drawn = 0.0  # the status line was just wiped: redraw it under this one at the next step

    def _write(self, text: str, end: str = "\n") -> None:
        print(text, end=end, flush=True)
        self.last_drawn = time.time()
