"""python -m analysis.report DIR: leaderboard, HTML report with plots, and winners.json for serving.

Also runs at the end of every sweep. The winners (top K of the Pareto front by utility) are
re-scored on the task's test split, which no earlier step used.
"""

import argparse
import base64
import datetime
import html
import json
import sys
from pathlib import Path

import polars as pl

from analysis import load, plots, rank
from trainables import trial
from trainables.config import ConfigError
from trainables.methods import METHODS
from trainables.tasks import get_task

WINNERS_FILE = "winners.json"
BOARD_COLUMNS = [
    "position", "trial_id", "method", "status", "pareto", "utility", "best_quality", "latency_s", "tokens_per_s",
    "cost_usd", "train_time_s", "adapter_bytes", "trainable_params", "peak_memory_mb", "learning_rate", "rank",
    "alpha", "dropout", "num_virtual_tokens", "shots", "error",
]  # fmt: skip


def adapter_id(task: str, method: str, trial_id: str) -> str:
    """A short id for serving, e.g. qg-lora-3f2a; a task file's task is named by its `name` key."""
    return f"{get_task(task).name}-{method.replace('_', '-')}-{trial_id[:4]}"


def pick_winners(board: pl.DataFrame, top: int, score_on_test: bool) -> list[dict]:
    chosen = board.filter(pl.col("pareto") & pl.col("best_checkpoint").is_not_null()).head(top)
    winners = []
    for row in chosen.iter_rows(named=True):  # a handful of winners, each loading a model
        record = json.loads((Path(row["trial_dir"]) / trial.RECORD_FILE).read_text())
        checkpoint = Path(row["best_checkpoint"])
        winner = {
            "id": adapter_id(row["task"], row["method"], row["trial_id"]),
            "trial_id": row["trial_id"],
            "task": row["task"],
            "method": row["method"],
            "base_model": row["model"],
            "quantize_4bit": METHODS[row["method"]].quantize_4bit,
            "checkpoint_path": str(checkpoint),
            "adapter_path": str(checkpoint / trial.ADAPTER_DIR),
            "config": record["config"],
            "validation": {
                "quality": row["best_quality"],
                "step": row["best_step"],
                "latency_s": row["latency_s"],
            },
            "utility": row["utility"],
        }
        if score_on_test:
            scores = trial.score_checkpoint(record["config"], checkpoint, split="test")
            winner["test"] = {key: value for key, value in scores.items() if key != "sample_output"}
        winners.append(winner)
    return winners


def _table_html(frame: pl.DataFrame) -> str:
    with pl.Config(float_precision=4, tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80):
        return frame._repr_html_()


def _image_html(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{path.stem}" src="data:image/png;base64,{encoded}"></figure>'


def write_html(
    directory: Path, board: pl.DataFrame, summary: pl.DataFrame, winners: list[dict], images: list[Path]
) -> Path:
    task = board["task"].drop_nulls().first()
    model = board["model"].drop_nulls().first()
    winner_rows = pl.DataFrame(
        [
            {"id": w["id"], "method": w["method"], "validation": w["validation"]["quality"],
             "test": w.get("test", {}).get("quality"), "adapter": w["adapter_path"]}
            for w in winners
        ],
        schema={"id": pl.String, "method": pl.String, "validation": pl.Float64, "test": pl.Float64, "adapter": pl.String},
    )  # fmt: skip
    failures = board.filter(pl.col("status") == "failed").select("trial_id", "method", "error")
    sections = [
        f"<h1>Sweep report: {html.escape(str(task))} on {html.escape(str(model))}</h1>",
        f"<p>{board.height} trials, {failures.height} failed. Generated {datetime.datetime.now():%Y-%m-%d %H:%M}.</p>",
        "<h2>Per method</h2>", _table_html(summary),
        "<h2>Winners</h2><p>Top of the Pareto front by utility; test scores are on the untouched test split.</p>",
        _table_html(winner_rows),
        "<h2>Plots</h2>", *(_image_html(image) for image in images),
        "<h2>Leaderboard</h2><p>Pareto-optimal trials first, by weighted utility; baselines for comparison.</p>",
        _table_html(board.select(column for column in BOARD_COLUMNS if column in board.columns)),
        "<h2>Failures</h2>", _table_html(failures) if failures.height else "<p>None.</p>",
    ]  # fmt: skip
    style = "body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%}table{font-size:12px}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report</title><style>{style}</style></head>"
    path = directory / "report.html"
    path.write_text(page + "<body>" + "\n".join(sections) + "</body></html>", encoding="utf-8")
    return path


def markdown_summary(summary: pl.DataFrame, winners: list[dict]) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   float_precision=4, tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):  # fmt: skip
        methods = str(summary.select("method", "trials", "failures", "best_quality", "median_quality",
                                     "latency_s", "train_time_s", "cost_usd"))  # fmt: skip
    lines = ["## Per method", methods, "", "## Winners"]
    lines += [
        f"- {w['id']} ({w['method']}): validation {w['validation']['quality']:.4f}"
        + (f", test {w['test']['quality']:.4f}" if "test" in w else "")
        for w in winners
    ] or ["- none: no trained trial finished with a checkpoint"]
    return "\n".join(lines)


def build(directory: Path, weights: dict[str, float], top: int = 3, score_on_test: bool = True) -> list[dict]:
    """Write every report file into directory; returns the winners. Raises NotAnExperiment."""
    frame = load.load(directory)
    board = rank.leaderboard(frame, weights)
    board.drop("trial_dir").write_csv(directory / "leaderboard.csv")
    board.write_parquet(directory / "leaderboard.parquet")
    summary = rank.method_summary(frame)
    curves = load.curves(directory)
    images = [
        plots.pareto(board, "cost_usd", "training cost ($)", directory / "pareto_cost.png"),
        plots.pareto(board, "latency_s", "latency per request (s)", directory / "pareto_latency.png"),
        plots.learning_curves(curves, directory / "learning_curves.png"),
        plots.quality_by_method(board, directory / "quality_by_method.png"),
    ]
    winners = pick_winners(board, top, score_on_test)
    (directory / WINNERS_FILE).write_text(
        json.dumps({"weights": weights, "winners": winners}, indent=2, default=str)
    )
    write_html(directory, board, summary, winners, images)
    print(markdown_summary(summary, winners))
    if board.filter(rank.is_candidate()).is_empty():
        raise load.NotAnExperiment(
            f"{directory}: every trained trial failed; see report.html for the reasons"
        )
    return winners


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    cli.add_argument("directory", type=Path, help="a sweep's experiment directory")
    cli.add_argument(
        "--weights", default="", help="e.g. quality=1,latency=0.1,cost=0.2,size=0 (defaults for the rest)"
    )
    cli.add_argument("--top", type=int, default=3, help="winners to pick from the Pareto front")
    cli.add_argument("--no-test", action="store_true", help="skip re-scoring the winners on the test split")
    args = cli.parse_args(argv)
    try:
        weights = rank.parse_weights(args.weights)
        build(args.directory.resolve(), weights, args.top, not args.no_test)
    except (load.NotAnExperiment, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {args.directory / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
