"""Generation budgets: derived from the training targets with the model's own tokenizer, or checked."""

import dataclasses

import pytest

from trainables import embedded, models
from trainables.config import ConfigError
from trainables.tasks import TASKS


@pytest.fixture(scope="module")
def tokenizers(tiny_model) -> dict:
    """Two tokenizers that split the same text differently: the tiny test model's, the default's."""
    return {
        "tiny": models.load_tokenizer(tiny_model),
        "embedded": embedded.build_tokenizer(embedded.DEFAULT_SPEC),
    }


def _longest_target(task, tokenizer, rows) -> int:
    return max(len(tokenizer(task.format_target(row), add_special_tokens=False)["input_ids"]) for row in rows)


@pytest.mark.parametrize("tokenizer_name", ["tiny", "embedded"])
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_a_shipped_tasks_budget_holds_its_longest_answer_and_eos(tokenizers, tokenizer_name, task_name):
    task, tokenizer = TASKS[task_name], tokenizers[tokenizer_name]
    train = task.splits()["train"]
    longest = _longest_target(task, tokenizer, train)
    budget = task.generation_budget(tokenizer, train)
    assert longest + 1 < budget <= longest + 1 + max(4, -(-longest // 10))


def test_the_same_targets_need_different_budgets_with_different_tokenizers(tokenizers):
    train = TASKS["ner"].splits()["train"]
    budgets = {
        name: TASKS["ner"].generation_budget(tokenizer, train) for name, tokenizer in tokenizers.items()
    }
    assert budgets["tiny"] != budgets["embedded"]


def test_a_stated_budget_is_kept_when_it_holds_the_answers_and_refused_otherwise(tokenizers):
    task, tokenizer = TASKS["qa"], tokenizers["embedded"]
    train = task.splits()["train"]
    longest = _longest_target(task, tokenizer, train)
    assert (
        dataclasses.replace(task, max_new_tokens=longest + 1).generation_budget(tokenizer, train)
        == longest + 1
    )
    with pytest.raises(ConfigError) as refused:
        dataclasses.replace(task, max_new_tokens=longest).generation_budget(tokenizer, train)
    assert str(refused.value) == (
        f"qa: key 'max_new_tokens': {longest} tokens cannot hold the longest training target "
        f"({longest} tokens with this model's tokenizer, plus 1 for EOS)"
    )
