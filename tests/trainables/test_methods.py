"""Every registered method trains on the tiny model on CPU, and its training loss goes down."""

import shutil

import bitsandbytes as bnb
import pytest

from trainables import trial
from trainables.methods import METHODS

# One row per method: the learning rate that moves it within a few steps on random weights.
LEARNING_RATES = {"qlora": 1e-2, "lora": 1e-2, "adalora": 2e-2, "ia3": 1e-1, "prompt_tuning": 1e-1}


def test_every_method_has_a_row():
    assert set(LEARNING_RATES) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_loss_goes_down(tiny_model, method):
    reports = []
    values = {
        "task": "qg",
        "method": method,
        "model": tiny_model,
        "learning_rate": LEARNING_RATES[method],
        "max_steps": 8,
        "eval_every": 4,
        "eval_examples": 4,
        "batch_size": 4,
        "train_examples": 4,  # one fixed batch: the loss moves by learning, not by batch noise
        "warmup_ratio": 0.0,
    }
    final = trial.execute(values, lambda metrics, checkpoint: reports.append(metrics))
    assert [r["step"] for r in reports] == [4, 8]
    assert reports[1]["train_loss"] < reports[0]["train_loss"]
    assert final["status"] == "completed"
    assert final["trainable_params"] > 0 and 0 < final["trainable_share"] < 1
    assert final["adapter_bytes"] > 0 and final["latency_s"] > 0 and final["train_tokens_per_s"] > 0
    assert {"quality", "val_loss", "perplexity", "format_valid_rate", "cost_usd"} <= final.keys()


def test_qlora_really_runs_bitsandbytes_4bit_layers(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "qlora", "model": tiny_model})
    model = trial.load_peft_model(plan, tiny_model)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "no 4-bit layers"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert all(m.weight.quant_state.state2 is not None for m in quantized), "double quantization off"


def test_adalora_gets_the_real_step_count(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "adalora", "model": tiny_model, "max_steps": 50})
    config = trial.load_peft_model(plan, tiny_model).peft_config["default"]
    assert config.total_step == 50
    assert config.tinit + config.tfinal < 50


def test_prompt_tuning_starts_from_the_task_instruction(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "prompt_tuning", "model": tiny_model})
    config = trial.load_peft_model(plan, tiny_model).peft_config["default"]
    assert config.prompt_tuning_init_text == plan.task.instruction


@pytest.mark.parametrize("method", sorted(METHODS))
def test_saved_adapter_reloads_for_scoring(tiny_model, tmp_path, method):
    def keep(metrics, checkpoint):
        if checkpoint is not None:
            shutil.copytree(checkpoint, tmp_path / "checkpoint", dirs_exist_ok=True)

    values = {"task": "qg", "method": method, "model": tiny_model, "max_steps": 2, "eval_every": 2,
              "eval_examples": 4, "batch_size": 4}  # fmt: skip
    trained = trial.execute(values, keep)
    scores = trial.score_checkpoint(
        values | {"eval_examples": 4}, tmp_path / "checkpoint", split="validation"
    )
    assert scores["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-4) or len(scores) > 0
    assert 0.0 <= scores["format_valid_rate"] <= 1.0
