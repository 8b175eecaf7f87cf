"""The hand-set copying circuit: it copies from the first step, and pretraining keeps it."""

import dataclasses
import functools

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from trainables import embedded
from trainables.embedded import copying_circuit


@functools.cache
def _tokenizer():
    return embedded.build_tokenizer(embedded.DEFAULT_SPEC)


def _fresh_model(**spec_overrides) -> LlamaForCausalLM:
    """The embedded model's architecture with fresh weights, attention weights visible."""
    config = embedded._model_config(
        dataclasses.replace(embedded.DEFAULT_SPEC, **spec_overrides), _tokenizer()
    )
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()


def _repeated_random_tokens(model, length: int = 40) -> tuple[torch.Tensor, int]:
    tokens = torch.randint(3, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(1))
    return torch.cat([tokens, tokens])[None], length


def _losses_of_each_half(model, ids: torch.Tensor, length: int) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return losses[: length - 1].mean().item(), losses[length:].mean().item()


def test_a_fresh_circuit_attends_to_the_previous_token_then_to_what_followed_the_current_one():
    model = _fresh_model()
    plain_first, plain_second = _losses_of_each_half(model, *_repeated_random_tokens(model))
    copying_circuit.install(model, seed=0)
    ids, length = _repeated_random_tokens(model)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    positions = range(1, ids.shape[1])
    for head in (0, 1):
        on_previous = torch.stack([attentions[0][0, head, i, i - 1] for i in positions])
        assert on_previous.min() > 0.95, head
        # In the second copy, the token after the first occurrence of the current one.
        second_copy = range(length, 2 * length)
        on_what_followed = torch.stack([attentions[1][0, head, i, i - length + 1] for i in second_copy])
        assert on_what_followed.mean() > 0.8, head
    for head in (2, 3):  # left to pretraining
        assert torch.stack([attentions[0][0, head, i, i - 1] for i in positions]).mean() < 0.5
    first, second = _losses_of_each_half(model, ids, length)
    assert second < first - 2.0, "the repeated half is predicted by copying"
    assert plain_second > plain_first - 0.5, "a randomly initialised model does not copy"


def _later_attention_on_each_continuation(match_tokens: int) -> tuple[float, float]:
    """A token X follows A, then B; when B X comes again, where the induction head looks: at what
    followed B X (right), or at what followed A X (only X matches)."""
    model = _fresh_model()
    copying_circuit.install(model, seed=0, match_tokens=match_tokens)
    ids = torch.randint(20, model.config.vocab_size, (60,), generator=torch.Generator().manual_seed(7))
    a, b, x, after_a, after_b = 11, 12, 13, 14, 15
    ids[5:8] = torch.tensor([a, x, after_a])
    ids[25:28] = torch.tensor([b, x, after_b])
    ids[50:52] = torch.tensor([b, x])
    with torch.no_grad():
        attentions = model(ids[None], output_attentions=True).attentions
    induction = attentions[1][0, 0, 51]
    return induction[27].item(), induction[7].item()


def test_matching_two_tokens_follows_the_continuation_of_both():
    right, wrong = _later_attention_on_each_continuation(match_tokens=2)
    assert right > 0.95 and wrong < 0.01
    right, wrong = _later_attention_on_each_continuation(match_tokens=1)
    assert min(right, wrong) > 0.3, "matching one token cannot tell the two continuations apart"


def test_with_two_tokens_matched_a_third_head_looks_two_back_and_copying_still_works():
    model = _fresh_model()
    copying_circuit.install(model, seed=0, match_tokens=2)
    ids, length = _repeated_random_tokens(model)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    assert torch.stack([attentions[0][0, 2, i, i - 2] for i in range(2, ids.shape[1])]).min() > 0.95
    for head in (0, 1):
        assert torch.stack([attentions[0][0, head, i, i - 1] for i in range(1, ids.shape[1])]).min() > 0.95
        on_what_followed = [attentions[1][0, head, i, i - length + 1] for i in range(length + 1, 2 * length)]
        assert torch.stack(on_what_followed).mean() > 0.9, head
    first, second = _losses_of_each_half(model, ids, length)
    assert second < first - 2.0


def test_the_previous_token_scores_peak_one_position_back_with_no_alias():
    inv_freq = _fresh_model().model.rotary_emb.inv_freq
    _, scores = copying_circuit.previous_token_scores(inv_freq, 1024)
    assert scores[1] == pytest.approx(1.0)
    assert torch.cat([scores[:1], scores[2:]]).max() < 0.8


@pytest.mark.parametrize("match_tokens", [1, 2])
def test_pretraining_keeps_the_circuit_and_trains_the_rest(tmp_path, match_tokens):
    spec = embedded.tiny_spec(copying_circuit=True, copying_match_tokens=match_tokens)
    fresh = load_file(
        embedded.build(dataclasses.replace(spec, steps=0), tmp_path / "fresh") / "model.safetensors"
    )
    trained_dir = embedded.build(dataclasses.replace(spec, steps=3), tmp_path / "trained")
    trained = load_file(trained_dir / "model.safetensors")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "fresh")
    kept = copying_circuit.install(model, seed=spec.seed, match_tokens=match_tokens)
    names = {parameter: name for name, parameter in model.named_parameters()}
    for parameter, regions in kept.items():
        name = names[parameter]
        for region in regions:
            # AdamW's decoupled weight decay still scales them by (1 - lr x 0.01) a step.
            torch.testing.assert_close(trained[name][region], fresh[name][region], rtol=1e-3, atol=1e-6)
    query = "model.layers.1.self_attn.q_proj.weight"
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert not torch.equal(trained[query][head_dim:], fresh[query][head_dim:]), "the other heads train"
    assert not torch.equal(
        trained["model.layers.1.mlp.down_proj.weight"], fresh["model.layers.1.mlp.down_proj.weight"]
    )


def test_a_model_without_room_for_the_circuit_is_refused():
    with pytest.raises(ValueError, match="no room for the copying circuit"):
        copying_circuit.install(_fresh_model(num_layers=1), seed=0)
    with pytest.raises(ValueError, match="matches 1 or 2 tokens, not 3"):
        copying_circuit.install(_fresh_model(), seed=0, match_tokens=3)
