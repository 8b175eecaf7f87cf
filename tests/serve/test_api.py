"""Request bodies are checked at the edge: a field the engine could not take is refused there."""

import pytest
from pydantic import ValidationError

from serve import api


@pytest.mark.parametrize("seed", [2**64, 2**63, -1])
def test_a_seed_torch_cannot_take_is_refused_naming_the_field(seed):
    with pytest.raises(ValidationError) as refused:
        api.CompletionRequest(model="qg-lora-1a2b", prompt="hi", temperature=1.0, seed=seed)
    assert [problem["loc"] for problem in refused.value.errors()] == [("seed",)]


def test_every_seed_torch_takes_is_accepted():
    for seed in (0, 7, api.MAX_SEED):
        assert api.CompletionRequest(model="m", prompt="hi", seed=seed).seed == seed


def test_stop_strings_and_messages_are_capped_in_number_and_length():
    with pytest.raises(ValidationError, match="at most 256 characters"):
        api.CompletionRequest(model="m", prompt="hi", stop=["x" * (api.MAX_STOP_CHARACTERS + 1)])
    with pytest.raises(ValidationError, match="at most 4 stop sequences"):
        api.CompletionRequest(model="m", prompt="hi", stop=["a", "b", "c", "d", "e"])
    message = {"role": "user", "content": "hi"}
    assert len(api.ChatRequest(model="m", messages=[message] * api.MAX_MESSAGES).messages) == api.MAX_MESSAGES
    with pytest.raises(ValidationError, match="at most 256 items"):
        api.ChatRequest(model="m", messages=[message] * (api.MAX_MESSAGES + 1))


def test_text_that_is_not_valid_unicode_is_told_apart():
    assert api.encodable("hi", "stop", "é ✓")
    assert not api.encodable("hi", "\ud800") and not api.encodable("\udfff")


def test_a_temperature_too_small_to_sample_with_decodes_greedily():
    # Logits divided by 1e-300 overflow: the row could not be sampled (test_engine shows it fails alone).
    for tiny in (1e-300, 5e-324, api.GREEDY_BELOW_TEMPERATURE / 2):
        assert api.CompletionRequest(model="m", prompt="hi", temperature=tiny, seed=1).temperature == 0.0
    assert api.CompletionRequest(model="m", prompt="hi", temperature=0.5).temperature == 0.5
