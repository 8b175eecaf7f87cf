"""python -m analysis.report DIR: leaderboard, HTML report with plots, and winners.json for serving.

Also runs at the end of every sweep. Kept checkpoints that their trial did not measure (ASHA
stopped it) are first scored on the whole validation split, the figure that ranks. The winners (top
K of the Pareto front by utility), the base model and each other method's best are then scored per
example on the task's test split, which no earlier step used, for the verdict: every test quality
and every comparison with a 95% paired bootstrap interval (analysis.verdict).
"""

import argparse
import datetime
import html
import json
import sys
from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
import polars as pl

from analysis import load, plots, rank, rescore, tables, verdict
from trainables.config import ConfigError
from trainables.methods import METHODS
from trainables.record import ADAPTER_DIR, read_record
from trainables.tasks import get_task

WINNERS_FILE = "winners.json"
NO_VERDICT = "No verdict: the winners were not scored on the test split (--no-test), or there are none."
VERDICT_NOTE = (
    "Intervals: 95% paired bootstrap over the test examples (2,000 resamples); a difference whose "
    "interval contains 0 is not distinguishable on this data. Validation figures choose; test figures judge."
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222 }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; display: block; overflow-x: auto }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; white-space: nowrap }
th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0 }
.num { text-align: right }
input[type=search] { margin-top: 0.5em; padding: 3px 6px }
"""
BOARD_COLUMNS = [
    "position", "trial_id", "method", "status", "pareto", "utility", "best_quality", "quality_std", "seeds",
    "seed_quality", "subset_quality", "truncated_rate", "latency_s", "latency_per_token_s", "tokens_per_s",
    "cost_usd", "total_cost_usd", "train_time_s", "adapter_bytes", "trainable_params", "peak_memory_mb",
    *load.HYPERPARAMETERS, "error",
]  # fmt: skip


def adapter_id(task: str, method: str, trial_id: str) -> str:
    """A short id for serving, e.g. qg-lora-3f2a; a task file's task is named by its `name` key."""
    return f"{get_task(task).name}-{method.replace('_', '-')}-{trial_id[:4]}"


def chosen_winners(board: pl.DataFrame, top: int) -> pl.DataFrame:
    """The top of the Pareto front by utility, and after them the best candidate on validation
    quality when the trade-off leaves it out: a verdict always names the most accurate model the
    sweep found, whatever the weights make of its cost. That one is on the front, as nothing beats
    it on quality; best_on_validation flags it."""
    front = board.filter(pl.col("pareto") & pl.col("best_checkpoint").is_not_null()).with_columns(
        best_on_validation=pl.col("best_quality") == pl.col("best_quality").max()
    )
    most_accurate = front.filter(pl.col("best_on_validation")).head(1)
    return pl.concat([front.head(top), most_accurate]).unique("trial_id", keep="first", maintain_order=True)


def trial_name(row: dict) -> str:
    return adapter_id(row["task"], row["method"], row["trial_id"])


def winner_entry(row: dict) -> dict:
    """What winners.json says of a winner (a leaderboard row); judge() adds its test block."""
    record = read_record(row["trial_dir"])
    checkpoint = Path(row["best_checkpoint"])
    return {
        "id": trial_name(row),
        "trial_id": row["trial_id"],
        "task": row["task"],
        "method": row["method"],
        "base_model": row["model"],
        "quantize_4bit": METHODS[row["method"]].quantize_4bit,
        # What `python -m serve.export --to` can write of it: a merged model, a portable LoRA.
        "exports": list(METHODS[row["method"]].export_forms),
        "checkpoint_path": str(checkpoint),
        "adapter_path": str(checkpoint / ADAPTER_DIR),
        "config": record["config"],
        "validation": {
            "quality": row["best_quality"],  # the mean over its seeds when re-trained with more
            "quality_std": row["quality_std"],
            "seeds": row["seeds"],
            "examples": int(row["full_validation_examples"]),
            "step": row["best_step"],
            "latency_s": row["latency_s"],
            "latency_per_token_s": row["latency_per_token_s"],
        },
        "utility": row["utility"],
        "best_on_validation": row["best_on_validation"],
    }


def base_name(row: dict) -> str:
    return f"the base model ({int(row['shots'])}-shot)"


def best_of_other_methods(board: pl.DataFrame, method: str) -> pl.DataFrame:
    """The best candidate (by the ranking figure) of every method but `method`."""
    others = rank.is_candidate() & pl.col("best_checkpoint").is_not_null() & (pl.col("method") != method)
    return (
        board.filter(others)
        .sort("best_quality", descending=True)
        .group_by("method", maintain_order=True)
        .first()
    )


def _named_rows(frame: pl.DataFrame, name: Callable[[dict], str]) -> dict[str, dict]:
    return {name(row): row for row in frame.iter_rows(named=True)}


def _common_length(per_example: dict[str, list[float]]) -> int:
    lengths = {len(scores) for scores in per_example.values()}
    if len(lengths) != 1:
        raise ValueError(f"candidates were scored on different numbers of test examples: {sorted(lengths)}")
    return lengths.pop()


def judge(
    board: pl.DataFrame,
    chosen: pl.DataFrame,
    winners: list[dict],
    workers: rescore.Workers = rescore.IN_PROCESS,
) -> list[str]:
    """Scores the winners, the baselines and the best trial of each other method on the whole test
    split; gives each winner's test block its quality_ci95 and comparisons; returns the verdict.

    Every winner is compared with the base model (at each baseline's shots); the top winner also
    with the runner-up and with the best trial of each other method.
    """
    baselines = board.filter(~rank.is_trained() & (pl.col("status") == "completed"))
    bases = _named_rows(baselines.sort("shots"), base_name)
    winner_rows = _named_rows(chosen, trial_name)
    others = _named_rows(best_of_other_methods(board, winners[0]["method"]), trial_name)
    scored = rescore.scores_on_test(bases | winner_rows | others, workers)
    per_example = {name: result["per_example"] for name, result in scored.items()}
    examples = _common_length(per_example)
    indices = verdict.resample_indices(examples)
    against_base = {name: per_example[name] for name in bases}
    runner_up = list(winner_rows)[1:2]
    against_rivals = {name: per_example[name] for name in [*runner_up, *others]}  # one entry per name
    lines = []
    for position, winner in enumerate(winners):
        name = winner["id"]
        against = against_base | (against_rivals if position == 0 else {})
        quality = verdict.mean_interval(per_example[name], indices)
        comparisons = verdict.compare(name, per_example[name], against, indices)
        winner["test"] = scored[name]["metrics"] | {
            "examples": examples,
            "quality_ci95": quality.ci95,
            "comparisons": [comparison.as_json() for comparison in comparisons],
        }
        lines += verdict_lines(winner, position, quality, comparisons, examples)
    return lines


def verdict_lines(
    winner: dict,
    position: int,
    quality: verdict.Estimate,
    comparisons: list[verdict.Comparison],
    examples: int,
) -> list[str]:
    described = f"{winner['id']} ({winner['method']})"
    validation = winner["validation"]
    if validation["seeds"] > 1:  # a finalist, re-trained with more seeds
        spread = f"{validation['quality']:.3f} ± {validation['quality_std']:.3f}"
        described += f", validation {spread} over {validation['seeds']} seeds"
    most_accurate = "the best on validation quality" if winner["best_on_validation"] else ""
    if position == 0:
        also = f" and {most_accurate}" if most_accurate else ""
        lead = (
            f"Verdict: {described} is the best trade-off on the Pareto front{also}; its test quality "
            f"is {verdict.interval_words(quality)} on {examples} test examples."
        )
    else:
        also = f", {most_accurate}" if most_accurate else ""
        lead = f"Winner {position + 1}, {described}{also}: test quality {verdict.interval_words(quality)}."
    return [lead, *(comparison.words() + "." for comparison in comparisons)]


def _figure_html(figure: go.Figure) -> str:
    # plotly.js is inlined once, in the page's head.
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _verdict_html(lines: list[str]) -> str:
    if not lines:
        return f"<p>{NO_VERDICT}</p>"
    lead, *details = lines
    items = "".join(f"<li>{html.escape(line)}</li>" for line in details)
    return f"<p><strong>{html.escape(lead)}</strong></p><ul>{items}</ul><p>{VERDICT_NOTE}</p>"


def write_html(
    directory: Path,
    board: pl.DataFrame,
    summary: pl.DataFrame,
    winners: list[dict],
    verdict_text: list[str],
    figures: list[go.Figure],
    spent_usd: float = 0.0,
) -> Path:
    task = board["task"].drop_nulls().first()
    model = board["model"].drop_nulls().first()
    winner_rows = pl.DataFrame(
        [
            {"id": w["id"], "method": w["method"], "validation": w["validation"]["quality"],
             "validation_std": w["validation"]["quality_std"], "seeds": w["validation"]["seeds"],
             "best_on_validation": w["best_on_validation"],
             "test": w.get("test", {}).get("quality"), "test_ci95": w.get("test", {}).get("quality_ci95"),
             "adapter": w["adapter_path"]}
            for w in winners
        ],
        schema={"id": pl.String, "method": pl.String, "validation": pl.Float64, "validation_std": pl.Float64,
                "seeds": pl.Int64, "best_on_validation": pl.Boolean, "test": pl.Float64,
                "test_ci95": pl.List(pl.Float64), "adapter": pl.String},
    )  # fmt: skip
    failures = board.filter(pl.col("status") == "failed").select("trial_id", "method", "error")
    sections = [
        f"<h1>Sweep report: {html.escape(str(task))} on {html.escape(str(model))}</h1>",
        f"<p>{board.height} trials, {failures.height} failed; ${spent_usd:.4f} spent in all. "
        f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M}.</p>",
        "<h2>Verdict</h2>", _verdict_html(verdict_text),
        "<h2>Per method</h2><p>quality: on the whole validation split, the kept checkpoint of each trial.</p>",
        tables.to_html(summary, "per-method"),
        "<h2>Winners</h2><p>Top of the Pareto front by utility, and the best on validation quality when the "
        "trade-off leaves it out; test scores are on the untouched test split.</p>",
        tables.to_html(winner_rows, "winners"),
        "<h2>Plots</h2><p>Hover a point for its trial, method and hyperparameters; drag to zoom, double-click to reset.</p>",
        *(_figure_html(figure) for figure in figures),
        "<h2>Leaderboard</h2><p>Pareto-optimal trials first, by weighted utility; baselines for comparison.</p>",
        tables.to_html(board.select(column for column in BOARD_COLUMNS if board[column].is_not_null().any()),
                       "leaderboard"),
        "<h2>Failures</h2>", tables.to_html(failures, "failures"),
    ]  # fmt: skip
    # One self-contained file that works offline: plotly.js (about 4.8 MB) is inlined, not fetched.
    head = f"<meta charset='utf-8'><title>Sweep report</title><style>{STYLE}</style>"
    page = f"<!doctype html><html><head>{head}<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
    page += "\n".join(sections)
    path = directory / "report.html"
    path.write_text(f"{page}<script>{tables.TABLE_SCRIPT}</script></body></html>", encoding="utf-8")
    return path


def markdown_summary(summary: pl.DataFrame, winners: list[dict], verdict_text: list[str]) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   float_precision=3, tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):  # fmt: skip
        methods = str(summary.select("method", "trials", "failures", "best_quality", "median_quality",
                                     "truncated_rate", "latency_s", "train_time_s", "total_cost_usd"))  # fmt: skip
    lines = ["## Per method", methods, "", "## Winners"]
    lines += [
        f"- {w['id']} ({w['method']}): validation {w['validation']['quality']:.3f}"
        + (" (the best)" if w["best_on_validation"] else "")
        + (f", test {w['test']['quality']:.3f}" if "test" in w else "")
        for w in winners
    ] or ["- none: no trained trial finished with a checkpoint"]
    lines += ["", "## Verdict", *(f"- {line}" for line in verdict_text or [NO_VERDICT])]
    return "\n".join(lines)


def build(
    directory: Path,
    weights: dict[str, float],
    top: int = 3,
    score_on_test: bool = True,
    workers: rescore.Workers = rescore.IN_PROCESS,
) -> list[dict]:
    """Write every report file into directory; returns the winners. Raises NotAnExperiment."""
    rescore.measure_kept_checkpoints(load.load(directory), workers)
    loaded = load.load(directory)
    spent_usd = loaded["total_cost_usd"].fill_null(0.0).sum()  # every trial's, finalist re-runs too
    frame = rank.across_seeds(loaded)
    board = rank.leaderboard(frame, weights)
    board.drop("trial_dir").write_csv(directory / "leaderboard.csv")
    board.write_parquet(directory / "leaderboard.parquet")
    summary = rank.method_summary(frame)
    study = plots.search_study(directory)
    figures = [
        plots.pareto(board, "cost_usd", "cost of the served checkpoint ($)"),
        plots.pareto(board, "latency_s", "latency per request (s)"),
        plots.learning_curves(load.curves(directory), board),
        plots.quality_by_method(board),
        *(plots.search_plots(study) if study else []),
    ]
    chosen = chosen_winners(board, top)
    winners = [winner_entry(row) for row in chosen.iter_rows(named=True)]
    verdict_text = judge(board, chosen, winners, workers) if score_on_test and winners else []
    (directory / WINNERS_FILE).write_text(
        json.dumps({"weights": weights, "winners": winners}, indent=2, default=str)
    )
    write_html(directory, board, summary, winners, verdict_text, figures, spent_usd)
    print(markdown_summary(summary, winners, verdict_text))
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
    cli.add_argument(
        "--top",
        type=int,
        default=3,
        help="winners to pick from the Pareto front by utility (and the best on quality, if not among them)",
    )
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
