import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from trainables import encoding, measure, models
from trainables.config import ConfigError
from trainables.evaluation import passes
from trainables.methods import METHODS
from trainables.training import loop, trial

BASE = {
    "task": "qg", "method": "lora", "max_steps": 6, "eval_every": 3, "eval_examples": 4, "full_eval_examples": 8,
    "batch_size": 4,
}  # fmt: skip


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


class Killed(Exception):
    """Stands for the process dying right after a report."""


class SkippingClock:
    """A stand-in for the time module that measure reads: the real clock, plus the time skipped."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.skipped


HOUR = 3600.0


def test_a_resumed_trial_adds_what_it_spends_to_what_it_spent_before(tiny_model, tmp_path, monkeypatch):
    """Killed after its first checkpoint and resumed (here on a cheaper machine): time and dollars
    count both processes."""
    real_evaluate, clock = trial.evaluate, SkippingClock()

    def slow_evaluate(*args, **kwargs):
        # The first process spends more time than the resumed one alone will, all before its
        # checkpoint: its evaluation takes an hour by the clock the meter reads, without waiting one.
        clock.skipped += HOUR
        return real_evaluate(*args, **kwargs)

    def keep_then_die(metrics, checkpoint):
        shutil.copytree(checkpoint, tmp_path / "checkpoint")
        before.update(metrics)
        raise Killed

    before, after = {}, []
    values = {**BASE, "model": tiny_model, "learning_rate": 1e-2}
    monkeypatch.setattr(trial, "evaluate", slow_evaluate)
    monkeypatch.setattr(measure, "time", clock)
    with pytest.raises(Killed):
        trial.execute(values, keep_then_die, share=measure.Share(gpus=0, cpus=1000))
    monkeypatch.undo()
    assert before["step"] == 3
    assert before["wall_time_s"] >= HOUR and before["eval_time_s"] >= HOUR  # the meter read that clock

    resumed = trial.execute(
        values, lambda metrics, _: after.append(metrics), tmp_path / "checkpoint", share=measure.Share(0, 1)
    )
    assert [metrics["step"] for metrics in after] == [6]
    for spent in ("cost_usd", "wall_time_s", "eval_time_s", "train_time_s"):
        assert resumed[spent] > before[spent], spent


def _reported_steps(tiny_model, record_dir, share: measure.Share, out_of_memory_at: set[int]) -> list[int]:
    """The steps a trial reports when its evaluation runs out of memory at the given calls (1-based)."""
    real_evaluate, calls, steps = trial.evaluate, [], []

    def evaluate_or_run_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) in out_of_memory_at:
            # What CUDA raises; no GPU here, so the error is raised where it would come from.
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_evaluate(*args, **kwargs)

    # The price is given: the GPU price table needs a CUDA device name.
    values = {**BASE, "model": tiny_model, "price_per_hour": 1.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trial, "evaluate", evaluate_or_run_out_of_memory)
        trial.execute(
            values, lambda metrics, _: steps.append(metrics["step"]), record_dir=record_dir, share=share
        )
    return steps


def test_out_of_memory_on_a_shared_gpu_is_retried_once_without_reporting_twice(tiny_model, tmp_path):
    # The second evaluation (step 6) runs out of memory; the retry evaluates steps 3 and 6 again.
    steps = _reported_steps(tiny_model, tmp_path, measure.Share(gpus=0.5, cpus=1), out_of_memory_at={2})
    assert steps == [3, 6]
    assert json.loads((tmp_path / trial.RECORD_FILE).read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("share", "out_of_memory_at"),
    [(measure.Share(gpus=1, cpus=1), {1}), (measure.Share(gpus=0.5, cpus=1), {1, 2})],
    ids=["whole-gpu", "shared-gpu-twice"],
)
def test_out_of_memory_is_the_configurations_failure_on_a_whole_gpu_or_a_second_time(
    tiny_model, tmp_path, share, out_of_memory_at
):
    with pytest.raises(torch.OutOfMemoryError):
        _reported_steps(tiny_model, tmp_path, share, out_of_memory_at)
    record = json.loads((tmp_path / trial.RECORD_FILE).read_text())
    assert record["status"] == "failed" and record["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert issubclass(torch.OutOfMemoryError, trial.DETERMINISTIC_FAILURES)  # Tune does not retry it again


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
        ({"rank": 0}, "lora.rank: Input should be greater than or equal to 1"),
        (
            {"method": "adalora", "max_steps": 10, "adalora.tinit": 5, "adalora.tfinal": 5},
            "adalora.tinit + adalora.tfinal",
        ),
        (
            {"method": "adalora", "target_rank": 16, "rank": 8},
            "adalora.target_rank: 16 is above the initial rank 8",
        ),
        (
            {"method": "adalora", "adalora_tinit": 5},
            "adalora_tinit: unknown option; did you mean adalora.tinit?",
        ),
        ({"method": "ia3", "rank": 8}, "rank: unknown option"),
        ({"neftune_alpha": -1}, "neftune_alpha: Input should be greater than or equal to 0"),
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


def test_neftune_noises_the_input_embeddings_while_training_only(tiny_model):
    model = models.load_model(tiny_model)
    embeddings = model.get_input_embeddings()
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = embeddings(ids)
    alpha = 5.0
    with loop.noisy_embeddings(model, alpha):
        model.train()
        noisy, again = embeddings(ids), embeddings(ids)
        assert 0 < (noisy - clean).abs().max() <= alpha / math.sqrt(clean.shape[1] * clean.shape[2])
        assert not torch.equal(noisy, again)
        model.eval()
        assert torch.equal(embeddings(ids), clean)
    model.train()
    assert torch.equal(embeddings(ids), clean)  # the hook went with the block


def test_a_trial_with_neftune_trains_on_noisy_embeddings_and_resumes_exactly(tiny_model, tmp_path):
    plain = _run(tiny_model, tmp_path / "plain")
    noisy = _run(tiny_model, tmp_path / "noisy", neftune_alpha=5.0)
    assert noisy[3]["train_loss"] != plain[3]["train_loss"]
    # The noise draws on the RNG state a checkpoint keeps, so a resumed trial draws what it would have.
    resumed = _run(tiny_model, tmp_path / "resumed", tmp_path / "noisy" / "step-3", neftune_alpha=5.0)
    for metric in ("train_loss", "val_loss"):
        assert resumed[6][metric] == pytest.approx(noisy[6][metric], rel=1e-5)


def test_missing_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model: model path .* has no config\.json"):
        trial.prepare({**BASE, "model": str(tmp_path / "absent")})


def test_non_finite_loss_ends_training_with_that_reason(tiny_model):
    plan = trial.prepare({**BASE, "model": tiny_model})
    model = trial.load_trainable_model(plan, tiny_model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(math.nan)
    tokenizer = models.load_tokenizer(tiny_model)
    features = encoding.encode_examples(plan.task, tokenizer, plan.splits["train"].select(range(8)), 128)
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


def test_evaluation_batches_hold_rows_of_similar_prompt_length_and_keep_the_periodic_rows_apart():
    lengths = [9, 1, 8, 2, 7, 3, 6, 4, 5, 10]
    batches = passes.row_batches(lengths, batch_size=3, head=4)
    assert sorted(row for batch in batches for row in batch) == list(range(len(lengths)))
    assert all(max(batch) < 4 or min(batch) >= 4 for batch in batches)
    assert batches[:2] == [[0, 2, 3], [1]]  # longest first, so the first batch sets the widest shape
    assert batches[2:] == [[9, 4, 6], [8, 7, 5]]


def _eos_biased(model, tokenizer, bias: float):
    """The tiny model with a fixed bias on EOS: +large always ends at once, -large never ends."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model


@pytest.mark.parametrize(("bias", "truncated", "new_tokens"), [(-1e4, 3, 9), (1e4, 0, 3)])
def test_generate_counts_the_rows_the_budget_cut(tiny_model, bias, truncated, new_tokens):
    tokenizer = models.load_tokenizer(tiny_model)
    model = _eos_biased(models.load_model(tiny_model), tokenizer, bias)
    prompts = ["Where is", "A much longer prompt than the others, padded on the left", "Hi"]
    generations = passes.generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    assert generations.truncated == truncated and generations.new_tokens == new_tokens


def test_evaluate_reports_the_share_of_answers_cut_by_the_budget(tiny_model):
    plan = trial.prepare({**BASE, "model": tiny_model, "method": "base", "eval_examples": 2})
    tokenizer = models.load_tokenizer(tiny_model)
    model = _eos_biased(models.load_model(tiny_model), tokenizer, -1e4)
    metrics = trial.evaluate(model, tokenizer, plan, "").metrics
    assert metrics["truncated_rate"] == 1.0
    assert metrics["max_new_tokens"] == plan.task.generation_budget(tokenizer, plan.uncapped_train)


def test_only_the_final_evaluation_scores_the_whole_validation_split_and_times_generation(
    tiny_model, tmp_path
):
    kept = _run(tiny_model, tmp_path)
    periodic, final = kept[3], kept[6]
    assert trial.FULL_VALIDATION_QUALITY not in periodic and "latency_s" not in periodic
    assert final["full_validation_examples"] == BASE["full_eval_examples"]  # the cap; else the whole split
    assert 0.0 <= final[trial.FULL_VALIDATION_QUALITY] <= 1.0
    assert final["latency_per_token_s"] * final["max_new_tokens"] == pytest.approx(final["latency_s"])
    assert final["gen_tokens_per_s"] == pytest.approx(1 / final["latency_per_token_s"])


def test_evaluation_rows_are_the_fixed_head_or_the_whole_split(tiny_model):
    plan = trial.prepare({**BASE, "model": tiny_model, "full_eval_examples": None})
    validation = list(plan.splits["validation"])
    assert trial.evaluation_rows(plan, whole_split=False) == validation[: BASE["eval_examples"]]
    assert trial.evaluation_rows(plan, whole_split=True) == validation


def test_fixed_length_generation_runs_past_eos(tiny_model):
    tokenizer = models.load_tokenizer(tiny_model)
    model = _eos_biased(models.load_model(tiny_model), tokenizer, 1e4)  # would end at once
    prompts = ["Where is", "Hi"]
    assert passes.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1).new_tokens == 2
    timed = passes.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1, fixed_length=True)
    assert timed.new_tokens == 10


def test_the_last_evaluation_scores_its_periodic_rows_from_the_whole_splits_generations(
    tiny_model, monkeypatch
):
    # Batches of 3 do not divide the 4 periodic rows: no batch holds periodic and other rows.
    plan = trial.prepare({**BASE, "model": tiny_model, "eval_batch_size": 3})
    tokenizer, model = models.load_tokenizer(tiny_model), models.load_model(tiny_model)
    alone = trial.evaluate(model, tokenizer, plan, "").metrics
    real_evaluation, generated_rows = passes.losses_and_generations, []

    def counted(model, tokenizer, features, *args, **kwargs):
        generated_rows.append(len(features))
        return real_evaluation(model, tokenizer, features, *args, **kwargs)

    monkeypatch.setattr(passes, "losses_and_generations", counted)
    last = trial.evaluate_last(model, tokenizer, plan, "")

    assert generated_rows == [BASE["full_eval_examples"]]  # the whole split once; its head not again
    assert last[trial.FULL_VALIDATION_QUALITY] is not None
    for name, value in alone.items():
        assert last[name] == (value if isinstance(value, str) else pytest.approx(value)), name


def test_a_kept_checkpoint_is_measured_without_generating_its_periodic_rows_again(
    tiny_model, tmp_path, monkeypatch
):
    _run(tiny_model, tmp_path, eval_batch_size=3)
    values = {**BASE, "model": tiny_model, "eval_batch_size": 3}
    # The last evaluation measures the whole split itself: only the earlier ones keep their rows.
    assert not (tmp_path / "step-6" / trial.PERIODIC_ROWS_FILE).exists()
    loaded = trial.load_checkpoint(values, tmp_path / "step-3", "validation")
    assert len(loaded.periodic.generations.texts) == BASE["eval_examples"]
    assert trial.load_checkpoint(values, tmp_path / "step-3", "test").periodic is None
    real_evaluation, generated_rows = passes.losses_and_generations, []

    def counted(model, tokenizer, features, max_new_tokens, batches, *args):
        generated_rows.append(sum(len(batch) for batch in batches))
        return real_evaluation(model, tokenizer, features, max_new_tokens, batches, *args)

    monkeypatch.setattr(passes, "losses_and_generations", counted)
    reused = loaded.evaluate()
    generated_again = dataclasses.replace(loaded, periodic=None).evaluate()

    assert generated_rows == [BASE["full_eval_examples"] - BASE["eval_examples"], BASE["full_eval_examples"]]
    assert reused.generations.texts == generated_again.generations.texts
    assert reused.per_example == generated_again.per_example
    assert reused.losses.sums == pytest.approx(generated_again.losses.sums, rel=1e-6)
    assert reused.metrics["quality"] == generated_again.metrics["quality"]


class _Planted:
    """What a hostile checkpoint holds: unpickling it would touch a file (run code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_a_checkpoint_from_elsewhere_runs_none_of_its_code(tmp_path):
    import pickle

    from safetensors.torch import save_file

    model = torch.nn.Linear(2, 2)
    save_file({name: p.detach() for name, p in model.named_parameters()}, tmp_path / trial.TRAINABLE_STATE)
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Planted(marker)}, tmp_path / trial.OPTIMIZER_STATE)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(pickle.UnpicklingError):
        trial.restore_checkpoint(tmp_path, METHODS["lora"], model, optimizer, None)
    assert not marker.exists()
