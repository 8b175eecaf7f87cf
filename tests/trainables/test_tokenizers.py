"""Tokenizer habits: with or without a pad token or a BOS, another EOS id, or an EOS appended to
every text, training, evaluation and serving read the prompts and targets the task intends."""

from dataclasses import replace

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests import architectures
from trainables import embedded, encoding, models
from trainables.decoding.batch import Request, RunningBatch
from trainables.errors import ConfigError
from trainables.evaluation import passes
from trainables.tasks import get_task

ROWS = 8  # prompts of different lengths, so that serving pads some


@pytest.fixture
def tiny_tokenizer(tiny_model):
    """The tiny test model's tokenizer as saved (a pad token, a BOS it does not add, EOS id 2), to change."""
    return AutoTokenizer.from_pretrained(tiny_model)


def _saved(tokenizer, directory) -> str:
    tokenizer.save_pretrained(directory)
    return str(directory)


def _with_template(tokenizer, single: str):
    """The tokenizer with its post-processor's template for one text replaced, as a model's
    tokenizer.json would set it."""
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=single,
        pair=f"{single} $B:1",
        special_tokens=[
            (token, tokenizer.convert_tokens_to_ids(token))
            for token in (embedded.BOS, embedded.EOS)
            if token in single
        ],
    )
    return tokenizer


def _assert_prompts_and_targets_as_the_task_intends(tokenizer, adds_bos: bool) -> dict:
    """Training's and evaluation's prompt tokens are what serving feeds: the prompt's text, behind
    the tokenizer's BOS where it adds one, with no EOS after it; each target ends with one EOS, the
    tokenizer's own; the generation budget counts those target tokens. Returns serving's batch."""
    task = get_task("qg")
    rows = task.splits()["train"].select(range(ROWS))
    features = encoding.encode_examples(task, tokenizer, rows, None)
    served = RunningBatch(tokenizer, torch.device("cpu")).prompts(
        [Request(task.format_prompt(row), None, 1) for row in rows]
    )
    for row, feature, ids, mask in zip(
        rows, features, served["input_ids"], served["attention_mask"], strict=True
    ):
        prompt = encoding.prompt_ids(feature)
        text = tokenizer(task.format_prompt(row), add_special_tokens=False)["input_ids"]
        assert prompt == [tokenizer.bos_token_id] * adds_bos + text
        assert ids[mask.bool()].tolist() == prompt
        target = tokenizer(task.format_target(row), add_special_tokens=False)["input_ids"]
        assert feature["input_ids"][len(prompt) :] == [*target, tokenizer.eos_token_id]
    longest = max(len(feature["input_ids"]) - len(encoding.prompt_ids(feature)) for feature in features)
    assert replace(task, max_new_tokens=longest).generation_budget(tokenizer, rows) == longest
    with pytest.raises(ConfigError):
        replace(task, max_new_tokens=longest - 1).generation_budget(tokenizer, rows)
    return served


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(tiny_tokenizer, tmp_path):
    tiny_tokenizer.pad_token = None
    tokenizer = models.load_tokenizer(_saved(tiny_tokenizer, tmp_path))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    served = _assert_prompts_and_targets_as_the_task_intends(tokenizer, adds_bos=False)
    padding = served["input_ids"][served["attention_mask"] == 0]
    assert len(padding) and (padding == tokenizer.eos_token_id).all()


def test_a_tokenizer_without_a_pad_token_or_an_eos_is_refused_naming_the_model(tiny_tokenizer, tmp_path):
    tiny_tokenizer.pad_token = tiny_tokenizer.eos_token = None
    path = _saved(tiny_tokenizer, tmp_path)
    with pytest.raises(ConfigError, match=f"model '{path}': its tokenizer has no EOS token"):
        models.load_tokenizer(path)


def test_a_tokenizer_that_adds_a_bos_puts_it_in_front_of_every_prompt(tiny_tokenizer, tmp_path):
    tokenizer = models.load_tokenizer(_saved(_with_template(tiny_tokenizer, f"{embedded.BOS} $A"), tmp_path))
    _assert_prompts_and_targets_as_the_task_intends(tokenizer, adds_bos=True)


def test_a_tokenizer_that_adds_no_bos_gives_prompts_of_their_text_alone(tiny_model):
    _assert_prompts_and_targets_as_the_task_intends(models.load_tokenizer(tiny_model), adds_bos=False)


def test_an_eos_id_other_than_the_default_ends_targets_and_generation(tiny_tokenizer, tmp_path):
    default_eos = tiny_tokenizer.eos_token_id
    tiny_tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    tokenizer = models.load_tokenizer(_saved(tiny_tokenizer, tmp_path))
    assert tokenizer.eos_token_id not in (default_eos, None)
    _assert_prompts_and_targets_as_the_task_intends(tokenizer, adds_bos=False)

    model = AutoModelForCausalLM.from_pretrained(
        architectures.build("llama", str(tmp_path), tmp_path / "model")
    )
    config = model.config
    # A head that scores one token above all others, whatever it reads: the token it answers.
    model.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size)
    torch.nn.init.zeros_(model.lm_head.weight)
    prompts = ["Which id ends an answer?", "Is it the default one?"]
    answers = {}
    for answered in (tokenizer.eos_token_id, default_eos):
        with torch.no_grad():
            model.lm_head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answered), config.vocab_size))
        answers[answered] = passes.generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    assert answers[tokenizer.eos_token_id].row_tokens == [1, 1]
    assert answers[tokenizer.eos_token_id].cut == [False, False]
    assert answers[default_eos].cut == [True, True]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_a_tokenizer_that_appends_eos_to_every_text_leaves_it_off_prompts(tiny_tokenizer, tmp_path, adds_bos):
    template = f"{embedded.BOS} $A {embedded.EOS}" if adds_bos else f"$A {embedded.EOS}"
    path = _saved(_with_template(tiny_tokenizer, template), tmp_path)
    assert AutoTokenizer.from_pretrained(path)("a")["input_ids"][-1] == tiny_tokenizer.eos_token_id
    _assert_prompts_and_targets_as_the_task_intends(models.load_tokenizer(path), adds_bos=adds_bos)
