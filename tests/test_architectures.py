"""The architectures users bring (tests/architectures.py), each with every default method, and the
opt-in methods on three of them: a trial trains and its loss falls; evaluation answers as plain
greedy decoding; a checkpoint reloads to the answers it was saved with; the serving engine answers
as plain PEFT generation, alone and in one batch with other adapters and the base; each export
form answers as the adapter. Every check of one architecture runs on one test worker, which trains
each of its methods once."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from serve import export
from serve.engine import AdapterEngine, Request
from tests.architectures import ARCHITECTURES, SLIDING, SLIDING_WINDOW
from tests.greedy import NEAR_TIE, gap_where_they_part, greedy_text
from tests.serve.conftest import read_saved
from tests.trainables.test_methods import learning_rate
from trainables import models
from trainables.methods import METHODS
from trainables.record import ADAPTER_DIR
from trainables.training import trial

DEFAULT_METHODS = sorted(
    name for name, method in METHODS.items() if method.trains and method.in_default_sweep
)
OPT_IN_METHODS = sorted(
    name for name, method in METHODS.items() if method.trains and not method.in_default_sweep
)
OPT_IN_ARCHITECTURES = ("gpt2", "phi3", "gemma2")  # Conv1D layers, a fused qkv_proj, a sliding window
SERVED_TOKENS = 16
TASK = (
    "qa"  # the shortest answers of the shipped tasks (27 tokens with the test tokenizer), its prompts as long
)


def _cases(include=lambda method: True) -> list:
    pairs = [(t, m) for t in ARCHITECTURES for m in DEFAULT_METHODS]
    pairs += [(t, m) for t in OPT_IN_ARCHITECTURES for m in OPT_IN_METHODS]
    return [
        pytest.param(
            model_type, method, id=f"{model_type}-{method}", marks=pytest.mark.xdist_group(model_type)
        )
        for model_type, method in pairs
        if include(METHODS[method])
    ]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and two test workers spinning two threads each
    on two cores slow every step many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Trained:
    model_path: str
    values: dict
    reports: list[dict]
    final: dict
    checkpoint: Path  # the last one
    periodic_checkpoint: Path  # the first: a periodic evaluation's, whose answers are kept beside it

    @property
    def adapter(self) -> Path:
        return self.checkpoint / ADAPTER_DIR


@pytest.fixture(scope="session")
def trained(architecture_model, tmp_path_factory):
    """(model type, method) -> its trial of 8 steps on one fixed batch, run once per session."""
    runs = {}

    def run(model_type: str, method: str) -> Trained:
        if (model_type, method) not in runs:
            directory = tmp_path_factory.mktemp(f"{model_type}-{method}")
            reports = []

            def keep(metrics, checkpoint):
                reports.append(metrics)
                if checkpoint is not None:
                    shutil.copytree(checkpoint, directory / f"step-{metrics['step']}")

            values = {
                "task": TASK, "method": method, "model": architecture_model(model_type),
                "learning_rate": learning_rate(method), "max_steps": 8, "eval_every": 4, "eval_examples": 4,
                "full_eval_examples": 4, "batch_size": 4, "train_examples": 4, "warmup_ratio": 0.0,
            }  # fmt: skip
            final = trial.execute(values, keep)
            runs[model_type, method] = Trained(
                values["model"], values, reports, final, directory / "step-8", directory / "step-4"
            )
        return runs[model_type, method]

    return run


def _prompts(run: Trained, count: int) -> list[str]:
    plan = trial.prepare(run.values)
    return [plan.task.format_prompt(row) for row in plan.splits["validation"].select(range(count))]


def _assert_greedy(answers, model, tokenizer, prompts, new_tokens: int, near_ties: bool) -> None:
    """Each answer is the prompt's greedy answer alone, by one full forward per token; with 4-bit
    weights, answers may part from it only where its best two tokens are a near tie."""
    for prompt, answer in zip(prompts, answers, strict=True):
        reference = greedy_text(model, tokenizer, prompt, new_tokens, hold_eos=False)
        if answer != reference:
            assert near_ties, (prompt, answer, reference)
            gap = gap_where_they_part(model, tokenizer, prompt, answer, reference, new_tokens, hold_eos=False)
            assert gap < NEAR_TIE, (answer, reference)


@pytest.mark.parametrize(("model_type", "method"), _cases())
def test_a_trial_trains_and_its_loss_falls(trained, model_type, method):
    run = trained(model_type, method)
    assert [report["step"] for report in run.reports] == [4, 8]
    assert run.reports[1]["train_loss"] < run.reports[0]["train_loss"]
    assert run.final["status"] == "completed"


@pytest.mark.parametrize(("model_type", "method"), _cases())
def test_evaluation_answers_as_plain_greedy_decoding(trained, model_type, method):
    run = trained(model_type, method)
    scored = trial.load_checkpoint(run.values, run.checkpoint, "validation")
    evaluation = trial.evaluate(scored.model, scored.tokenizer, scored.plan, prefix="")
    prompts = [scored.plan.task.format_prompt(example) for example in evaluation.examples]
    if model_type in SLIDING:  # the window cuts what the answer's tokens see
        assert max(len(scored.tokenizer(prompt)["input_ids"]) for prompt in prompts) > SLIDING_WINDOW
    _assert_greedy(
        evaluation.generations.texts, scored.model, scored.tokenizer, prompts, evaluation.max_new_tokens,
        near_ties=METHODS[method].quantize_4bit,
    )  # fmt: skip


@pytest.mark.parametrize(("model_type", "method"), _cases())
def test_a_checkpoint_reloads_to_the_answers_it_was_saved_with(trained, model_type, method):
    run = trained(model_type, method)
    scored = trial.load_checkpoint(run.values, run.periodic_checkpoint, "validation")
    saved = scored.periodic  # what the model in training answered, kept beside its checkpoint
    again = trial.evaluate(scored.model, scored.tokenizer, scored.plan, prefix="")
    assert again.generations.texts == saved.generations.texts
    assert again.losses.sums == pytest.approx(saved.losses.sums, rel=1e-4)


def _other_lora(run: Trained, directory: Path) -> Path:
    """A second adapter of the same LoRA: its B factors negated, so that it answers otherwise."""
    shutil.copytree(run.adapter, directory)
    weights = load_file(directory / "adapter_model.safetensors")
    flipped = {name: -weight if ".lora_B." in name else weight for name, weight in weights.items()}
    save_file(flipped, directory / "adapter_model.safetensors")
    return directory


@pytest.mark.parametrize(("model_type", "method"), _cases())
def test_the_serving_engine_answers_as_plain_peft_generation_alone_and_in_a_mixed_batch(
    trained, tmp_path, model_type, method
):
    """The method's adapter with another adapter beside it (a second one of its own for LoRA and
    QLoRA: gathered LoRA; a LoRA on the base for the others) and the base model's rows."""
    run = trained(model_type, method)
    spec = METHODS[method]
    served = {"adapter": (run.adapter, method)}
    if spec.shares_mixed_batch:
        served["other"] = (_other_lora(run, tmp_path / "other"), method)
    else:
        served["other"] = (trained(model_type, "lora").adapter, "lora")
    engine = AdapterEngine(run.model_path, tuple(sorted({False, spec.quantize_4bit})))
    try:
        for adapter_id, (directory, of_method) in served.items():
            engine.add(read_saved(adapter_id, directory, of_method))
        prompts = _prompts(run, 3)
        requests = [
            Request(prompt, adapter_id, SERVED_TOKENS)
            for prompt, adapter_id in zip(prompts, [*served, None], strict=True)
        ]
        together = [completion.text for completion in engine.generate(requests)]
        alone = engine.generate([requests[0]])[0].text
    finally:
        engine.close()
    tokenizer = models.load_tokenizer(run.model_path)
    references = [
        METHODS[m].load_trained(run.model_path, d, METHODS[m].quantize_4bit) for d, m in served.values()
    ]
    for model, prompt, answer in zip(
        [*references, models.load_model(run.model_path)], prompts, together, strict=True
    ):
        _assert_greedy([answer], model, tokenizer, [prompt], SERVED_TOKENS, near_ties=spec.quantize_4bit)
    assert alone == together[0]


@pytest.mark.parametrize(("model_type", "method"), _cases(include=lambda method: method.export_forms))
def test_each_export_form_answers_as_the_adapter(trained, tmp_path, model_type, method):
    run = trained(model_type, method)
    spec = METHODS[method]
    winner = {
        "id": "winner", "task": TASK, "method": method, "base_model": run.model_path,
        "quantize_4bit": spec.quantize_4bit, "adapter_path": str(run.adapter), "validation": {"quality": 0.5},
    }  # fmt: skip
    (tmp_path / "winners.json").write_text(json.dumps({"winners": [winner]}))
    tokenizer, prompts = models.load_tokenizer(run.model_path), _prompts(run, 2)
    adapter = spec.load_trained(run.model_path, run.adapter, spec.quantize_4bit)
    as_adapter = [
        greedy_text(adapter, tokenizer, prompt, SERVED_TOKENS, hold_eos=False) for prompt in prompts
    ]
    for form in spec.export_forms:
        export.export(tmp_path, "winner", form, tmp_path / form)
        if form == "merged":
            exported = AutoModelForCausalLM.from_pretrained(tmp_path / form, use_safetensors=True)
        else:
            config = json.loads((tmp_path / form / "adapter_config.json").read_text())
            assert config["fan_in_fan_out"] == (model_type == "gpt2")  # its Conv1D weights are transposed
            base = models.load_model(run.model_path, quantize_4bit=spec.quantize_4bit)
            exported = PeftModel.from_pretrained(base, tmp_path / form)
        # Merged into the dequantized 4-bit weights, a QLoRA computes in other roundings.
        _assert_greedy(
            as_adapter, exported.eval(), tokenizer, prompts, SERVED_TOKENS, near_ties=spec.quantize_4bit
        )


def test_answers_depend_on_the_prompt_and_the_adapter(trained):
    """What makes the checks above able to fail: the random models' answers differ by prompt, and
    a trained adapter's differ from the base's."""
    run = trained("qwen2", "lora")
    tokenizer, prompts = models.load_tokenizer(run.model_path), _prompts(run, 3)
    base = models.load_model(run.model_path)
    adapter = METHODS["lora"].load_trained(run.model_path, run.adapter, False)
    by_base = [greedy_text(base, tokenizer, prompt, SERVED_TOKENS, hold_eos=False) for prompt in prompts]
    by_adapter = [
        greedy_text(adapter, tokenizer, prompt, SERVED_TOKENS, hold_eos=False) for prompt in prompts
    ]
    assert len(set(by_base)) == len(prompts)
    assert by_adapter != by_base
    assert torch.is_grad_enabled()  # the reference decodes under no_grad and leaves the state as it was
