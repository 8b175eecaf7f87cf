"""Smoke sweeps for the NER and QA tasks and for a user's YAML task file, end to end on real Ray."""

import json
import subprocess
import sys

import polars as pl
import pytest

from trainables.methods import METHODS as REGISTRY

pytestmark = pytest.mark.slow
TASKS = ["ner", "qa", "capitals.yaml"]
# The trained methods left out of the default sweep (the main smoke sweep runs the others): one
# --methods away, they train, rank and are picked as winners. Dealt out over the task sweeps in
# turn, so each runs in one of them and a new opt-in method adds no sweep.
OPT_IN = [name for name, method in REGISTRY.items() if method.trains and not method.in_default_sweep]


def opt_in_methods(task: str) -> list[str]:
    return OPT_IN[TASKS.index(task) :: len(TASKS)] or OPT_IN[:1]


TASK_FILE = """\
name: capitals
train: capitals.jsonl
input_fields: [country]
output_field: capital
prompt: |
  Name the capital city.
  ### Country: {country}
  ### Capital:
metric: jaccard
"""
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Austria": "Vienna", "Peru": "Lima"}


def _capitals_task(directory) -> str:
    rows = [{"country": country, "capital": capital} for country, capital in CAPITALS.items()] * 8
    (directory / "capitals.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "capitals.yaml").write_text(TASK_FILE)
    return str(directory / "capitals.yaml")


def test_every_opt_in_method_runs_in_a_task_sweep():
    assert sorted(m for task in TASKS for m in opt_in_methods(task)) == sorted(OPT_IN)


@pytest.mark.parametrize("task", TASKS)
def test_smoke_sweep_of_a_task(task, tiny_model, tmp_path):
    name = task.removesuffix(".yaml")
    methods = opt_in_methods(task)
    argument = _capitals_task(tmp_path) if task.endswith(".yaml") else task
    command = [
        sys.executable, "-m", "sweeps.run", argument, "--smoke", "--model", tiny_model, "--methods", ",".join(methods),
        "--storage", str(tmp_path / "results"), "--name", "smoke", "--concurrency", "2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = tmp_path / "results" / name / "smoke"
    trials = pl.read_csv(sweep_dir / "trials.csv")
    assert set(trials["method"]) == {*methods, "base"}
    assert trials["quality"].is_not_null().all()
    winners = json.loads((sweep_dir / "winners.json").read_text())["winners"]
    assert winners and all(winner["id"].startswith(f"{name}-") for winner in winners)
    assert trials.filter(pl.col("method") != "base")["status"].is_in(["completed", "stopped_early"]).all()
    assert all("quality" in winner["test"] for winner in winners)
    # Every LoRA variant merges and exports as a plain LoRA, except DoRA (its magnitudes): merged only.
    assert all(
        {"merged", "lora"} - {*winner["exports"]} == ({"lora"} if winner["method"] == "dora" else set())
        for winner in winners
    )
