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
