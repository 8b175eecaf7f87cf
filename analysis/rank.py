"""Objectives with directions, the Pareto flag and a weighted ranking, as polars expressions."""

import polars as pl

from analysis.layout import COMPARISON_DIR, FINALISTS_DIR
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


def dominated(points: pl.DataFrame, larger_is_better: dict[str, bool]) -> pl.Series:
    """Per row of points, whether another row beats it on one objective (a column) without losing
    on another: Pareto dominance, the one definition that the report's front and the Pareto-aware
    scheduler's rungs (sweeps.schedulers) share."""
    indexed = points.select(*larger_is_better).with_row_index("row")
    others = indexed.rename({column: f"{column}_other" for column in indexed.columns})
    at_least_as_good = pl.all_horizontal(
        (pl.col(f"{c}_other") >= pl.col(c)) if up else (pl.col(f"{c}_other") <= pl.col(c))
        for c, up in larger_is_better.items()
    )
    strictly_better = pl.any_horizontal(
        (pl.col(f"{c}_other") > pl.col(c)) if up else (pl.col(f"{c}_other") < pl.col(c))
        for c, up in larger_is_better.items()
    )
    beaten = indexed.join(others, how="cross").filter(at_least_as_good & strictly_better)["row"]
    return indexed["row"].is_in(beaten.implode()).alias("dominated")


def pareto_flags(frame: pl.DataFrame) -> pl.Series:
    """True for candidates that no other candidate beats on one objective without losing on another."""
    points = frame.filter(is_candidate()).select("trial_id", *OBJECTIVES)
    beaten = points.filter(dominated(points, OBJECTIVES))["trial_id"]
    return (
        frame.select(is_candidate() & ~pl.col("trial_id").is_in(beaten.implode())).to_series().alias("pareto")
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


def ended() -> pl.Expr:
    """Trials that trained and stopped by themselves or by the scheduler: their figures stand."""
    return pl.col("status").is_in(["completed", "stopped_early"])


def seed_group() -> pl.Expr:
    """Runs that differ only in their seed and trained the same number of steps (a finalist's or a
    compared method's other seeds) form one group; a run of another length, or one that did not
    end, is a group of its own: its figure is not of the same budget."""
    same_budget = pl.concat_str(pl.col("config_without_seed"), pl.lit("@"), pl.col("steps").cast(pl.String))
    return pl.when(ended()).then(same_budget).otherwise(pl.col("trial_id")).alias("seed_group")


def across_seeds(frame: pl.DataFrame) -> pl.DataFrame:
    """A group of seeds (seed_group) ranks as one, on the mean of its runs' best_quality: the run
    of the lowest seed stays, its own figure kept as seed_quality and the spread as quality_std;
    the group's other runs leave the frame."""
    grouped = frame.with_columns(seed_group())
    seeds = (
        grouped.filter(pl.col("best_quality").is_not_null())
        .group_by("seed_group")
        .agg(
            seeds=pl.len(),
            quality_mean=pl.col("best_quality").mean(),
            quality_std=pl.col("best_quality").std(),
        )
    )
    first_seed = pl.col("seed").fill_null(0) == pl.col("seed").fill_null(0).min().over("seed_group")
    return (
        grouped.filter(first_seed)
        .unique("seed_group", keep="first", maintain_order=True)
        .join(seeds, on="seed_group", how="left")
        .with_columns(
            seed_quality=pl.col("best_quality"),
            best_quality=pl.when(pl.col("seeds") > 1)
            .then(pl.col("quality_mean"))
            .otherwise(pl.col("best_quality")),
        )
        .drop("quality_mean", "seed_group")
    )


def searched() -> pl.Expr:
    """Trials the search started (its extensions' too), not a later stage's re-runs of them."""
    return ~pl.col("stage").is_in([COMPARISON_DIR, FINALISTS_DIR])


def best_configurations(frame: pl.DataFrame) -> pl.DataFrame:
    """Each trained method's best configuration on the search's evidence: the searched candidate
    with the highest ranking figure (best_quality), one row per method, best method first."""
    return (
        frame.filter(is_candidate() & searched())
        .sort("best_quality", descending=True, maintain_order=True)
        .group_by("method", maintain_order=True)
        .first()
    )


def leaderboard(frame: pl.DataFrame, weights: dict[str, float]) -> pl.DataFrame:
    """Pareto trials first, by utility; then the other candidates; baselines and failures last."""
    return (
        frame.with_columns(pareto_flags(frame), utility(weights))
        .sort(["pareto", "utility", "best_quality"], descending=True, nulls_last=True)
        .with_row_index("position", offset=1)
    )


def method_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per method, like the reference studies' tables, with how many trials the search
    gave it and how many of those the scheduler stopped early."""
    ok = ended()
    return (
        frame.group_by("method")
        .agg(
            trials=pl.len(),
            search_trials=searched().sum(),
            stopped_early=(searched() & (pl.col("status") == "stopped_early")).sum(),
            failures=(pl.col("status") == "failed").sum(),
            best_quality=pl.col("best_quality").filter(ok).max(),
            median_quality=pl.col("best_quality").filter(ok).median(),
            truncated_rate=pl.col("truncated_rate").filter(ok).median(),
            accepted_draft_length=pl.col("accepted_draft_length").filter(ok).median(),
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
