"""Heads that copy from context, set by hand in a fresh Llama before it is pretrained.

Copying a name from earlier in the context takes two heads in two layers: in layer 0, a head that
tells each position which token came before it; in layer 1, an induction head that finds where
the current token came before and brings back what followed it. Learned from scratch, the pair
forms only after a long plateau, later than a few-million-token pretraining on 2 cores gets: with
random word sequences said twice in the corpus, copying them had not started after 800 steps.
Installed by hand, they copy from the first step, and pretraining only has to keep and use them.

Layout of the hidden dimensions: token embeddings live in the lower half, less one dimension that
holds POSITION_CONSTANT for every token; the upper half starts empty.

- The previous-token heads' queries and keys read only the constant, rotated by RoPE so that the
  score peaks one position back. Their values carry the previous token's embedding into the upper
  half.
- The induction heads match the current token's embedding against that copy, through one random
  projection on the slowest RoPE pairs (so nearly position-free). Their values carry the matched
  position's own embedding back into the lower half, where the tied output embedding reads it as
  a vote for that token.
- Every other head and every MLP starts as a no-op on the residual stream (zero output
  projections, as zero-initialised residual branches do).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

# How far above every other position a previous-token head scores the previous one, in logits.
PREVIOUS_TOKEN_MARGIN = 30.0
# What an induction head scores a position whose previous token is the current token, in logits.
INDUCTION_SCORE = 20.0
# The constant every token embedding carries in one dimension. Large enough that Adam growing the
# embeddings in pretraining (threefold in 100 steps) leaves the previous-token heads focused.
POSITION_CONSTANT = 0.3
# What the heads write back, in units of a token embedding's scale: the previous token at that
# scale, so that layer 1 sees both halves at about the same size; the matched token several times
# over, so that the output embedding favours it clearly over the current token.
PREVIOUS_COPY_GAIN = 1.0
INDUCTION_COPY_GAIN = 4.0
# RoPE frequency pairs slow enough to leave a content match nearly unchanged over a task's context
# (the fastest of them turns by about half a radian across 150 positions).
CONTENT_PAIRS = 12
# The previous-token score's weights over RoPE's fastest frequency pairs: half on the fastest and
# half spread over the next 15 peak sharply at one position back with no alias within 1024
# positions (a margin of 0.25 of the peak; the best weighting found by a linear program, 0.31).
FASTEST_PAIR_WEIGHT, NEXT_PAIRS = 0.5, 15

Region = tuple[slice, ...]  # an index into a parameter: rows, or rows and columns


def previous_token_scores(inv_freq: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-pair weights of a previous-token query, and the score it gives each offset
    (offset 1, the previous token, scores 1.0)."""
    weights = torch.zeros(len(inv_freq), dtype=torch.double)
    weights[0] = FASTEST_PAIR_WEIGHT
    weights[1 : 1 + NEXT_PAIRS] = (1 - FASTEST_PAIR_WEIGHT) / NEXT_PAIRS
    offsets = torch.arange(positions, dtype=torch.double) - 1
    return weights, torch.cos(offsets[:, None] * inv_freq.double()[None]) @ weights


def _carry(attention, heads: range, head_dim: int, width: int, target: int, gain: float) -> None:
    """The heads' values read hidden dimensions 0..width, each head its share, and write them,
    times gain, from target on: together they carry a token embedding elsewhere."""
    for head in heads:
        rows = [r for r in range(head * head_dim, (head + 1) * head_dim) if r < width]
        attention.v_proj.weight[head * head_dim : (head + 1) * head_dim] = 0
        attention.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0
        attention.v_proj.weight[rows, rows] = 1.0
        attention.o_proj.weight[[target + r for r in rows], rows] = gain


def install(model: LlamaForCausalLM, seed: int) -> dict[torch.nn.Parameter, list[Region]]:
    """Sets the circuit in model (fresh weights) and returns what pretraining must keep as it is:
    the circuit's queries, keys and first values, the constant and empty half of the embeddings,
    and the upper half of layer 0's output, which only the previous-token heads write."""
    config = model.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim, half = hidden // heads, hidden // 2
    pairs, constant = head_dim // 2, half - 1
    if config.num_hidden_layers < 2 or half % head_dim or pairs < max(CONTENT_PAIRS, 1 + NEXT_PAIRS):
        raise ValueError(
            f"no room for the copying circuit in {hidden=}, {heads=}, {config.num_hidden_layers=}"
        )
    copying = range(half // head_dim)
    inv_freq = model.model.rotary_emb.inv_freq.double()
    weights, scores = previous_token_scores(inv_freq, config.max_position_embeddings)
    margin = 1 - torch.cat([scores[:1], scores[2:]]).max()
    radius = torch.sqrt(PREVIOUS_TOKEN_MARGIN * head_dim**0.5 / margin)
    content_rows = [row for pair in range(pairs - CONTENT_PAIRS, pairs) for row in (pair, pair + pairs)]
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(len(content_rows), constant, generator=generator) / len(content_rows) ** 0.5
    embedding = model.get_input_embeddings().weight
    previous, induction = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    with torch.no_grad():
        embedding[:, constant] = POSITION_CONSTANT
        embedding[:, half:] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding_rms = embedding.pow(2).mean(dim=1).sqrt().median().item()
        # The constant's value after layer 0's RMSNorm, for a typical token.
        normed_constant = POSITION_CONSTANT / embedding_rms
        query = (radius * weights.sqrt() / normed_constant).float()
        # Layer 1 sees a token, its predecessor times PREVIOUS_COPY_GAIN and the constant: after
        # its RMSNorm, a match of the two scores this before the projection's scale.
        token_energy = embedding[:, :constant].pow(2).sum(dim=1).median().item()
        rms_squared = ((1 + PREVIOUS_COPY_GAIN**2) * token_energy + POSITION_CONSTANT**2) / hidden
        match = PREVIOUS_COPY_GAIN * token_energy / rms_squared
        content_scale = (INDUCTION_SCORE * head_dim**0.5 / match) ** 0.5
        for head in copying:
            rows = slice(head * head_dim, (head + 1) * head_dim)
            for layer in (previous, induction):
                layer.q_proj.weight[rows] = 0
                layer.k_proj.weight[rows] = 0
            previous.q_proj.weight[rows.start : rows.start + pairs, constant] = query
            key = previous.k_proj.weight[rows, constant]
            key[:pairs] = query * torch.cos(inv_freq).float()
            key[pairs:] = query * torch.sin(inv_freq).float()
            content = [rows.start + row for row in content_rows]
            induction.q_proj.weight[content, :constant] = content_scale * projection
            induction.k_proj.weight[content, half : half + constant] = content_scale * projection
        _carry(previous, copying, head_dim, constant, half, PREVIOUS_COPY_GAIN * embedding_rms)
        _carry(induction, copying, head_dim, constant, 0, INDUCTION_COPY_GAIN * embedding_rms)
    circuit, everything, upper = slice(0, len(copying) * head_dim), slice(None), slice(half, None)
    kept = {
        embedding: [(everything, slice(constant, None))],
        previous.v_proj.weight: [(circuit, everything)],
        previous.o_proj.weight: [(upper, everything), (everything, circuit)],
        model.model.layers[0].mlp.down_proj.weight: [(upper, everything)],
        # Layer 0's and 1's norms set the scales the circuit was calibrated for.
        model.model.layers[0].input_layernorm.weight: [(everything,)],
        model.model.layers[1].input_layernorm.weight: [(everything,)],
    }
    for layer in (previous, induction):
        kept[layer.q_proj.weight] = [(circuit, everything)]
        kept[layer.k_proj.weight] = [(circuit, everything)]
    return kept


def keep_while_training(kept: dict[torch.nn.Parameter, list[Region]]) -> list:
    """Gradient hooks that zero the gradient of each kept region; remove them when done."""
    hooks = []
    for parameter, regions in kept.items():
        mask = torch.ones_like(parameter)
        for region in regions:
            mask[region] = 0
        hooks.append(parameter.register_hook(mask.mul))
    return hooks


def remove(hooks: Iterable) -> None:
    for hook in hooks:
        hook.remove()
