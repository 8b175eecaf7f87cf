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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
import polars as pl

from analysis import equal_budget, load, measurements, plots, rank, tables, verdict
from analysis.layout import COMPARISON_DIR
from trainables import files
from trainables.config import ConfigError
from trainables.evaluation import scoring
from trainables.methods import BASELINE, METHODS
from trainables.record import ADAPTER_DIR, read_record
from trainables.tasks import get_task
from trainables.winners import Winners

NO_VERDICT = "No verdict: the winners were not scored on the test split (--no-test), or there are none."
VERDICT_NOTE = (
    "Intervals: 95% paired bootstrap over the test examples (2,000 resamples) and, for a method run with "
    "several seeds, over its seeds as well; a difference whose interval contains 0 is not distinguishable "
    "on this data, and one between runs of unequal budgets is never called real. Validation figures "
    "choose; test figures judge."
)
EQUAL_BUDGET_NOTE = (
    "Each method's best configuration on validation, trained to the whole budget with every seed the sweep "
    "asked for (--finalist-seeds); quality and its 95% interval on the test split, the task's own metrics "
    "and perplexity on the test split, speed on the validation prompts; each figure the mean over the "
    "row's seeds. The untouched base model is prompted zero- and k-shot."
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
    """A short id for serving, e.g. qg-lora-3f2a; a task file's task is named by its `name` key.
    A later stage's runs share their experiment's prefix (84206_00000, 84206_00001): their number
    follows it (qg-lora-8420-1), so that each run of the stage keeps an id of its own."""
    prefix, _, number = trial_id.partition("_")
    run = f"-{int(number)}" if number.isdigit() else ""
    return f"{get_task(task).name}-{method.replace('_', '-')}-{prefix[:4]}{run}"


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


def winner_entry(row: dict, directory: Path) -> dict:
    """What winners.json says of a winner (a leaderboard row); judge() adds its test block. Its
    paths are relative to the sweep's directory: they leak no home directory, and a sweep folder
    moved or copied elsewhere still serves and exports."""
    record = read_record(row["trial_dir"])
    checkpoint = Path(os.path.relpath(row["best_checkpoint"], directory))
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


def trial_entry(row: dict, directory: Path) -> dict:
    """What winners.json says of any trial of the leaderboard, for a server to name it (--trials,
    --pareto): its kept checkpoint's adapter, if one is kept, relative to the sweep's directory."""
    checkpoint = row["best_checkpoint"]
    return {
        "trial_id": row["trial_id"],
        "id": trial_name(row),
        "task": row["task"],
        "method": row["method"],
        "base_model": row["model"],
        "quantize_4bit": METHODS[row["method"]].quantize_4bit,
        "status": row["status"],
        "pareto": bool(row["pareto"]),
        "adapter_path": str(Path(os.path.relpath(checkpoint, directory)) / ADAPTER_DIR)
        if checkpoint
        else None,
        "validation_quality": row["best_quality"],
    }


def base_name(row: dict) -> str:
    return f"the base model ({int(row['shots'])}-shot)"


def _common_length(per_example: dict[str, list[float]]) -> int:
    lengths = {len(scores) for scores in per_example.values()}
    if len(lengths) != 1:
        raise ValueError(f"candidates were scored on different numbers of test examples: {sorted(lengths)}")
    return lengths.pop()


@dataclass(frozen=True)
class Judgement:
    """What the verdict found: its lines, and the methods at equal budget (winners.json, table)."""

    lines: list[str]
    methods: list[dict]
    method_comparisons: list[dict]
    methods_table: pl.DataFrame


def judge(
    board: pl.DataFrame,
    loaded: pl.DataFrame,
    chosen: pl.DataFrame,
    winners: list[dict],
    workers: scoring.ScoringPool = scoring.IN_PROCESS,
    comparison_stage_ran: bool = True,
) -> Judgement:
    """Scores the winners, the baselines and the runs each method is compared by on the whole test
    split; gives each winner's test block its quality_ci95 and comparisons; returns the verdict.

    Every winner is compared with the base model (at each baseline's shots), the top winner also
    with the runner-up; the method best on validation with every other method, each through its
    best configuration's runs at equal budget (analysis.equal_budget).
    """
    base_rows = board.filter(~rank.is_trained() & (pl.col("status") == "completed")).sort("shots").to_dicts()
    winner_rows = chosen.to_dicts()
    methods = equal_budget.compared_methods(loaded)
    to_score = [*base_rows, *winner_rows, *(run for method in methods for run in method.runs)]
    scored = scoring.scores_on_test({row["trial_dir"]: row for row in to_score}, workers)
    per_example = {key: result["per_example"] for key, result in scored.items()}
    examples = _common_length(per_example)
    indices = verdict.resample_indices(examples)
    bases = {
        verdict.Side(base_name(row), 0, trains=False): per_example[row["trial_dir"]] for row in base_rows
    }
    sides = [verdict.Side(w["id"], int(row["steps"])) for w, row in zip(winners, winner_rows, strict=True)]
    lines = []
    for position, (winner, row, side) in enumerate(zip(winners, winner_rows, sides, strict=True)):
        against = dict(bases)
        if position == 0 and len(sides) > 1:  # the runner-up
            against[sides[1]] = per_example[winner_rows[1]["trial_dir"]]
        scores = per_example[row["trial_dir"]]
        quality = verdict.mean_interval(scores, indices)
        comparisons = verdict.compare(side, scores, against, indices)
        winner["test"] = scored[row["trial_dir"]]["metrics"] | {
            "examples": examples,
            "steps": side.steps,
            "quality_ci95": quality.ci95,
            "comparisons": [comparison.as_json() for comparison in comparisons],
        }
        lines += verdict_lines(winner, position, quality, comparisons, examples)
    between_methods = equal_budget.comparisons(methods, per_example, indices, trial_name)
    if between_methods:
        lines += [equal_budget.lead_line(methods, comparison_stage_ran)]
        lines += [comparison.words() + "." for comparison in between_methods]
    base_tests = [equal_budget.on_test([row], scored, per_example, indices) for row in base_rows]
    method_tests = [equal_budget.on_test(method.runs, scored, per_example, indices) for method in methods]
    base_rows_of_table = [
        (f"{BASELINE} ({int(row['shots'])}-shot)", base_name(row), [row], test)
        for row, test in zip(base_rows, base_tests, strict=True)
    ]
    table_rows = base_rows_of_table + [
        (method.method, trial_name(method.runs[0]), method.runs, test)
        for method, test in zip(methods, method_tests, strict=True)
    ]
    return Judgement(
        lines,
        [
            equal_budget.as_json(method, trial_name, test)
            for method, test in zip(methods, method_tests, strict=True)
        ],
        [
            comparison.as_json() | {"method": methods[0].method, "against_method": other.method}
            for comparison, other in zip(between_methods, methods[1:], strict=True)
        ],
        equal_budget.table(table_rows, get_task(board["task"].drop_nulls().first()).table_metrics),
    )


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
    methods_table: pl.DataFrame | None = None,
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
        f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M}. {html.escape(prompt_lookup_line(board))}</p>",
        "<h2>Verdict</h2>", _verdict_html(verdict_text),
        "<h2>Methods at equal budget</h2>",
        f"<p>{EQUAL_BUDGET_NOTE}</p>" + tables.to_html(methods_table, "equal-budget")
        if methods_table is not None else f"<p>{NO_VERDICT}</p>",
        "<h2>Per method</h2><p>quality: on the whole validation split, the kept checkpoint of each trial; "
        "search_trials: trials the search gave the method, stopped_early: those the scheduler ended "
        "first.</p>",
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
    files.write_atomically(path, f"{page}<script>{tables.TABLE_SCRIPT}</script></body></html>")
    return path


def prompt_lookup_line(board: pl.DataFrame) -> str:
    """How far prompt lookup's drafts held on this sweep's task (trainables.decoding.lookup)."""
    lengths = board["accepted_draft_length"].drop_nulls()
    task = board["task"].drop_nulls().first()
    if lengths.is_empty():
        return f"Prompt lookup: off (or no draft checked) in the evaluations of {task}."
    return (
        f"Prompt lookup: {lengths.mean():.2f} draft tokens kept per draft checked on {task}, the mean over "
        f"{lengths.len()} trials' evaluations."
    )


def markdown_summary(
    summary: pl.DataFrame,
    winners: list[dict],
    verdict_text: list[str],
    methods_table: pl.DataFrame | None = None,
) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   float_precision=3, tbl_rows=-1, tbl_cols=-1, tbl_width_chars=1000):  # fmt: skip
        methods = str(summary.select("method", "trials", "search_trials", "stopped_early", "failures",
                                     "best_quality", "median_quality", "truncated_rate", "latency_s",
                                     "train_time_s", "total_cost_usd"))  # fmt: skip
        at_equal_budget = (
            str(
                methods_table.select(
                    "method",
                    "steps",
                    "seeds",
                    "test",
                    tables.interval(pl.col("test_ci95")).alias("test_ci95"),
                    *methods_table.columns[methods_table.columns.index("test_ci95") + 1 :],
                ).drop(
                    "id",
                    "tokens_per_s",
                    "latency_s",
                    "trainable_params",
                    "adapter_bytes",
                    "peak_memory_mb",
                    strict=False,
                )
            )
            if methods_table is not None
            else NO_VERDICT
        )
    lines = ["## Per method", methods, "", "## Methods at equal budget", at_equal_budget, "", "## Winners"]
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
    workers: scoring.ScoringPool = scoring.IN_PROCESS,
) -> list[dict]:
    """Write every report file into directory; returns the winners. Raises NotAnExperiment."""
    loaded = measurements.measured_trials(directory, workers)
    spent_usd = loaded["total_cost_usd"].fill_null(0.0).sum()  # every trial's, finalist re-runs too
    frame = rank.across_seeds(loaded)
    board = rank.leaderboard(frame, weights)
    with files.replaced_atomically(directory / "leaderboard.csv") as written:
        board.drop("trial_dir").write_csv(written)
    with files.replaced_atomically(directory / "leaderboard.parquet") as written:
        board.write_parquet(written)
    summary = rank.method_summary(loaded)  # every run: the search's, and the stages' re-runs
    study = plots.search_study(directory)
    figures = [
        plots.pareto(board, "cost_usd", "cost of the served checkpoint ($)"),
        plots.pareto(board, "latency_s", "latency per request (s)"),
        plots.learning_curves(load.curves(directory), board),
        plots.quality_by_method(board),
        *(plots.search_plots(study) if study else []),
    ]
    chosen = chosen_winners(board, top)
    winners = [winner_entry(row, directory) for row in chosen.iter_rows(named=True)]
    judged = None
    if score_on_test and winners:
        judged = judge(board, loaded, chosen, winners, workers, (directory / COMPARISON_DIR).is_dir())
    verdict_text = judged.lines if judged else []
    methods_table = judged.methods_table if judged else None
    trials = [trial_entry(row, directory) for row in board.iter_rows(named=True)]
    saved = {"weights": weights, "winners": winners, "trials": trials}
    if judged:
        saved |= {"methods": judged.methods, "method_comparisons": judged.method_comparisons}
    Winners.model_validate(saved).write(directory)
    write_html(directory, board, summary, winners, verdict_text, figures, spent_usd, methods_table)
    print(markdown_summary(summary, winners, verdict_text, methods_table))
    print(f"\n## Decoding\n{prompt_lookup_line(board)}")
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
