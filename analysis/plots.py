"""The report's figures as PNG files: Pareto fronts, learning curves, quality per method."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import polars as pl

from analysis.rank import BASELINE


def _colours(methods: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {method: palette(i % 10) for i, method in enumerate(sorted(methods))}


def _save(figure, axes, path: Path) -> Path:
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pareto(board: pl.DataFrame, x: str, x_label: str, path: Path) -> Path:
    colours = _colours(board["method"].unique().to_list())
    figure, axes = plt.subplots(figsize=(7, 4.5))
    shown = board.filter(pl.col(x).is_not_null() & pl.col("best_quality").is_not_null())
    for (method,), group in shown.partition_by("method", as_dict=True).items():
        marker = "X" if method == BASELINE else "o"
        axes.scatter(
            group[x], group["best_quality"], label=method, color=colours[method], marker=marker, s=50
        )
    front = shown.filter("pareto").sort(x)
    if front.height:
        axes.step(
            front[x], front["best_quality"].cum_max(), where="post", color="black", lw=1, label="Pareto front"
        )
    axes.set(xlabel=x_label, ylabel="quality (validation)", title=f"Quality against {x_label}")
    axes.legend(fontsize=8)
    return _save(figure, axes, path)


def learning_curves(curves: pl.DataFrame, path: Path) -> Path:
    colours = _colours(curves["method"].drop_nulls().unique().to_list())
    figure, axes = plt.subplots(figsize=(7, 4.5))
    labelled: set[str] = set()
    for (_, method), group in curves.sort("step").partition_by(["trial_dir", "method"], as_dict=True).items():
        label = None if method in labelled else method
        labelled.add(method)
        axes.plot(group["step"], group["quality"], color=colours[method], marker=".", alpha=0.8, label=label)
    axes.set(xlabel="training step", ylabel="quality (validation)", title="Learning curves")
    axes.legend(fontsize=8)
    return _save(figure, axes, path)


def quality_by_method(board: pl.DataFrame, path: Path) -> Path:
    groups = board.filter(pl.col("best_quality").is_not_null()).partition_by("method", as_dict=True)
    methods = sorted(method for (method,) in groups)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if methods:
        axes.boxplot([groups[(method,)]["best_quality"].to_list() for method in methods], tick_labels=methods)
    else:
        axes.text(0.5, 0.5, "no trial finished", ha="center", transform=axes.transAxes)
    axes.set(ylabel="quality (validation)", title="Quality per method")
    return _save(figure, axes, path)
