"""The sweep's table (trials.csv / trials.parquet) and the summary printed at its end."""

from pathlib import Path

import polars as pl

from trainables import files

# quality: on the first eval_examples validation rows (what ASHA compares); quality_full_validation:
# on the whole split, measured by a trial that ran to the end (the report measures the others).
SUMMARY_COLUMNS = [
    "trial_id", "method", "status", "quality", "quality_full_validation", "truncated_rate", "cost_usd",
    "latency_s", "train_time_s",
]  # fmt: skip


def write_tables(trials: pl.DataFrame, sweep_dir: Path) -> None:
    with files.replaced_atomically(sweep_dir / "trials.csv") as written:
        trials.write_csv(written)
    with files.replaced_atomically(sweep_dir / "trials.parquet") as written:
        trials.write_parquet(written)


def summary(trials: pl.DataFrame) -> str:
    table = trials.select(SUMMARY_COLUMNS).sort(
        ["quality_full_validation", "quality"], descending=True, nulls_last=True
    )
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=140,
        float_precision=3,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    ):
        return str(table)
