import json
import re
import shutil
from pathlib import Path

import plotly.offline
import polars as pl
import pytest
from peft import PeftModel

from analysis import browser, load, report
from serve.adapters import Choice, load_registry
from trainables import models
from trainables.methods import METHODS
from trainables.training import trial
from trainables.winners import WINNERS_FILE

pytestmark = pytest.mark.slow

# The report's four figures, then Optuna's optimisation history and parameter importances.
FIGURES = 6
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"


def test_sweep_ends_with_a_self_contained_report_that_names_every_method(smoke_sweep):
    done, sweep_dir = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    page = (sweep_dir / "report.html").read_text()
    assert page.count('class="plotly-graph-div"') == FIGURES
    assert plotly.offline.get_plotlyjs() in page  # inlined; the browser test renders it offline
    assert "shape: (" not in page  # a table, not polars' text
    assert all(method in page for method in [*(m for m in METHODS if METHODS[m].in_default_sweep), "base"])
    board = pl.read_parquet(sweep_dir / "leaderboard.parquet")
    assert board["pareto"].any() and board["position"].to_list() == list(range(1, board.height + 1))
    # Full fine-tuning is ranked like the others; its size is the whole model it saves.
    full = board.filter(pl.col("method") == "full")
    assert full.height >= 1 and full["utility"].is_not_null().all()
    lightest_full = full["adapter_bytes"].min()
    assert lightest_full > board.filter(pl.col("method").is_in(["lora", "ia3"]))["adapter_bytes"].max()
    assert "## Per method" in done.stdout
    # How far prompt lookup's drafts held, the mean over the trials' evaluations, on the page and the terminal.
    lengths = board["accepted_draft_length"].drop_nulls()
    stated = f"Prompt lookup: {lengths.mean():.2f} draft tokens kept per draft checked on qg"
    assert not lengths.is_empty() and stated in page and stated in done.stdout


def test_the_terminal_shows_one_line_per_trial_and_each_stage_s_state_on_two_screens(smoke_sweep):
    done, sweep_dir = smoke_sweep
    trials = pl.read_csv(sweep_dir / "trials.csv")
    lines = done.stdout.splitlines()
    finished = [line for line in lines if " trial " in line and line.startswith("[")]
    assert len(finished) == trials.height, done.stdout
    for stage in ("search", "finalists"):  # each stage ends with its state: all planned done
        assert re.search(rf"^\[{stage}\] (\d+)/\1 trials done .* \| best ", done.stdout, re.MULTILINE), stage
    assert len(lines) <= 100, done.stdout  # two screens, from start to report
    for noise in (
        "Configuration for experiment",
        "Trial status",
        "snapshotting",
        "Some regimes for parameter",
        "Target and region quantiles",
    ):
        assert noise not in done.stdout + done.stderr


# Before test_report_cli_rebuilds_with_other_weights rewrites the report without its verdict.
@pytest.mark.skipif(
    browser.CHROMIUM is None, reason="no Chromium on PATH: install Debian's chromium (.ci/run does)"
)
def test_the_report_draws_every_plot_in_a_real_browser(smoke_sweep):
    _, sweep_dir = smoke_sweep
    board = pl.read_parquet(sweep_dir / "leaderboard.parquet")
    with browser.opened(sweep_dir / "report.html") as opened:
        page = opened.page
        drawn = page.eval_on_selector_all(
            ".plotly-graph-div",
            "plots => plots.map(plot => plot.querySelectorAll('svg.main-svg .trace').length)",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
        pareto = page.locator(".plotly-graph-div").first
        pareto.locator(".scatterlayer .point").first.hover(force=True)
        hover = pareto.locator(".hoverlayer").text_content()
        page.locator("#leaderboard th", has_text="position").click()
        positions = page.locator("#leaderboard tbody td:first-child").all_text_contents()
    assert len(drawn) == FIGURES and all(elements > 0 for elements in drawn), drawn
    assert opened.errors == []
    trial_id, method = hover.removeprefix("trial ").split(" ", 1)
    row = board.filter(pl.col("trial_id") == trial_id)
    assert method.startswith(f"({row['method'].item()})") and "=" in method  # and its hyperparameters
    assert [int(position) for position in positions] == list(range(board.height, 0, -1))  # sorted by it


def test_winners_reload_and_carry_test_scores(smoke_sweep):
    _, sweep_dir = smoke_sweep
    winners = json.loads((sweep_dir / WINNERS_FILE).read_text())["winners"]
    curves = load.curves(sweep_dir)
    assert 1 <= len(winners) <= 4  # --winners 3, and the best on quality if the trade-off left it out
    best = max(winner["validation"]["quality"] for winner in winners)
    assert [w["best_on_validation"] for w in winners] == [w["validation"]["quality"] == best for w in winners]
    for winner in winners:
        assert winner["id"].startswith(f"qg-{winner['method'].replace('_', '-')}-")
        assert 0.0 <= winner["test"]["format_valid_rate"] <= 1.0 and "quality" in winner["test"]
        method = METHODS[winner["method"]]
        loaded = method.load_trained(
            winner["base_model"], sweep_dir / winner["adapter_path"], winner["quantize_4bit"]
        )
        assert isinstance(loaded, PeftModel) != method.standalone  # full: a whole model of its own
        # What winners.json points at is what was trained and ranked: on the rows its trial
        # evaluated at the served step, the reloaded model gives the loss the trial reported there.
        plan = trial.prepare(winner["config"] | {"eval_split": "validation"})
        tokenizer = models.load_tokenizer(models.resolve(winner["base_model"]))
        again = trial.evaluate(loaded, tokenizer, plan, "").metrics
        served = pl.col("trial_id") == winner["trial_id"], pl.col("step") == winner["validation"]["step"]
        assert again["val_loss"] == pytest.approx(curves.filter(*served)["val_loss"].item(), rel=1e-5)


def test_a_sweep_folder_copied_elsewhere_still_serves_and_leaks_no_path(smoke_sweep, tmp_path):
    _, sweep_dir = smoke_sweep
    text = (sweep_dir / WINNERS_FILE).read_text()
    for winner in json.loads(text)["winners"]:
        assert (
            not Path(winner["adapter_path"]).is_absolute()
            and not Path(winner["checkpoint_path"]).is_absolute()
        )
    assert str(sweep_dir) not in text and str(sweep_dir) not in (sweep_dir / "report.html").read_text()
    moved = tmp_path / "elsewhere" / "qg-sweep"
    shutil.copytree(sweep_dir, moved)
    registry = load_registry([moved])
    assert len(registry.adapters) == len(json.loads(text)["winners"])
    for adapter in registry.adapters.values():
        assert adapter.path.is_relative_to(moved) and (adapter.path / "adapter_config.json").is_file() != (
            adapter.method == "full"
        )


def test_winners_json_lists_every_trial_for_a_server_to_name(smoke_sweep):
    """The leaderboard's trials, in its order, each with its kept checkpoint's adapter: --pareto
    serves the front's, and a winner's entry points where its trial's does."""
    _, sweep_dir = smoke_sweep
    saved = json.loads((sweep_dir / WINNERS_FILE).read_text())
    board = pl.read_parquet(sweep_dir / "leaderboard.parquet")
    trials = saved["trials"]
    assert [t["trial_id"] for t in trials] == board["trial_id"].to_list()
    for listed, row in zip(trials, board.iter_rows(named=True), strict=True):
        assert (listed["status"], listed["pareto"]) == (row["status"], bool(row["pareto"]))
        assert (listed["adapter_path"] is None) == (row["best_checkpoint"] is None)
    by_trial = {listed["trial_id"]: listed for listed in trials}
    for winner in saved["winners"]:
        listed = by_trial[winner["trial_id"]]
        assert (listed["id"], listed["adapter_path"]) == (winner["id"], winner["adapter_path"])
    front = [t["id"] for t in trials if t["pareto"] and t["adapter_path"] is not None]
    assert front and list(load_registry([sweep_dir], Choice(pareto=True)).adapters) == front


def test_finalists_rank_on_the_mean_of_their_seeds(smoke_sweep):
    _, sweep_dir = smoke_sweep
    every_run = load.load(sweep_dir)
    board = pl.read_parquet(sweep_dir / "leaderboard.parquet")
    finalists = board.filter(pl.col("seeds") == 2)
    reruns = every_run.filter(pl.col("finalist_rerun"))
    # A re-run joins its finalist when both trained as long; one of a finalist ASHA stopped early
    # trained longer, and ranks as a configuration of its own.
    originals = every_run.filter(~pl.col("finalist_rerun")).select(
        "config_without_seed", original_steps="steps"
    )
    joined = reruns.join(originals, on="config_without_seed").select(
        pl.col("steps") == pl.col("original_steps")
    )
    same_length = joined.to_series().sum()
    assert finalists.height == same_length >= 1
    assert board["finalist_rerun"].sum() == reruns.height - same_length
    for row in finalists.iter_rows(named=True):
        runs = every_run.filter(pl.col("config_without_seed") == row["config_without_seed"])
        assert sorted(runs["seed"]) == [0, 1] and runs["steps"].n_unique() == 1
        assert row["best_quality"] == pytest.approx(runs["best_quality"].mean())
        assert row["quality_std"] == pytest.approx(runs["best_quality"].std(), nan_ok=True)


def test_winners_carry_intervals_and_comparisons_and_the_report_opens_with_the_verdict(smoke_sweep):
    _, sweep_dir = smoke_sweep
    saved = json.loads((sweep_dir / WINNERS_FILE).read_text())
    winners = saved["winners"]
    methods = set(pl.read_parquet(sweep_dir / "leaderboard.parquet")["method"]) - {"base"}
    for position, winner in enumerate(winners):
        test = winner["test"]
        low, high = test["quality_ci95"]
        assert low <= test["quality"] <= high and test["examples"] == 16  # the smoke cap on whole splits
        against = [comparison["against"] for comparison in test["comparisons"]]
        assert against[0] == "the base model (0-shot)"
        for comparison in test["comparisons"]:
            low, high = comparison["ci95"]
            assert low <= comparison["difference"] <= high
            assert comparison["distinguishable"] == (not low <= 0 <= high)
        if position == 0 and len(winners) > 1:  # the top winner: also the runner-up
            assert against[-1] == winners[1]["id"] and len(set(against)) == len(against)
    # The method best on validation against every other method, each at the budget both trained.
    compared = saved["method_comparisons"]
    assert {c["method"] for c in compared} == {saved["methods"][0]["method"]}
    assert {c["against_method"] for c in compared} == methods - {saved["methods"][0]["method"]}
    for comparison in compared:
        low, high = comparison["ci95"]
        assert low <= comparison["difference"] <= high
        assert comparison["real_difference"] == (comparison["equal_budget"] and not low <= 0 <= high)
    page = (sweep_dir / "report.html").read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Per method</h2>")
    assert f"Verdict: {winners[0]['id']}" in page and "95% CI" in page


def test_a_full_fine_tuning_trial_is_scored_from_its_saved_model(smoke_sweep):
    _, sweep_dir = smoke_sweep
    runs = load.load(sweep_dir).filter((pl.col("method") == "full") & pl.col("best_checkpoint").is_not_null())
    row = runs.row(0, named=True)
    config = json.loads((Path(row["trial_dir"]) / trial.RECORD_FILE).read_text())["config"]
    loaded = trial.load_checkpoint(config, Path(row["best_checkpoint"]), "validation")
    assert not isinstance(loaded.model, PeftModel)
    # On the rows the trial itself evaluated, the reloaded model scores what the trained one did.
    again = trial.evaluate(loaded.model, loaded.tokenizer, loaded.plan, "").metrics
    curves = load.curves(sweep_dir)
    then = curves.filter((pl.col("trial_dir") == row["trial_dir"]) & (pl.col("step") == row["best_step"]))
    assert again["val_loss"] == pytest.approx(then["val_loss"].item(), rel=1e-5)
    assert again["quality"] == pytest.approx(row["best_quality"], abs=1e-6)


def test_report_cli_rebuilds_with_other_weights(smoke_sweep, capsys):
    _, sweep_dir = smoke_sweep
    weights = "quality=1,latency=0,cost=0,size=0"  # the top by utility is then the best on quality
    assert report.main([str(sweep_dir), "--weights", weights, "--top", "1", "--no-test"]) == 0
    (winner,) = json.loads((sweep_dir / WINNERS_FILE).read_text())["winners"]
    assert winner["best_on_validation"]


def test_not_an_experiment_is_exit_code_2(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no trials found" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2


def test_curves_read_the_nan_that_ray_writes_for_a_failed_trial(tmp_path):
    trial_dir = tmp_path / "t1-lora"
    trial_dir.mkdir()
    lines = ['{"trial_id": "t1", "method": "lora", "step": 2, "quality": 0.5, "val_loss": Infinity}',
             '{"trial_id": "t1", "method": "lora", "quality": NaN, "error": "NonFiniteLoss: loss: NaN"}']  # fmt: skip
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    curves = load.curves(tmp_path)
    assert curves["quality"].to_list() == [0.5, None] and curves["val_loss"].to_list() == [None, None]


def test_all_failed_trials_still_get_a_report_and_exit_code_2(tmp_path, capsys):
    trial_dir = tmp_path / "t1-lora"
    trial_dir.mkdir()
    record = {"trial_id": "t1", "status": "failed", "error": "NonFiniteLoss: training loss became nan at step 3",
              "config": {"task": "qg", "method": "lora", "model": "embedded"}, "metrics": {}}  # fmt: skip
    (trial_dir / "trial_record.json").write_text(json.dumps(record))
    assert report.main([str(tmp_path), "--no-test"]) == 2
    assert "every trained trial failed" in capsys.readouterr().err
    assert "NonFiniteLoss" in (tmp_path / "report.html").read_text()
