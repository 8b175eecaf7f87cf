"""Sweep overhead: the share of wall time x concurrency not spent training or evaluating in trials.

python bench/sweep_overhead.py [sweep options...]   (default: the default qg sweep)

Runs `python -m sweeps.run` as a user would, times it, then adds up the time each trial spent
in its training loop and its evaluations (from the trial records). Ray Tune's own design target
is an overhead of at most 20%.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from analysis import load
from sweeps import results


def main() -> None:
    sweep_args = sys.argv[1:] or ["qg"]
    storage = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    concurrency = (
        int(sweep_args[sweep_args.index("--concurrency") + 1]) if "--concurrency" in sweep_args else 2
    )
    command = [sys.executable, "-m", "sweeps.run", *sweep_args, "--storage", str(storage), "--name", "bench"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    trials = load.trials(storage / sweep_args[0] / "bench")
    inside = trials.select(
        (pl.col("train_time_s").fill_null(0) + pl.col("eval_time_s").fill_null(0)).sum()
    ).item()
    capacity = wall * concurrency
    print(
        f"sweep {' '.join(sweep_args)}: {len(trials)} trials, wall {wall:.0f} s x concurrency {concurrency} "
        f"= {capacity:.0f} trial-seconds; inside training + evaluation {inside:.0f} s; "
        f"overhead {1 - inside / capacity:.1%} (Ray Tune's target: <= 20%)"
    )
    print(results.summary(trials))


if __name__ == "__main__":
    main()
