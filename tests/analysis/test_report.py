import json

import polars as pl
import pytest
from peft import PeftModel

from analysis import load, report
from trainables import models
from trainables.methods import METHODS

pytestmark = pytest.mark.slow


def test_sweep_ends_with_a_report_that_embeds_its_plots_and_names_every_method(smoke_sweep):
    done, sweep_dir = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    page = (sweep_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert all(method in page for method in [*METHODS, "base"])
    for name in ("pareto_cost", "pareto_latency", "learning_curves", "quality_by_method"):
        assert (sweep_dir / f"{name}.png").stat().st_size > 1000
    board = pl.read_parquet(sweep_dir / "leaderboard.parquet")
    assert board["pareto"].any() and board["position"].to_list() == list(range(1, board.height + 1))
    assert "## Per method" in done.stdout


def test_winners_load_with_peft_and_carry_test_scores(smoke_sweep):
    _, sweep_dir = smoke_sweep
    winners = json.loads((sweep_dir / report.WINNERS_FILE).read_text())["winners"]
    assert 1 <= len(winners) <= 3
    for winner in winners:
        assert winner["id"].startswith(f"qg-{winner['method'].replace('_', '-')}-")
        assert 0.0 <= winner["test"]["format_valid_rate"] <= 1.0 and "quality" in winner["test"]
        base = models.load_model(winner["base_model"], quantize_4bit=winner["quantize_4bit"])
        loaded = PeftModel.from_pretrained(base, winner["adapter_path"])
        assert loaded.active_adapter == "default"


def test_report_cli_rebuilds_with_other_weights(smoke_sweep, capsys):
    _, sweep_dir = smoke_sweep
    assert report.main([str(sweep_dir), "--weights", "quality=1,cost=0", "--top", "1", "--no-test"]) == 0
    assert len(json.loads((sweep_dir / report.WINNERS_FILE).read_text())["winners"]) == 1


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
