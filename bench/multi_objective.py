"""Pareto-aware successive halving against scalar ASHA: the quality-cost front each search reaches.

python bench/multi_objective.py [--seeds 2] [--samples 8] [--max-steps 80] [-- more sweep options]

For each seed, runs the same sweep twice with `python -m sweeps.run qg --objectives quality,cost`
(the same multi-objective TPE sampler, the same seed, the same number of trials and steps per
trial), once with --scheduler asha (which stops trials on quality alone) and once with --scheduler
pareto (sweeps/schedulers.py). Each evaluation of a trained trial is a point (quality on the
evaluation rows, dollars spent to reach it); the hypervolume of a search's points is the area they
dominate up to a reference point shared by every run (quality 0, 1.1 x the dearest point seen), so
runs compare on one scale. Prints, per scheduler, the mean hypervolume over the seeds and the
trial-steps spent (steps trained, over every trial) to reach it; last, the ratio
`pareto_scheduler_hypervolume_ratio: <pareto / scalar>`.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from analysis import load, rank

SCHEDULERS = ("asha", "pareto")
# More evaluations than the default (every 20 steps) give successive halving rungs to stop trials at.
TRIAL_OPTIONS = "trial:\n  eval_every: 10\n  eval_examples: 16\n"


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (quality up, cost down) points, bounded by reference (quality, cost)."""
    quality_floor, cost_ceiling = reference
    kept = sorted(
        (cost, quality) for quality, cost in points if quality > quality_floor and cost < cost_ceiling
    )
    if not kept:
        return 0.0
    area, best = 0.0, quality_floor
    next_costs = [cost for cost, _ in kept[1:]] + [cost_ceiling]
    for (cost, quality), next_cost in zip(kept, next_costs, strict=True):
        best = max(best, quality)
        area += (next_cost - cost) * (best - quality_floor)
    return area


def run_sweep(scheduler: str, seed: int, args: argparse.Namespace, storage: Path, extra: list[str]) -> Path:
    name = f"{scheduler}-seed{seed}"
    config = storage / "bench.yaml"
    config.write_text(TRIAL_OPTIONS)
    command = [
        sys.executable, "-m", "sweeps.run", "qg", "--objectives", "quality,cost", "--scheduler", scheduler,
        "--seed", str(seed), "--samples", str(args.samples), "--max-steps", str(args.max_steps),
        "--concurrency", str(args.concurrency), "--config", str(config), "--storage", str(storage),
        "--name", name, *extra,
    ]  # fmt: skip
    print("sweep:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return storage / "qg" / name


def evaluations(sweep_dir: Path) -> pl.DataFrame:
    """Every evaluation of the search's trained trials: quality, cost so far, and step."""
    return load.curves(sweep_dir).filter(rank.is_trained() & pl.col("quality").is_not_null())


def trial_steps(points: pl.DataFrame) -> int:
    return int(points.group_by("trial_dir").agg(pl.col("step").max())["step"].sum())


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--seeds", type=int, default=2)
    cli.add_argument("--samples", type=int, default=8, help="trials per search")
    cli.add_argument("--max-steps", type=int, default=80)
    cli.add_argument("--concurrency", type=int, default=2)
    args, extra = cli.parse_known_args()
    extra = [option for option in extra if option != "--"]
    storage = Path(tempfile.mkdtemp(prefix="multi-objective-"))
    runs = {
        (scheduler, seed): evaluations(run_sweep(scheduler, seed, args, storage, extra))
        for seed in range(args.seeds)
        for scheduler in SCHEDULERS
    }
    dearest = max(points["cost_usd"].max() for points in runs.values())
    reference = (0.0, 1.1 * dearest)
    volumes = {
        key: hypervolume(points.select("quality", "cost_usd").rows(), reference)
        for key, points in runs.items()
    }
    means = {}
    for scheduler in SCHEDULERS:
        seeds = range(args.seeds)
        means[scheduler] = statistics.mean(volumes[scheduler, seed] for seed in seeds)
        steps = statistics.mean(trial_steps(runs[scheduler, seed]) for seed in seeds)
        each = ", ".join(f"{volumes[scheduler, seed]:.3g}" for seed in seeds)
        print(
            f"{scheduler}: hypervolume {means[scheduler]:.4g} (quality x $, reference {reference[1]:.3g} $) "
            f"after {steps:.0f} trial-steps, mean of {args.seeds} seeds ({each})"
        )
    print(f"seeds: {args.seeds}, trials per search: {args.samples}")
    ratio = means["pareto"] / means["asha"] if means["asha"] > 0 else float("nan")  # no front: no ratio
    print(f"pareto_scheduler_hypervolume_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
