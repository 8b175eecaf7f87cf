"""The report's interactive figures (plotly): Pareto fronts, learning curves, quality per method, and
Optuna's own plots of the search. Hovering a point names its trial, method and hyperparameters."""

import itertools
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative

from analysis import study as sweep_study
from analysis.load import HYPERPARAMETERS
from analysis.tables import three_figures
from trainables.methods import METHODS

# The same colour for a method in every figure.
COLOURS = dict(zip(sorted(METHODS), itertools.cycle(qualitative.Plotly)))

QUALITY_LABEL = "quality (validation)"
HOVER = "trial %{customdata[0]} (%{customdata[1]})<br>%{customdata[2]}<extra></extra>"


def hyperparameters_text() -> pl.Expr:
    """'lora.rank=8, lora.learning_rate=0.00137' from the hyperparameters a trial has."""
    named = [pl.format(f"{name}={{}}", three_figures(pl.col(name))) for name in HYPERPARAMETERS]
    return pl.concat_str(named, separator=", ", ignore_nulls=True).alias("hyperparameters")


def with_hover(frame: pl.DataFrame) -> pl.DataFrame:
    """The columns each point's hover reads (customdata), in HOVER's order."""
    return frame.with_columns(hyperparameters_text())


def _styled(figure: go.Figure) -> go.Figure:
    return figure.update_layout(template="plotly_white", height=450)


def _layout(figure: go.Figure, title: str, x_label: str) -> go.Figure:
    return _styled(figure).update_layout(title=title, xaxis_title=x_label, yaxis_title=QUALITY_LABEL)


def _trace(group: pl.DataFrame, x: str, y: str, name: str, **style) -> go.Scatter:
    return go.Scatter(
        x=group[x],
        y=group[y],
        name=name,
        customdata=group.select("trial_id", "method", "hyperparameters").rows(),
        hovertemplate=HOVER,
        **style,
    )


def pareto(board: pl.DataFrame, x: str, x_label: str) -> go.Figure:
    shown = with_hover(board.filter(pl.col(x).is_not_null() & pl.col("best_quality").is_not_null()))
    figure = go.Figure()
    for (method,), group in sorted(shown.partition_by("method", as_dict=True).items()):
        symbol = "circle" if METHODS[method].trains else "x"  # the baseline: a reference, not a candidate
        marker = {"symbol": symbol, "size": 10, "color": COLOURS[method]}
        figure.add_trace(_trace(group, x, "best_quality", method, mode="markers", marker=marker))
    front = shown.filter("pareto").sort(x).with_columns(pl.col("best_quality").cum_max())
    if front.height:
        figure.add_trace(
            _trace(
                front, x, "best_quality", "Pareto front", mode="lines", line={"shape": "hv", "color": "black"}
            )
        )
    return _layout(figure, f"Quality against {x_label}", x_label)


def learning_curves(curves: pl.DataFrame, board: pl.DataFrame) -> go.Figure:
    """One line per trial; a finalist's re-runs, which the leaderboard folds into their trial, say so."""
    described = with_hover(board).select("trial_dir", "hyperparameters")
    shown = (
        curves.filter(pl.col("quality").is_not_null())
        .join(described, on="trial_dir", how="left")
        .with_columns(pl.col("hyperparameters").fill_null("a finalist's re-run with another seed"))
        .sort("step")
    )
    figure = go.Figure()
    in_legend: set[str] = set()  # one legend entry per method, which shows or hides all its trials
    for (_, method), group in sorted(shown.partition_by(["trial_dir", "method"], as_dict=True).items()):
        style = {
            "mode": "lines+markers",
            "line": {"color": COLOURS[method]},
            "legendgroup": method,
            "showlegend": method not in in_legend,
        }
        figure.add_trace(_trace(group, "step", "quality", method, **style))
        in_legend.add(method)
    return _layout(figure, "Learning curves (each trial's periodic evaluations)", "training step")


def quality_by_method(board: pl.DataFrame) -> go.Figure:
    shown = with_hover(board.filter(pl.col("best_quality").is_not_null()))
    figure = go.Figure()
    for (method,), group in sorted(shown.partition_by("method", as_dict=True).items()):
        figure.add_trace(
            go.Box(
                x=group["method"],
                y=group["best_quality"],
                name=method,
                marker={"color": COLOURS[method]},
                boxpoints="all",
                pointpos=0,
                customdata=group.select("trial_id", "method", "hyperparameters").rows(),
                hovertemplate=HOVER,
            )
        )
    return _layout(figure, "Quality per method", "method")


def search_study(directory: Path) -> optuna.Study | None:
    """The Optuna study of the sweep, kept in its directory (every trial, extensions included);
    None for a sweep without one. Never Tune's pickled searcher state: a report reads no pickle,
    so that reporting on someone else's sweep runs none of its code."""
    return sweep_study.load(directory)


def search_plots(study: optuna.Study) -> list[go.Figure]:
    """Optuna's optimisation history and, once two trials completed, its parameter importances
    (over the dimensions every completed trial has: with one space per method, the method)."""
    # A multi-objective study (--objectives) is plotted on its first objective; importances are
    # computed for a target that is better when lower (PED-ANOVA's convention for a target).
    first, lower_is_better = {}, {}
    if len(study.directions) > 1:
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        first = {"target": lambda trial: trial.values[0]}
        lower_is_better = {"target": lambda trial: sign * trial.values[0]}
    target_name = (study.metric_names or ["quality"])[0]
    figures = [optuna.visualization.plot_optimization_history(study, target_name=target_name, **first)]
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if len(completed) >= 2:
        with warnings.catch_warnings():
            # Each method's dimensions exist only in that method's trials, so PED-ANOVA warns for
            # almost every one that it has few trials; the title says so once instead.
            warnings.filterwarnings("ignore", "Some regimes for parameter", UserWarning)
            warnings.filterwarnings(
                "ignore", ".*computes the importances of params to achieve low", UserWarning
            )
            # With few trials, or trials that all score alike (a first look with --smoke), its
            # quantiles select the same trials and every importance comes out equal: the bars show it.
            warnings.filterwarnings("ignore", "Target and region quantiles select the same set", UserWarning)
            importances = optuna.visualization.plot_param_importances(
                study, target_name=target_name, **lower_is_better
            )
        title = f"Hyperparameter importances over {len(completed)} trials (rough with few trials per method)"
        figures.append(importances.update_layout(title=title))
    return [_styled(figure) for figure in figures]
