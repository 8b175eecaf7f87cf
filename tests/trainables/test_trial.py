import json
import math
import shutil

import pytest
import torch

from trainables import loop, models, trial
from trainables.config import ConfigError
from trainables.methods import METHODS

BASE = {"task": "qg", "method": "lora", "max_steps": 6, "eval_every": 3, "eval_examples": 4, "batch_size": 4}


def _run(tiny_model, tmp_path, resume_from=None, **changes):
    kept = {}

    def keep(metrics, checkpoint):
        kept[metrics["step"]] = metrics
        if checkpoint is not None:
            shutil.copytree(checkpoint, tmp_path / f"step-{metrics['step']}", dirs_exist_ok=True)

    values = {**BASE, "model": tiny_model, "learning_rate": 1e-2, **changes}
    trial.execute(values, keep, resume_from, record_dir=tmp_path)
    return kept


def test_checkpoint_round_trip_and_exact_resume(tiny_model, tmp_path):
    straight = _run(tiny_model, tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "step-3"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    resumed = _run(tiny_model, tmp_path / "resumed", resume_from=checkpoint)
    assert list(resumed) == [6]
    for metric in ("train_loss", "val_loss"):
        assert resumed[6][metric] == pytest.approx(straight[6][metric], rel=1e-5)


def test_trial_record_describes_the_trial(tiny_model, tmp_path):
    _run(tiny_model, tmp_path)
    record = json.loads((tmp_path / trial.RECORD_FILE).read_text())
    assert record["status"] == "completed" and record["error"] is None
    assert record["config"]["method"] == "lora"
    assert {"quality", "trainable_params", "peak_memory_mb", "wall_time_s", "cost_usd"} <= record[
        "metrics"
    ].keys()
    assert {"torch", "transformers", "peft", "bitsandbytes", "ray"} <= record["versions"].keys()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "sft"}, "method: unknown method 'sft'"),
        ({"rank": 0}, "rank: Input should be greater than or equal to 1"),
        (
            {"method": "adalora", "max_steps": 10, "adalora_tinit": 5, "adalora_tfinal": 5},
            "adalora_tinit + adalora_tfinal",
        ),
        ({"method": "adalora", "target_rank": 16, "rank": 8}, "target_rank: 16 is above the initial rank 8"),
        ({"learnin_rate": 0.1}, "learnin_rate: unknown option"),
        ({"task": "nope"}, "task: unknown task 'nope'"),
    ],
)
def test_config_errors_fail_before_the_model_loads(tiny_model, tmp_path, monkeypatch, changes, field):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(models, "load_model", must_not_load)
    with pytest.raises(ConfigError) as caught:
        _run(tiny_model, tmp_path, **changes)
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)
    record = json.loads((tmp_path / trial.RECORD_FILE).read_text())
    assert record["status"] == "failed" and field in record["error"]


def test_missing_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model: model path .* has no config\.json"):
        trial.prepare({**BASE, "model": str(tmp_path / "absent")})


def test_non_finite_loss_ends_training_with_that_reason(tiny_model):
    plan = trial.prepare({**BASE, "model": tiny_model})
    model = trial.load_peft_model(plan, tiny_model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(math.nan)
    tokenizer = models.load_tokenizer(tiny_model)
    features = loop.encode_examples(plan.task, tokenizer, plan.splits["train"].select(range(8)), 128)
    optimizer, scheduler = loop.make_optimizer(model, plan.config, plan.total_steps)
    with pytest.raises(loop.NonFiniteLoss, match="training loss became nan at step 1"):
        loop.train(
            model, features, plan.config, METHODS["lora"], plan.total_steps,
            optimizer, scheduler, loop.TrainState(), tokenizer.pad_token_id, lambda state: None,
        )  # fmt: skip


@pytest.mark.parametrize("shots", [0, 2])
def test_untouched_base_model_is_a_trial(tiny_model, tmp_path, shots):
    kept = _run(tiny_model, tmp_path, method="base", shots=shots)
    metrics = kept[0]
    assert metrics["trainable_params"] == 0 and metrics["train_time_s"] == 0.0
    assert 0.0 <= metrics["format_valid_rate"] <= 1.0 and metrics["latency_s"] > 0


def test_few_shot_prefix_uses_train_examples_only(tiny_model):
    plan = trial.prepare({**BASE, "model": tiny_model, "method": "base", "shots": 2})
    prefix = trial.few_shot_prefix(plan.task, plan.splits["train"], 2, seed=0)
    assert prefix.count("### Search queries:") == 2
    assert not any(question in prefix for question in plan.splits["test"]["question"])


def test_length_grouped_batches_cover_every_example_once_and_pad_little():
    lengths = [5, 50, 6, 48, 7, 52, 5, 49] * 8
    batches = loop.length_grouped_batches(lengths, batch_size=4, seed=1, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1
    assert batches == loop.length_grouped_batches(lengths, batch_size=4, seed=1, epoch=0)
    assert batches != loop.length_grouped_batches(lengths, batch_size=4, seed=1, epoch=1)
