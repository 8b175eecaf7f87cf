"""Prompt-lookup decoding: drafts from the row and its adapter's answers, and answers that are
plain greedy decoding's, for every method on every shipped task."""

import pytest
import torch

from tests.architectures import build
from tests.greedy import NEAR_TIE, gap_where_they_part
from trainables import encoding, models
from trainables.decoding import lookup
from trainables.decoding.lookup import Drafter, NgramIndex, PromptLookup
from trainables.evaluation import passes
from trainables.methods import METHODS, trained_methods
from trainables.training import trial

TASKS = ("ner", "qg", "qa")
NEW_TOKENS = 40  # past NER's first values, which its drafts copy from the OCR text


def test_a_draft_is_what_followed_the_longest_suffix_seen_before():
    index = NgramIndex(3, [5, 6, 7, 8, 1, 6, 7, 9, 2, 7])
    assert index.continuation([6, 7], 2) == (2, [9, 2])  # its latest occurrence's continuation
    assert index.continuation([5, 6, 7], 3) == (3, [8, 1, 6])  # the longer match wins over the later one
    assert index.continuation([4], 3) == (0, [])
    index.extend([3])  # the row's last tokens, [2, 7], are now followed by 3
    assert index.continuation([2, 7], 1) == (2, [3])


def test_an_adapters_earlier_answers_draft_where_they_match_longer_than_the_row_itself():
    drafter = Drafter(PromptLookup(tokens=3, ngram=3))
    own = drafter.row([1, 2, 3, 9, 9, 1, 2])  # the row's own match of [1, 2] continues 3, 9, 9
    assert drafter.draft(own, None, 10) == [3, 9, 9]
    drafter.answered("other", [4, 1, 2, 5, 6, 7])
    assert drafter.draft(own, None, 10) == [3, 9, 9]  # another adapter's answers are not searched
    drafter.answered(None, [8, 9, 1, 2, 4, 4])  # [9, 1, 2]: three tokens, against the row's two
    assert drafter.draft(own, None, 10) == [4, 4]
    assert drafter.draft(own, None, 1) == [4]  # never past the row's limit
    assert drafter.draft(own, None, 0) == []


def test_an_adapters_answers_start_afresh_past_the_tokens_kept(monkeypatch):
    monkeypatch.setattr(lookup, "ANSWERS_KEPT", 4)
    drafter = Drafter(PromptLookup(tokens=2, ngram=2))
    drafter.answered(None, [1, 2, 3, 4, 5])
    drafter.answered(None, [6, 7])
    assert drafter.answers[None].tokens == [6, 7]


def _model_and_rows(method: str, task: str):
    """The embedded model with the method's trainable weights moved off their initial values (a
    trained adapter, not the identity a fresh one is), and six validation rows of the task."""
    model_path = str(models.resolve("embedded"))
    plan = trial.prepare({"task": task, "method": method, "model": model_path})
    model, tokenizer = trial.load_trainable_model(plan, model_path), models.load_tokenizer(model_path)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.eval()
    examples = list(plan.splits["validation"].select(range(6)))
    features = encoding.encode_examples(plan.task, tokenizer, examples, None)
    prompts = [plan.task.format_prompt(example) for example in examples]
    return model, tokenizer, features, prompts


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two test workers on two cores: each decodes on one (as the architecture matrix does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", sorted(trained_methods()))
def test_evaluation_with_prompt_lookup_answers_as_plain_greedy_decoding(method, task):
    """The same rows, batches and budget, with and without prompt lookup: the same losses, the same
    answers token for token (with 4-bit weights, but for a near tie of the two best tokens), and
    drafts were kept, so the two runs took different paths."""
    model, tokenizer, features, prompts = _model_and_rows(method, task)
    batches = passes.row_batches([len(encoding.prompt_ids(f)) for f in features], batch_size=3, head=2)

    def evaluate(prompt_lookup: PromptLookup | None):
        return passes.losses_and_generations(
            model, tokenizer, features, NEW_TOKENS, batches, lookup=prompt_lookup
        )

    (plain_losses, plain), (losses, drafted) = evaluate(None), evaluate(PromptLookup())
    assert losses == plain_losses
    assert plain.drafts_checked == 0 and drafted.draft_tokens_accepted > 0
    if not METHODS[method].quantize_4bit:
        assert (drafted.texts, drafted.row_tokens, drafted.cut) == (plain.texts, plain.row_tokens, plain.cut)
    for prompt, one, other in zip(prompts, drafted.texts, plain.texts, strict=True):
        if one != other:
            gap = gap_where_they_part(model, tokenizer, prompt, one, other, NEW_TOKENS, hold_eos=False)
            assert gap < NEAR_TIE, (one, other)


def test_fixed_length_generation_with_prompt_lookup_holds_eos_back_as_plain_decoding():
    """min_tokens holds EOS back at every drafted column too: the answers run to the budget."""
    model, tokenizer, _, prompts = _model_and_rows("lora", "ner")
    plain = passes.generate(model, tokenizer, prompts, NEW_TOKENS, 3, fixed_length=True)
    drafted = passes.generate(
        model, tokenizer, prompts, NEW_TOKENS, 3, fixed_length=True, lookup=PromptLookup()
    )
    assert drafted.draft_tokens_accepted > 0
    assert drafted.texts == plain.texts
    assert drafted.row_tokens == plain.row_tokens == [NEW_TOKENS] * len(prompts)


def test_a_sliding_window_model_drafts_only_while_no_row_can_reach_its_window(tiny_model, tmp_path):
    """Rejected draft tokens leave masked columns, which a sliding window counts: with a window
    that the rows could reach, drafting waits until they no longer can; with a window out of
    reach, every step may draft. Either way the answers are plain decoding's."""
    tokenizer = models.load_tokenizer(tiny_model)
    plan = trial.prepare({"task": "ner", "method": "lora", "model": tiny_model})
    prompts = [plan.task.format_prompt(example) for example in plan.splits["validation"].select(range(4))]
    longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
    drafted = {}
    for name, window in {
        "reachable": longest + NEW_TOKENS,
        "out of reach": 4 * (longest + NEW_TOKENS),
    }.items():
        model = models.load_model(build("mistral", tiny_model, tmp_path / name, sliding_window=window))
        plain = passes.generate(model, tokenizer, prompts, NEW_TOKENS, 4)
        drafted[name] = passes.generate(model, tokenizer, prompts, NEW_TOKENS, 4, lookup=PromptLookup())
        assert drafted[name].texts == plain.texts, name
    assert drafted["reachable"].drafts_checked < drafted["out of reach"].drafts_checked
    assert drafted["out of reach"].draft_tokens_accepted > 0
