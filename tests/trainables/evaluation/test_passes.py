"""Generation of every method equals plain greedy decoding with the trained model's own forward."""

import itertools
import math

import pytest
import torch

from tests.greedy import NEAR_TIE, gap_where_they_part, greedy_text
from trainables import encoding, models
from trainables.decoding.cache import HEADROOM
from trainables.evaluation import passes
from trainables.methods import METHODS, trained_methods
from trainables.training import trial

PROMPTS = ["The user asked the assistant why the roses look unhealthy.\nWhat soil is best for", "Tell me\n"]


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_generation_equals_greedy_decoding_with_the_models_forward(method):
    # The shipped pretrained model: the tiny random one answers the same token whatever its context.
    model_path = str(models.resolve("embedded"))
    plan = trial.prepare({"task": "qg", "method": method, "model": model_path})
    model, tokenizer = trial.load_trainable_model(plan, model_path), models.load_tokenizer(model_path)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter, not the identity a fresh one is
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.eval()
    generated = passes.generate(model, tokenizer, PROMPTS, 12, batch_size=1, fixed_length=True)
    assert generated.texts == [greedy_text(model, tokenizer, prompt, 12) for prompt in PROMPTS]


def _one_pass_and_two_passes(method: str):
    """Evaluation's single pass over prompt and target (loss, then generation from its cache), and
    the two passes it replaces: a right-padded teacher-forced pass for the loss and generation from
    the left-padded prompts. On CUDA when the machine has it, as a trial runs. Also the model and
    the prompts, to look at where two answers part."""
    model_path = str(models.resolve("embedded"))
    plan = trial.prepare({"task": "qg", "method": method, "model": model_path})
    model, tokenizer = trial.load_trainable_model(plan, model_path), models.load_tokenizer(model_path)
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.05)
    examples = list(plan.splits["validation"].select(range(7)))
    features = encoding.encode_examples(plan.task, tokenizer, examples, None)
    prompt_lengths = [len(encoding.prompt_ids(feature)) for feature in features]
    assert len(set(prompt_lengths)) > 1  # batches are padded, and sorted out of row order
    batches = passes.row_batches(prompt_lengths, batch_size=3, head=4)
    one_pass = passes.losses_and_generations(model, tokenizer, features, 12, batches)
    prompts = [plan.task.format_prompt(example) for example in examples]
    two_passes = (
        passes.target_losses(model, features, 3, tokenizer.pad_token_id),
        passes.generate(model, tokenizer, prompts, 12, batch_size=3),
    )
    return one_pass, two_passes, (model, tokenizer, prompts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 on CUDA rounds per batch shape: the cuda test")
@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_one_encoding_gives_the_losses_and_answers_of_two_separate_passes(method):
    (losses, answers), (separate, generated), (model, tokenizer, prompts) = _one_pass_and_two_passes(method)
    assert losses.tokens == separate.tokens
    # QLoRA's 4-bit kernels round differently for other batch shapes: 5e-4 apart, where a target
    # one token off would be far out.
    assert losses.sums == pytest.approx(separate.sums, rel=1e-3)
    if not METHODS[method].quantize_4bit:
        assert answers.texts == generated.texts
    # With 4-bit weights, greedy decoding may take the other of two near-equal tokens; where the
    # answers part, the reference's best two tokens must be that close.
    for prompt, one, other in zip(prompts, answers.texts, generated.texts, strict=True):
        if one != other:
            assert gap_where_they_part(model, tokenizer, prompt, one, other, 12) < NEAR_TIE, (one, other)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["qlora", "lora", "prompt_tuning"])
def test_one_encoding_on_cuda_in_bf16_agrees_with_two_separate_passes(method):
    """In bf16 another batch shape rounds differently, so a greedy choice between two near-equal
    tokens may go the other way: most answers, not all, must be the same."""
    (losses, answers), (separate, generated), _ = _one_pass_and_two_passes(method)
    assert losses.tokens == separate.tokens
    assert losses.sums == pytest.approx(separate.sums, rel=2e-2)
    same = sum(a == b for a, b in zip(answers.texts, generated.texts, strict=True))
    assert same >= len(answers.texts) - 2, list(zip(answers.texts, generated.texts, strict=True))


def test_a_k_shot_prefix_encoded_once_gives_the_answers_and_losses_of_encoding_it_in_every_row():
    model_path = str(models.resolve("embedded"))
    loaded = trial.load_base_model({"task": "qg", "model": model_path, "shots": 2}, "validation")
    task, tokenizer = loaded.plan.task, loaded.tokenizer
    examples = list(loaded.plan.splits["validation"].select(range(7)))
    features = encoding.encode_examples(task, tokenizer, examples, None, loaded.prefix)
    shared = passes.shared_prompt_start(tokenizer, loaded.prefix, features)
    prompt_lengths = [len(encoding.prompt_ids(feature)) for feature in features]
    assert 0 < shared < min(prompt_lengths)  # the two examples in front of every prompt, not the prompt
    batches = passes.row_batches(prompt_lengths, batch_size=3, head=4)

    each_row = passes.losses_and_generations(loaded.model, tokenizer, features, 12, batches)
    once = passes.losses_and_generations(loaded.model, tokenizer, features, 12, batches, shared)

    assert once[1].texts == each_row[1].texts
    assert once[0].tokens == each_row[0].tokens
    assert once[0].sums == pytest.approx(each_row[0].sums, rel=1e-5)
    # No prefix, or a row that does not start with it: nothing is shared.
    assert passes.shared_prompt_start(tokenizer, "", features) == 0
    zero_shot = encoding.encode_examples(task, tokenizer, examples[:1], None)
    assert passes.shared_prompt_start(tokenizer, loaded.prefix, features + zero_shot) == 0


def test_a_row_that_ends_leaves_the_batch_and_the_others_answer_as_they_would_alone():
    model_path = str(models.resolve("embedded"))
    plan = trial.prepare({"task": "qg", "method": "base", "model": model_path})
    model, tokenizer = models.load_model(model_path).eval(), models.load_tokenizer(model_path)
    prompts = [plan.task.format_prompt(row) for row in plan.splits["validation"].select(range(4))]
    alone = passes.generate(model, tokenizer, prompts, 40, batch_size=1)
    assert len(set(alone.row_tokens)) > 1  # the rows end at different steps

    rows_per_forward = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows_per_forward.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    together = passes.generate(model, tokenizer, prompts, 40, batch_size=len(prompts))
    hook.remove()
    assert together.texts == alone.texts and together.row_tokens == alone.row_tokens
    # One forward per step, each on the rows still answering: those that ended were left out.
    assert len(rows_per_forward) == max(alone.row_tokens)
    assert rows_per_forward == [
        sum(tokens > step for tokens in alone.row_tokens) for step in range(len(rows_per_forward))
    ]


def test_decoding_steps_write_the_cache_in_place_and_answer_as_without_a_cache():
    model_path = str(models.resolve("embedded"))
    model, tokenizer = models.load_model(model_path).eval(), models.load_tokenizer(model_path)
    steps = 2 * HEADROOM + 10  # the buffers fill up twice
    first_layer_keys = []  # after each forward; kept, so that no freed memory is reused meanwhile
    hook = model.register_forward_hook(
        lambda _, args, kwargs, output: first_layer_keys.append(kwargs["cache"].layers[0].keys),
        with_kwargs=True,
    )
    generated = passes.generate(model, tokenizer, PROMPTS[:1], steps, batch_size=1, fixed_length=True)
    hook.remove()
    assert generated.texts == [greedy_text(model, tokenizer, PROMPTS[0], steps)]
    assert len(first_layer_keys) == steps  # the prompt's forward, then one per token but the last
    storage = [keys.untyped_storage().data_ptr() for keys in first_layer_keys]
    copies = sum(before != after for before, after in itertools.pairwise(storage))
    # Concatenating copied the whole cache at every step; here a copy comes once per HEADROOM steps.
    assert copies <= math.ceil(steps / HEADROOM)
