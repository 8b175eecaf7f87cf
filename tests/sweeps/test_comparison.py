"""The equal-budget comparison on a real sweep: ASHA stops methods early, the verdict first labels
its comparisons of unequal budgets as such, and once the comparison stage has trained each method's
best configuration to the whole budget (--resume --compare-methods), it compares like with like.

Deterministic on purpose: one trial at a time, from a seeded sampler, ranked on adapter size,
which depends on the configuration alone, so ASHA stops the same trials every run: LoRA's adapter,
many times the others', falls below the rung's cutoff after its first evaluation.
"""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from analysis import load
from trainables.winners import WINNERS_FILE

pytestmark = pytest.mark.slow

BUDGET = 4  # the smoke budget's steps
METHODS = ["prompt_tuning", "ia3", "lora"]


def _sweep(tiny_model: str, storage: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "sweeps.run", "qg", "--smoke", "--model", tiny_model, "--storage", str(storage),
        "--name", "equal", "--methods", ",".join(METHODS), "--objectives", "size", "--concurrency", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


def _saved(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / WINNERS_FILE).read_text())


def _id(saved: dict, method: str) -> str:
    """The id under which winners.json names a compared method."""
    return next(entry["id"] for entry in saved["methods"] if entry["method"] == method)


def test_comparisons_of_stopped_methods_say_unequal_budgets_until_the_stage_trains_them(tiny_model, tmp_path):
    done = _sweep(tiny_model, tmp_path, "--no-compare-methods")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = tmp_path / "qg" / "equal"
    trials = load.load(sweep_dir)
    stopped = set(trials.filter(pl.col("status") == "stopped_early")["method"])
    assert "lora" in stopped and stopped < set(METHODS)
    assert (trials.filter(pl.col("method").is_in(stopped))["steps"] < BUDGET).all()

    saved = _saved(sweep_dir)
    budgets = {method["method"]: (method["steps"], method["whole_budget"]) for method in saved["methods"]}
    assert budgets == {method: (2, False) if method in stopped else (BUDGET, True) for method in METHODS}
    assert len(saved["method_comparisons"]) == 2
    for comparison in saved["method_comparisons"]:
        sides = {comparison["method"], comparison["against_method"]}
        assert comparison["equal_budget"] == (len(sides & stopped) != 1), comparison
        if not comparison["equal_budget"]:
            assert comparison["steps"] != comparison["against_steps"] and not comparison["real_difference"]
            assert comparison["meaning"] == (
                f"unequal budgets: {_id(saved, comparison['method'])} trained {comparison['steps']} steps, "
                f"{comparison['against']} trained {comparison['against_steps']}"
            )
            assert comparison["meaning"] in done.stdout
    assert any(not comparison["equal_budget"] for comparison in saved["method_comparisons"])
    assert "the equal-budget comparison was skipped: run with --compare-methods" in done.stdout

    # The same sweep, its comparison stage run: each stopped method's best configuration again, to the end.
    again = _sweep(tiny_model, tmp_path, "--resume", "--compare-methods")
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load.load(sweep_dir)
    compared = trials.filter(pl.col("stage") == load.COMPARISON_DIR)
    assert set(compared["method"]) == stopped  # the others' search trials completed the budget already
    assert compared.height == len(stopped)
    assert (compared["status"] == "completed").all() and (compared["steps"] == BUDGET).all()
    searched = trials.filter(pl.col("stage") == load.SEARCH_STAGE)
    assert set(compared["config_without_seed"]) <= set(searched["config_without_seed"])
    assert (compared["seed"] == 0).all()

    saved = _saved(sweep_dir)
    assert {method["method"] for method in saved["methods"]} == set(METHODS)
    for method in saved["methods"]:
        assert (method["steps"], method["seeds"], method["whole_budget"]) == (BUDGET, 1, True), method
        assert method["trained_in_comparison_stage"] == [method["method"] in stopped]
        assert 0.0 <= method["test"]["quality"] <= 1.0 and len(method["test"]["quality_ci95"]) == 2
    for comparison in saved["method_comparisons"]:
        assert comparison["steps"] == comparison["against_steps"] == BUDGET
        assert comparison["seeds"] == comparison["against_seeds"] == 1
        assert comparison["equal_budget"] and "unequal" not in comparison["meaning"]
    assert f"Methods at equal budget ({BUDGET} steps, 1 seed each" in again.stdout
    assert f"[comparison] {len(stopped)}/{len(stopped)} trials done" in again.stdout
    # The studies' table: the base model and every method, each saying its steps and seeds.
    page = (sweep_dir / "report.html").read_text()
    assert "<h2>Methods at equal budget</h2>" in page and 'id="equal-budget"' in page
    assert "## Methods at equal budget" in again.stdout
    table = again.stdout.split("## Methods at equal budget")[1].split("## Winners")[0]
    assert all(f"| {method}" in table for method in [*METHODS, "base"]), table
    assert "bertscore_precision" in table and "surplus_queries" in table
