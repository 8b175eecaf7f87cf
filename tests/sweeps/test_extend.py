"""The shared smoke sweep (multi-objective, with a dollar budget), then --extend 1 on a copy of it:
real Ray, real Optuna, the tiny model."""

import shutil
import subprocess
import sys

import optuna
import polars as pl
import pytest

from analysis import rank
from sweeps import extend, run, study

pytestmark = pytest.mark.slow


def test_multi_objective_sweep_with_a_budget_then_extended_by_one_trial(smoke_sweep, tmp_path):
    done, original = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    assert "of $100 budget" in done.stdout  # the sweep's running total, against its budget
    # A copy, so that the extension leaves the shared sweep as the other tests read it.
    sweep_dir = tmp_path / "qg" / "smoke"
    shutil.copytree(original, sweep_dir)
    before = pl.read_csv(sweep_dir / "trials.csv")
    records = {path: path.read_bytes() for path in sweep_dir.glob("**/trial_record.json")}

    command = [sys.executable, "-m", "sweeps.run", "qg", "--extend", "1", "--name", "smoke"]
    extended = subprocess.run(
        [*command, "--storage", str(tmp_path), "--concurrency", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert extended.returncode == 0, extended.stderr[-3000:]

    after = pl.read_csv(sweep_dir / "trials.csv")
    new = after.filter(~pl.col("trial_id").is_in(before["trial_id"].implode()))
    assert set(before["trial_id"]) <= set(after["trial_id"]) and new.height == 1
    assert new["trial_dir"].str.contains("/extension-1/").all()
    assert all(path.read_bytes() == record for path, record in records.items()), "an old trial was rerun"
    board = set(pl.read_csv(sweep_dir / "leaderboard.csv")["trial_id"])
    searched = set(after.filter(~pl.col("finalist_rerun"))["trial_id"])
    # A finalist's re-run ranks with it when it trained as long, else on a row of its own (ASHA
    # stopped one of the two at another step): the extension keeps both kinds of row.
    grouped = after.with_columns(rank.seed_group())
    searched_groups = set(grouped.filter(~pl.col("finalist_rerun"))["seed_group"])
    on_their_own = set(
        grouped.filter(pl.col("finalist_rerun") & ~pl.col("seed_group").is_in(searched_groups))["trial_id"]
    )
    assert board == searched | on_their_own

    # The study the search and its extension shared, as optuna-dashboard would open it.
    loaded = optuna.load_study(study_name=study.STUDY_NAME, storage=study.storage(sweep_dir))
    assert loaded.metric_names == ["quality", "cost"] and len(loaded.directions) == 2
    searched = before.filter((pl.col("method") != "base") & ~pl.col("finalist_rerun")).height
    assert len(loaded.trials) == searched + 1
    assert loaded.trials[-1].params["method"] == new["method"].item()
    assert "spent in all" in (sweep_dir / "report.html").read_text()


@pytest.mark.parametrize("saved", ['{"task": "qg", "max_st', "[1, 2]", '{"task": "qg", "samples": 0}'])
def test_a_broken_saved_settings_file_is_a_one_line_error(tmp_path, capsys, saved):
    sweep_dir = tmp_path / "qg" / "cut"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "experiment_state-2026.json").write_text("{}")
    (sweep_dir / extend.SETTINGS_FILE).write_text(saved)
    assert run.main(["qg", "--name", "cut", "--extend", "2", "--storage", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith(f"error: extend: {sweep_dir / extend.SETTINGS_FILE}")
        and len(error.splitlines()) == 1
    )
