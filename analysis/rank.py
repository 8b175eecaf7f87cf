"""Objectives with directions, the Pareto flag and a weighted ranking, as polars expressions."""

import polars as pl

from trainables.errors import ConfigError
from trainables.methods import trained_methods

# Objective column -> True when larger is better.
OBJECTIVES: dict[str, bool] = {
    "best_quality": True,
    "latency_s": False,
    "cost_usd": False,
    "adapter_bytes": False,
}
WEIGHT_NAMES = {
    "quality": "best_quality",
    "latency": "latency_s",
    "cost": "cost_usd",
    "size": "adapter_bytes",
}
DEFAULT_WEIGHTS = {"quality": 1.0, "latency": 0.1, "cost": 0.1, "size": 0.05}


def parse_weights(text: str) -> dict[str, float]:
    """'quality=1,cost=0.2' -> weights; unnamed objectives keep their defaults."""
    weights = dict(DEFAULT_WEIGHTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in WEIGHT_NAMES:
            raise ConfigError(f"weights: unknown objective '{name}'; known: {', '.join(WEIGHT_NAMES)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ConfigError(f"weights: '{item}' needs a number, as in {name}=0.5") from None
        if weights[name] < 0:
            raise ConfigError(f"weights: {name} must not be negative")
    return weights


def is_trained() -> pl.Expr:
    """Trials of a method that trains: not the baseline's."""
    return pl.col("method").is_in(trained_methods())


def is_candidate() -> pl.Expr:
    """Trained trials with every objective measured: the ones that can win."""
    measured = pl.all_horizontal(
        pl.col(column).is_not_null() & pl.col(column).is_not_nan() for column in OBJECTIVES
    )
    return is_trained() & pl.col("status").is_in(["completed", "stopped_early"]) & measured


def pareto_flags(frame: pl.DataFrame) -> pl.Series:
    """True for candidates that no other candidate beats on one objective without losing on another."""
    points = frame.filter(is_candidate()).select("trial_id", *OBJECTIVES)
    others = points.rename({column: f"{column}_other" for column in points.columns})
    at_least_as_good = pl.all_horizontal(
        (pl.col(f"{c}_other") >= pl.col(c)) if up else (pl.col(f"{c}_other") <= pl.col(c))
        for c, up in OBJECTIVES.items()
    )
    strictly_better = pl.any_horizontal(
        (pl.col(f"{c}_other") > pl.col(c)) if up else (pl.col(f"{c}_other") < pl.col(c))
        for c, up in OBJECTIVES.items()
    )
    dominated = points.join(others, how="cross").filter(at_least_as_good & strictly_better)["trial_id"]
    return (
        frame.select(is_candidate() & ~pl.col("trial_id").is_in(dominated.implode()))
        .to_series()
        .alias("pareto")
    )


def _normalised(column: str, larger_is_better: bool) -> pl.Expr:
    """0 (worst candidate) to 1 (best candidate); 1 for all when they tie, whatever the direction:
    each is then the best there is on that objective, so its weight counts in full for every one and
    a tie scores the same on a lower-is-better objective as on a higher-is-better one."""
    value = pl.col(column)
    low, high = value.filter(is_candidate()).min(), value.filter(is_candidate()).max()
    spread = high - low
    gain = (value - low) if larger_is_better else (high - value)
    return pl.when(spread > 0).then(gain / spread).otherwise(1.0)


def utility(weights: dict[str, float]) -> pl.Expr:
    total = sum(weights.values()) or 1.0
    terms = [
        _normalised(WEIGHT_NAMES[name], OBJECTIVES[WEIGHT_NAMES[name]]) * w for name, w in weights.items()
    ]
    return pl.when(is_candidate()).then(pl.sum_horizontal(terms) / total).otherwise(None).alias("utility")


def across_seeds(frame: pl.DataFrame) -> pl.DataFrame:
    """A finalist re-trained with more seeds ranks on the mean of its seeds' best_quality (its own
    figure kept as seed_quality, the spread as quality_std); the re-runs then leave the frame."""
    seeds = (
        frame.filter(pl.col("best_quality").is_not_null())
        .group_by("config_without_seed")
        .agg(
            seeds=pl.len(),
            quality_mean=pl.col("best_quality").mean(),
            quality_std=pl.col("best_quality").std(),
        )
    )
    return (
        frame.filter(~pl.col("finalist_rerun"))
        .join(seeds, on="config_without_seed", how="left")
        .with_columns(
            seed_quality=pl.col("best_quality"),
            best_quality=pl.when(pl.col("seeds") > 1)
            .then(pl.col("quality_mean"))
            .otherwise(pl.col("best_quality")),
        )
        .drop("quality_mean")
    )


def leaderboard(frame: pl.DataFrame, weights: dict[str, float]) -> pl.DataFrame:
    """Pareto trials first, by utility; then the other candidates; baselines and failures last."""
    return (
        frame.with_columns(pareto_flags(frame), utility(weights))
        .sort(["pareto", "utility", "best_quality"], descending=True, nulls_last=True)
        .with_row_index("position", offset=1)
    )


def method_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per method, like the reference studies' tables."""
    ok = pl.col("status").is_in(["completed", "stopped_early"])
    return (
        frame.group_by("method")
        .agg(
            trials=pl.len(),
            failures=(pl.col("status") == "failed").sum(),
            best_quality=pl.col("best_quality").filter(ok).max(),
            median_quality=pl.col("best_quality").filter(ok).median(),
            truncated_rate=pl.col("truncated_rate").filter(ok).median(),
            tokens_per_s=pl.col("tokens_per_s").filter(ok).median(),
            latency_s=pl.col("latency_s").filter(ok).median(),
            perplexity=pl.col("perplexity").filter(ok).median(),
            train_loss=pl.col("train_loss").filter(ok).median(),
            train_time_s=pl.col("train_time_s").filter(ok).median(),
            # What the method's trials cost in all, failed and stopped ones included.
            total_cost_usd=pl.col("total_cost_usd").sum(),
        )
        .sort("best_quality", descending=True, nulls_last=True)
    )
