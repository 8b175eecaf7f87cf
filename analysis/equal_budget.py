"""Methods at equal budget: the comparison between methods that the verdict makes, and its table.

Early stopping is right for the search and wrong for a comparison: a method that ASHA stopped after
a quarter of the budget has shown only its first quarter. So each method is represented by its best
configuration on the search's evidence (rank.best_configurations), through the runs of that
configuration that trained the whole budget, one per seed (the sweep's comparison stage trains
them, sweeps.stages). Where there are none (the stage was skipped, or its runs failed), the
configuration's own search run stands in, and every comparison it takes part in says that the
budgets differ instead of calling a difference real.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis import rank, verdict
from analysis.layout import COMPARISON_DIR

# What the table shows of each run beside the task's own metrics: measured on the kept checkpoint
# (speed on validation prompts), or what producing it took.
RUN_COLUMNS = ("tokens_per_s", "latency_s", "train_time_s", "cost_usd", "trainable_params", "adapter_bytes",
               "peak_memory_mb")  # fmt: skip


@dataclass(frozen=True)
class MethodRuns:
    """A method as the verdict compares it: the runs of its best configuration, lowest seed first."""

    method: str
    runs: list[dict]  # rows of load.load's frame

    @property
    def steps(self) -> int:
        return int(self.runs[0]["steps"] or 0)

    @property
    def whole_budget(self) -> bool:
        return all(run["status"] == "completed" for run in self.runs)

    @property
    def validation_quality(self) -> float:
        return float(np.mean([run["best_quality"] for run in self.runs]))

    def side(self, name: Callable[[dict], str]) -> verdict.Side:
        return verdict.Side(name(self.runs[0]), self.steps, len(self.runs))


def compared_methods(loaded: pl.DataFrame) -> list[MethodRuns]:
    """Each trained method with a candidate, best on validation first: the runs of its best
    configuration that trained the whole budget, or that configuration's search run alone."""
    methods = []
    for best in rank.best_configurations(loaded).iter_rows(named=True):
        whole = loaded.filter(
            (pl.col("config_without_seed") == best["config_without_seed"])
            & (pl.col("status") == "completed")
            & pl.col("best_checkpoint").is_not_null()
            & pl.col("best_quality").is_not_null()
        ).sort("seed")
        methods.append(MethodRuns(best["method"], whole.to_dicts() if whole.height else [best]))
    return sorted(methods, key=lambda method: -method.validation_quality)


def scores_of(runs: list[dict], per_example: dict[str, list[float]]) -> np.ndarray:
    """A side's per-example test scores, one row per run (keyed by trial directory)."""
    return np.array([per_example[run["trial_dir"]] for run in runs], dtype=np.float64)


def comparisons(
    methods: list[MethodRuns],
    per_example: dict[str, list[float]],
    indices: np.ndarray,
    name: Callable[[dict], str],
) -> list[verdict.Comparison]:
    """The method best on validation against each other method, on the test split."""
    if len(methods) < 2:
        return []
    leader, *others = methods
    against = {other.side(name): scores_of(other.runs, per_example) for other in others}
    return verdict.compare(leader.side(name), scores_of(leader.runs, per_example), against, indices)


def lead_line(methods: list[MethodRuns], stage_ran: bool) -> str:
    """What the method comparisons below it rest on."""
    budgets = sorted({(method.steps, len(method.runs)) for method in methods})
    if all(method.whole_budget for method in methods) and len(budgets) == 1:
        steps, seeds = budgets[0]
        return (
            f"Methods at equal budget ({steps} steps, {seeds} seed{'s' if seeds > 1 else ''} each; "
            "each method's best configuration on validation):"
        )
    why = (
        "some runs of the equal-budget comparison failed or were not started"
        if stage_ran
        else "the equal-budget comparison was skipped: run with --compare-methods"
    )
    return f"Methods, not all at equal budget ({why}):"


def as_json(method: MethodRuns, name: Callable[[dict], str], test: dict) -> dict:
    """What winners.json says of a compared method."""
    return {
        "method": method.method,
        "id": name(method.runs[0]),
        "trial_ids": [run["trial_id"] for run in method.runs],
        "steps": method.steps,
        "seeds": len(method.runs),
        "whole_budget": method.whole_budget,
        "trained_in_comparison_stage": [run["stage"] == COMPARISON_DIR for run in method.runs],
        "validation_quality": method.validation_quality,
        "test": test,
    }


def on_test(
    runs: list[dict], scored: dict[str, dict], per_example: dict[str, list[float]], indices: np.ndarray
) -> dict:
    """A side's test figures: every metric the task reports, averaged over its runs, and the primary
    metric's interval over runs and examples."""
    metrics = [scored[run["trial_dir"]]["metrics"] for run in runs]
    numeric = [key for key, value in metrics[0].items() if isinstance(value, int | float)]
    quality = verdict.mean_interval(scores_of(runs, per_example), indices)
    averaged = {key: float(np.mean([each[key] for each in metrics])) for key in numeric}
    return averaged | {"quality_ci95": quality.ci95}


def table(
    rows: list[tuple[str, str, list[dict], dict]],
    table_metrics: tuple[str, ...],
) -> pl.DataFrame:
    """The studies' table: one row per method (and per base model prompt), each from runs of the
    budget it states. rows: (method, id, runs, test block)."""
    records = []
    for method, identifier, runs, test in rows:
        records.append(
            {
                "method": method,
                "id": identifier,
                "steps": int(runs[0]["steps"] or 0),
                "seeds": len(runs),
                "test": test["quality"],
                "test_ci95": test["quality_ci95"],
                **{metric: test.get(metric) for metric in table_metrics},
                "perplexity": test.get("perplexity"),
                **{column: float(np.mean([run[column] or 0.0 for run in runs])) for column in RUN_COLUMNS},
            }
        )
    schema = {"method": pl.String, "id": pl.String, "steps": pl.Int64, "seeds": pl.Int64, "test": pl.Float64,
              "test_ci95": pl.List(pl.Float64), **dict.fromkeys(table_metrics, pl.Float64),
              "perplexity": pl.Float64, **dict.fromkeys(RUN_COLUMNS, pl.Float64)}  # fmt: skip
    return pl.DataFrame(records, schema=schema)
