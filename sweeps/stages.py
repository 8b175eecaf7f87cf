"""The stages after the search that train chosen configurations again, to the whole budget:

- the equal-budget comparison (--compare-methods, on by default): each method's best configuration
  on the search's evidence, with every seed the sweep asks for, so that the verdict compares
  methods that trained as long (analysis.equal_budget);
- the finalists (--finalist-seeds K): the winners with K-1 more seeds, ranked on their mean.

A run that the sweep already has (a search trial that completed the budget, or the other stage's
run of the same configuration and seed) is not trained again.
"""

import polars as pl

from analysis import rank, report
from trainables.record import read_record


def completed_runs(frame: pl.DataFrame) -> set[tuple[str, int]]:
    """(configuration without its seed, seed) of every run that trained the whole budget."""
    done = frame.filter(pl.col("status") == "completed").select("config_without_seed", "seed")
    return set(done.iter_rows())


def missing_runs(frame: pl.DataFrame, chosen: pl.DataFrame, seeds: range) -> list[dict]:
    """The config of each chosen trial at each seed, unless a run of it completed already."""
    done = completed_runs(frame)
    return [
        read_record(row["trial_dir"])["config"] | {"seed": seed}
        for row in chosen.iter_rows(named=True)
        for seed in seeds
        if (row["config_without_seed"], seed) not in done
    ]


def comparison_configs(frame: pl.DataFrame, first_seed: int, seeds: int) -> list[dict]:
    """Each method's best configuration at seeds first_seed.. first_seed + seeds - 1."""
    return missing_runs(frame, rank.best_configurations(frame), range(first_seed, first_seed + seeds))


def finalist_configs(frame: pl.DataFrame, winners: int, first_seed: int, seeds: int) -> list[dict]:
    """The winners (report.chosen_winners, default weights), each with the seeds after the sweep's
    own: same hyperparameters, another initialisation and data order."""
    board = rank.leaderboard(rank.across_seeds(frame), rank.parse_weights(""))
    chosen = report.chosen_winners(board, winners)
    return missing_runs(frame, chosen, range(first_seed + 1, first_seed + seeds))
