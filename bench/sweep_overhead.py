"""Sweep overhead: the share of wall time x concurrency not spent training or evaluating.

python bench/sweep_overhead.py [sweep options...]   (default: the default qg sweep)

Runs `python -m sweeps.run` as a user would, times it, then adds up the time each trial spent
in its training loop and its evaluations (from the trial records), the time the verdict's scoring
spent evaluating kept checkpoints and test candidates (each result's own clock, its model's
loading not counted), and where the rest went. Ray Tune's own design target is an overhead of at
most 20%. Prints `evaluation_share: <share>` (of the trained trials' own wall time) and, last,
`sweep_overhead: <share>`.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from analysis import load
from sweeps import results, run
from trainables.evaluation import scoring
from trainables.methods import BASELINE


def sweep_arguments(argv: list[str]) -> list[str]:
    """The task first (qg when none is named), then the sweep's options."""
    return argv if argv and not argv[0].startswith("-") else ["qg", *argv]


def timed_sweep(arguments: list[str], storage: Path) -> tuple[float, Path]:
    """Runs `python -m sweeps.run` as a user would, its output on this terminal: (wall s, sweep dir)."""
    command = [sys.executable, "-m", "sweeps.run", *arguments, "--storage", str(storage), "--name", "bench"]
    print("sweep:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started, next(storage.glob("*/bench"))


def print_overhead(sweep_dir: Path, wall: float, concurrency: int) -> float:
    """Prints where the sweep's trial-seconds went and the evaluation share; returns the overhead."""
    trials = load.trials(sweep_dir)
    trained = pl.col("method") != BASELINE
    totals = trials.select(
        pl.col("train_time_s").fill_null(0).sum().alias("train"),
        pl.col("eval_time_s").fill_null(0).sum().alias("eval"),
        pl.col("wall_time_s").fill_null(0).sum().alias("trial_wall"),
        pl.col("eval_time_s").filter(trained).fill_null(0).sum().alias("trained_eval"),
        pl.col("wall_time_s").filter(trained).fill_null(0).sum().alias("trained_wall"),
    ).row(0, named=True)
    in_trials = totals["train"] + totals["eval"]
    verdict = scoring.evaluation_seconds(sweep_dir)
    capacity = wall * concurrency
    print(
        f"{len(trials)} trials, wall {wall:.0f} s x concurrency {concurrency} = {capacity:.0f} trial-seconds: "
        f"in trials, training {totals['train']:.0f} s + evaluating {totals['eval']:.0f} s; in trials around "
        f"them (loading, tokenizing, checkpoints) {totals['trial_wall'] - in_trials:.0f} s; the verdict's "
        f"scoring, evaluating {verdict:.0f} s; the rest (Ray, worker start-up, phase gaps, the verdict's "
        f"model loading, the report, idle slots) {capacity - totals['trial_wall'] - verdict:.0f} s"
    )
    print(f"evaluation_share: {totals['trained_eval'] / max(totals['trained_wall'], 1e-9):.3f}")
    print(f"overhead if the verdict's scoring counted as overhead: {1 - in_trials / capacity:.3f}")
    overhead = 1 - (in_trials + verdict) / capacity
    print(f"sweep_overhead: {overhead:.3f}")
    return overhead


def main() -> None:
    arguments = sweep_arguments(sys.argv[1:])
    settings = run.settings_of(run.parser().parse_args(arguments))
    wall, sweep_dir = timed_sweep(arguments, Path(tempfile.mkdtemp(prefix="sweep-overhead-")))
    print(results.summary(load.trials(sweep_dir)))
    print_overhead(sweep_dir, wall, settings.concurrency)


if __name__ == "__main__":
    main()
