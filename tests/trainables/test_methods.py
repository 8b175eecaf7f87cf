"""Every registered method trains on the tiny model on CPU, and its training loss goes down."""

import shutil

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainables import encoding, models
from trainables.evaluation import passes
from trainables.methods import METHODS, is_prompt_learning, trained_methods
from trainables.training import loop, trial

# The learning rate that moves a method within a few steps on random weights: LoRA's, unless a
# method needs another (a new LoRA variant needs no row).
LEARNING_RATES = {"adalora": 2e-2, "ia3": 1e-1, "prompt_tuning": 1e-1, "full": 1e-3}


def learning_rate(method: str) -> float:
    return LEARNING_RATES.get(method, 1e-2)


@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_method_trains_and_loss_goes_down(tiny_model, method):
    reports = []
    values = {
        "task": "qg",
        "method": method,
        "model": tiny_model,
        "learning_rate": learning_rate(method),
        "max_steps": 8,
        "eval_every": 4,
        "eval_examples": 4,
        "full_eval_examples": 4,  # the final whole-split evaluation too: what is checked is training
        "batch_size": 4,
        "train_examples": 4,  # one fixed batch: the loss moves by learning, not by batch noise
        "warmup_ratio": 0.0,
    }
    final = trial.execute(values, lambda metrics, checkpoint: reports.append(metrics))
    assert [r["step"] for r in reports] == [4, 8]
    assert reports[1]["train_loss"] < reports[0]["train_loss"]
    assert final["status"] == "completed"
    assert final["trainable_params"] > 0 and 0 < final["trainable_share"] <= 1
    assert (final["trainable_share"] == 1) == METHODS[method].standalone  # only full trains every weight
    assert final["adapter_bytes"] > 0 and final["latency_s"] > 0 and final["train_tokens_per_s"] > 0
    assert {"quality", "val_loss", "perplexity", "format_valid_rate", "cost_usd"} <= final.keys()


@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_the_loss_from_target_logits_alone_is_the_loss_from_every_logit(tiny_model, method):
    plan = trial.prepare({"task": "qg", "method": method, "model": tiny_model, "max_steps": 8})
    tokenizer = models.load_tokenizer(tiny_model)
    rows = encoding.encode_examples(plan.task, tokenizer, plan.splits["train"].select(range(4)), 128)
    model = trial.load_trainable_model(plan, tiny_model)
    with torch.no_grad():  # away from the identity start, so that the adapter counts
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    model.train()  # the training loss, with what a method adds to it (AdaLoRA's orthogonality)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # but the same network in both passes
    batch = encoding.collate(rows, tokenizer.pad_token_id, torch.device("cpu"))
    kept = encoding.target_logits_only(model, rows, batch)
    prompt_learning = is_prompt_learning(model)
    assert kept["labels"].shape[1] < batch["labels"].shape[1] or prompt_learning
    assert torch.allclose(model(**kept).loss, model(**batch).loss, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_right_padded_batches_need_no_padding_mask(tiny_model, method):
    """collate leaves the attention mask out: with right padding, the loss and every gradient are
    those with a padding mask."""
    plan = trial.prepare({"task": "qg", "method": method, "model": tiny_model, "max_steps": 8})
    tokenizer = models.load_tokenizer(tiny_model)
    rows = encoding.encode_examples(plan.task, tokenizer, plan.splits["train"].select(range(4)), 1024)
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(set(lengths)) > 1  # the batch is padded
    batch = encoding.collate(rows, tokenizer.pad_token_id, torch.device("cpu"))
    padding_mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    model = trial.load_trainable_model(plan, tiny_model)
    model.eval()  # no dropout: the same network in both passes
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]

    def loss_and_gradients(**extra):
        loss = model(**batch, **extra).loss
        return loss.detach(), torch.autograd.grad(loss, trainable)

    unmasked, unmasked_gradients = loss_and_gradients()
    masked, masked_gradients = loss_and_gradients(attention_mask=padding_mask)
    assert torch.allclose(unmasked, masked, rtol=1e-5)
    for without, with_mask in zip(unmasked_gradients, masked_gradients, strict=True):
        assert torch.allclose(without, with_mask, rtol=1e-4, atol=1e-7)


def test_qlora_really_runs_bitsandbytes_4bit_layers(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "qlora", "model": tiny_model})
    model = trial.load_trainable_model(plan, tiny_model)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "no 4-bit layers"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert all(m.weight.quant_state.state2 is not None for m in quantized), "double quantization off"


def test_adalora_gets_the_real_step_count(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "adalora", "model": tiny_model, "max_steps": 50})
    config = trial.load_trainable_model(plan, tiny_model).peft_config["default"]
    assert config.total_step == 50
    assert config.tinit + config.tfinal < 50


def test_prompt_tuning_starts_from_the_task_instruction(tiny_model):
    plan = trial.prepare({"task": "qg", "method": "prompt_tuning", "model": tiny_model})
    config = trial.load_trainable_model(plan, tiny_model).peft_config["default"]
    assert config.prompt_tuning_init_text == plan.task.instruction


@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_saved_adapter_reloads_for_scoring(tiny_model, tmp_path, method):
    def keep(metrics, checkpoint):
        if checkpoint is not None:
            shutil.copytree(checkpoint, tmp_path / "checkpoint", dirs_exist_ok=True)

    # The whole split, capped at the 4 rows the trial's own evaluation scores.
    values = {"task": "qg", "method": method, "model": tiny_model, "max_steps": 2, "eval_every": 2,
              "eval_examples": 4, "full_eval_examples": 4, "batch_size": 4,
              "learning_rate": learning_rate(method)}  # fmt: skip
    trained = trial.execute(values, keep)
    scores = trial.score_checkpoint(values, tmp_path / "checkpoint", split="validation").metrics
    assert scores["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-4)  # the trained model again
    untouched = trial.score_base_model(values, split="validation").metrics
    assert scores["val_loss"] != pytest.approx(untouched["val_loss"], rel=1e-4)  # not the base model
    assert 0.0 <= scores["format_valid_rate"] <= 1.0


FULL = {"task": "qg", "method": "full", "learning_rate": 1e-3, "eval_examples": 4, "batch_size": 4}


def test_full_fine_tuning_trains_every_weight_and_saves_a_model_from_pretrained_loads(tiny_model, tmp_path):
    plan = trial.prepare(FULL | {"model": tiny_model, "max_steps": 4, "warmup_ratio": 0.0})
    tokenizer = models.load_tokenizer(tiny_model)
    model = trial.load_trainable_model(plan, tiny_model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    features = encoding.encode_examples(plan.task, tokenizer, plan.splits["train"].select(range(16)), 128)
    optimizer, scheduler = loop.make_optimizer(model, plan.config, plan.total_steps)
    loop.train(
        model, features, plan.config, METHODS["full"], plan.total_steps,
        optimizer, scheduler, loop.TrainState(), tokenizer.pad_token_id, lambda state: None,
    )  # fmt: skip
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert moved == list(before), "some weights did not train"

    METHODS["full"].save(model, tokenizer, tmp_path / "saved")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        f.name for f in (tmp_path / "saved").iterdir()
    }
    assert not (tmp_path / "saved" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", use_safetensors=True)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")  # a standalone directory
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    prompts = [plan.task.format_prompt(example) for example in plan.splits["validation"].select(range(3))]
    in_memory = passes.generate(model, tokenizer, prompts, 12, 3).texts
    assert passes.generate(reloaded, tokenizer, prompts, 12, 3).texts == in_memory
    inputs = tokenizer(prompts[0], return_tensors="pt")
    with torch.no_grad():
        trained_logits = model(**inputs).logits
        assert torch.allclose(reloaded(**inputs).logits, trained_logits, atol=1e-5)
        base_logits = models.load_model(tiny_model)(**inputs).logits
    assert not torch.allclose(base_logits, trained_logits, atol=1e-3)  # it is the trained model, not the base


def _run_keeping_checkpoints(values: dict, directory, resume_from=None) -> dict[int, dict]:
    """The metrics of each evaluation by step; each checkpoint is kept as directory/step-N."""
    kept = {}

    def keep(metrics, checkpoint):
        kept[metrics["step"]] = metrics
        if checkpoint is not None:
            shutil.copytree(checkpoint, directory / f"step-{metrics['step']}", dirs_exist_ok=True)

    trial.execute(values, keep, resume_from)
    return kept


def test_full_fine_tuning_resumes_exactly_from_its_checkpoint(tiny_model, tmp_path):
    def run(directory, resume_from=None):
        values = FULL | {"model": tiny_model, "max_steps": 4, "eval_every": 2}
        return _run_keeping_checkpoints(values, directory, resume_from)

    straight = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "step-2"
    # The trainable state of full fine-tuning is the whole model.
    state = load_file(checkpoint / trial.TRAINABLE_STATE)
    assert sum(t.numel() for t in state.values()) == straight[4]["trainable_params"]
    assert straight[4]["adapter_bytes"] >= 4 * straight[4]["trainable_params"]  # fp32 weights on CPU
    resumed = run(tmp_path / "resumed", resume_from=checkpoint)
    assert list(resumed) == [4]
    for metric in ("train_loss", "val_loss"):
        assert resumed[4][metric] == pytest.approx(straight[4][metric], rel=1e-5)


# AdaLoRA's final allocation comes at step total_steps - tfinal = 6: it reallocates ranks up to
# there, and masks every later step with the rank pattern it fixed then.
ADALORA = {"task": "qg", "method": "adalora", "learning_rate": learning_rate("adalora"), "max_steps": 12,
           "eval_every": 2, "eval_examples": 4, "batch_size": 4, "adalora.tinit": 2, "adalora.tfinal": 6}  # fmt: skip


@pytest.fixture(scope="module")
def adalora_straight(tiny_model, tmp_path_factory):
    """An AdaLoRA run from start to end, with a checkpoint every 2 steps."""
    directory = tmp_path_factory.mktemp("adalora-straight")
    return directory, _run_keeping_checkpoints(ADALORA | {"model": tiny_model}, directory)


@pytest.mark.parametrize("resume_at", [4, 8], ids=["before-final-allocation", "past-final-allocation"])
def test_adalora_resumes_exactly_before_and_past_its_final_allocation(
    tiny_model, tmp_path, adalora_straight, resume_at
):
    directory, straight = adalora_straight
    resumed = _run_keeping_checkpoints(
        ADALORA | {"model": tiny_model}, tmp_path, directory / f"step-{resume_at}"
    )
    assert list(resumed) == list(range(resume_at + 2, 13, 2))
    for metric in ("train_loss", "val_loss"):
        assert resumed[12][metric] == pytest.approx(straight[12][metric], rel=1e-5)
    # The same ranks survive: the saved adapter keeps only the allocated singular values.
    shapes = [
        {
            name: t.shape
            for name, t in load_file(run / "step-12" / "adapter" / "adapter_model.safetensors").items()
        }
        for run in (directory, tmp_path)
    ]
    assert shapes[0] == shapes[1]
