"""Heads that copy from context, set by hand in a fresh Llama before it is pretrained.

Copying a name from earlier in the context takes two heads in two layers: in layer 0, a head that
tells each position which token came before it; in layer 1, an induction head that finds where
the current token came before and brings back what followed it. Learned from scratch, the pair
forms only after a long plateau, later than the embedded model's pretraining reached in the runs
tried (docs/embedded-model.md). Installed by hand, they copy from the first step, and pretraining
only has to keep and use them.

Layout of the hidden dimensions: token embeddings live in the lower half, less one dimension that
holds POSITION_CONSTANT for every token; the upper half starts empty.

- The previous-token heads' queries and keys read only the constant, rotated by RoPE so that the
  score peaks one position back. Their values carry the previous token's embedding into the upper
  half.
- The induction heads match the current token's embedding against that copy, through one random
  projection on the slowest RoPE pairs (so nearly position-free). Their values carry the matched
  position's own embedding back into the lower half, where the tied output embedding reads it as
  a vote for that token.
- To match two tokens (`match_tokens=2`), a third layer-0 head scores two positions back and
  writes that token beside the previous one, so the induction heads also match the previous token
  against the one before the candidate: a word of several pieces is continued from where the same
  two pieces stood, not from any other word sharing its last piece.
- Every other head and every MLP starts as a no-op on the residual stream (zero output
  projections, as zero-initialised residual branches do).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

# How far above every other position a previous-token head scores the previous one, in logits.
PREVIOUS_TOKEN_MARGIN = 30.0
# What an induction head scores a position whose previous token is the current token, in logits.
INDUCTION_SCORE = 20.0
# The constant every token embedding carries in one dimension. Large enough that Adam growing the
# embeddings in pretraining leaves the previous-token heads focused (docs/embedded-model.md).
POSITION_CONSTANT = 0.3
# With two-token matching, what the induction heads add for a position whose second-to-last token is
# the previous one, as a share of INDUCTION_SCORE: a continuation of the same two tokens then
# outscores one that only shares the current token by e**(share x INDUCTION_SCORE), which keeps a
# word of several pieces whole where its pieces recur in other words.
TWO_BACK_SHARE = 0.5
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
# positions (a margin of 0.25 of the peak; docs/embedded-model.md compares the best weighting).
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


def _offset_key(query: torch.Tensor, inv_freq: torch.Tensor, offset: int) -> torch.Tensor:
    """A key over RoPE's pairs with which `query` scores highest `offset` positions back."""
    return torch.cat(
        [query * torch.cos(offset * inv_freq).float(), query * torch.sin(offset * inv_freq).float()]
    )


def install(
    model: LlamaForCausalLM, seed: int, match_tokens: int = 1
) -> dict[torch.nn.Parameter, list[Region]]:
    """Sets the circuit in model (fresh weights) and returns what pretraining must keep as it is:
    the circuit's queries, keys and first values, the constant and empty half of the embeddings,
    and the upper half of layer 0's output, which only the circuit's heads write.

    match_tokens 2: a third head in layer 0 looks two tokens back and writes that token, through a
    projection the induction key reads beside the previous token's, so that the induction heads
    match the current token and the one before it.
    """
    layout = _Layout.of(model.config, match_tokens)
    generator = torch.Generator().manual_seed(seed)
    projection = _content_projection(layout, generator)
    two_back = _second_to_last_maps(projection, generator) if match_tokens == 2 else None
    inv_freq = model.model.rotary_emb.inv_freq.double()
    embedding = model.get_input_embeddings().weight
    previous, induction = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    with torch.no_grad():
        _lay_out_embeddings(embedding, layout)
        _silence_residual_branches(model)
        embedding_rms = embedding.pow(2).mean(dim=1).sqrt().median().item()
        query = _previous_token_query(inv_freq, model.config.max_position_embeddings, layout, embedding_rms)
        _aim_layer_0_heads_back(previous, layout, query, inv_freq)
        # Layer 0 writes the previous token into the upper half (and the two-back head the one before).
        _carry_token_embeddings(previous, layout, layout.half, PREVIOUS_COPY_GAIN * embedding_rms)
        if two_back:
            _write_the_token_two_back(previous, layout, *two_back, embedding_rms)
        _match_in_induction_heads(induction, layout, projection, two_back, embedding[:, : layout.constant])
        # Layer 1 writes the matched position's token back into the lower half, as a vote for it.
        _carry_token_embeddings(induction, layout, 0, INDUCTION_COPY_GAIN * embedding_rms)
    return _kept_regions(model, layout)


@dataclass(frozen=True)
class _Layout:
    """Where the circuit sits in a model's hidden dimensions and heads."""

    match_tokens: int
    hidden: int
    head_dim: int
    pairs: int  # RoPE frequency pairs of a head
    half: int  # where the upper half of the hidden dimensions starts
    constant: int  # the dimension that holds POSITION_CONSTANT, the last of the lower half
    # The copying heads fill half of each circuit layer, so the two-back head always has room.
    copying: range

    @classmethod
    def of(cls, config: LlamaConfig, match_tokens: int) -> _Layout:
        if match_tokens not in (1, 2):
            raise ValueError(f"the copying circuit matches 1 or 2 tokens, not {match_tokens}")
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim, half = hidden // heads, hidden // 2
        pairs = head_dim // 2
        if config.num_hidden_layers < 2 or half % head_dim or pairs < max(CONTENT_PAIRS, 1 + NEXT_PAIRS):
            raise ValueError(
                f"no room for the copying circuit in {hidden=}, {heads=}, {config.num_hidden_layers=}"
            )
        return cls(match_tokens, hidden, head_dim, pairs, half, half - 1, range(half // head_dim))

    @property
    def layer_0_heads(self) -> int:
        """The copying heads, and the head that looks two back when matching two tokens."""
        return len(self.copying) + (self.match_tokens == 2)

    def head_rows(self, head: int) -> slice:
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    @property
    def content_rows(self) -> list[int]:
        """A head's query and key rows on RoPE's slowest CONTENT_PAIRS pairs."""
        return [
            row for pair in range(self.pairs - CONTENT_PAIRS, self.pairs) for row in (pair, pair + self.pairs)
        ]


def _content_projection(layout: _Layout, generator: torch.Generator) -> torch.Tensor:
    """The random projection through which the induction heads match a token against a copy."""
    rows = len(layout.content_rows)
    return torch.randn(rows, layout.constant, generator=generator) / rows**0.5


def _lay_out_embeddings(embedding: torch.Tensor, layout: _Layout) -> None:
    """Token embeddings in the lower half, less the constant's dimension; the upper half empty."""
    embedding[:, layout.constant] = POSITION_CONSTANT
    embedding[:, layout.half :] = 0


def _silence_residual_branches(model: LlamaForCausalLM) -> None:
    """Every head and MLP a no-op on the residual stream until the circuit's heads are set."""
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _previous_token_query(
    inv_freq: torch.Tensor, positions: int, layout: _Layout, embedding_rms: float
) -> torch.Tensor:
    """The layer-0 query, read from the constant, whose score peaks PREVIOUS_TOKEN_MARGIN logits
    above every other position at the offset its key sets (`_offset_key`)."""
    weights, scores = previous_token_scores(inv_freq, positions)
    # A score peaking `offset` back, from the same weights, has the same margin over every other
    # offset: cos is even, so the offsets it sees are those the previous-token score sees.
    margin = 1 - torch.cat([scores[:1], scores[2:]]).max()
    radius = torch.sqrt(PREVIOUS_TOKEN_MARGIN * layout.head_dim**0.5 / margin)
    # The constant's value after layer 0's RMSNorm, for a typical token.
    normed_constant = POSITION_CONSTANT / embedding_rms
    return (radius * weights.sqrt() / normed_constant).float()


def _aim_layer_0_heads_back(
    previous: torch.nn.Module, layout: _Layout, query: torch.Tensor, inv_freq: torch.Tensor
) -> None:
    """Layer 0's copying heads attend one position back; the two-back head, two."""
    for head in range(layout.layer_0_heads):
        rows = layout.head_rows(head)
        previous.q_proj.weight[rows] = 0
        previous.k_proj.weight[rows] = 0
        previous.q_proj.weight[rows.start : rows.start + layout.pairs, layout.constant] = query
        offset = 1 if head in layout.copying else 2
        previous.k_proj.weight[rows, layout.constant] = _offset_key(query, inv_freq, offset)


def _match_in_induction_heads(
    induction: torch.nn.Module,
    layout: _Layout,
    projection: torch.Tensor,
    two_back: tuple[torch.Tensor, torch.Tensor] | None,
    tokens: torch.Tensor,
) -> None:
    """Layer 1's copying heads score INDUCTION_SCORE where the previous token is the current one
    (and, matching two tokens, TWO_BACK_SHARE of it more where the one before is the previous one)."""
    half, constant, head_dim = layout.half, layout.constant, layout.head_dim
    # Layer 1 sees a token, its predecessor times PREVIOUS_COPY_GAIN and the constant (and, to
    # match two tokens, the one before through `beside`): after its RMSNorm, a match of the
    # two scores this before the projection's scale.
    token_energy = tokens.pow(2).sum(dim=1).median().item()
    residual_energy = (1 + PREVIOUS_COPY_GAIN**2) * token_energy + POSITION_CONSTANT**2
    if two_back:
        beside, write = two_back
        residual_energy += (tokens @ (write @ beside).T).pow(2).sum(dim=1).median().item()
        beside_energy = (tokens @ beside.T).pow(2).sum(dim=1).median().item()
    rms_squared = residual_energy / layout.hidden
    match = PREVIOUS_COPY_GAIN * token_energy / rms_squared
    content_scale = (INDUCTION_SCORE * head_dim**0.5 / match) ** 0.5
    for head in layout.copying:
        rows = layout.head_rows(head)
        induction.q_proj.weight[rows] = 0
        induction.k_proj.weight[rows] = 0
        content = [rows.start + row for row in layout.content_rows]
        induction.q_proj.weight[content, :constant] = content_scale * projection
        induction.k_proj.weight[content, half : half + constant] = content_scale * projection
        if two_back:
            # The key's own scale carries the write; the query's sets the share.
            share = TWO_BACK_SHARE * INDUCTION_SCORE * head_dim**0.5 * rms_squared / PREVIOUS_COPY_GAIN
            induction.q_proj.weight[content, half : half + constant] = (
                share / (content_scale * beside_energy) * beside
            )


def _carry_token_embeddings(attention, layout: _Layout, target: int, gain: float) -> None:
    """The copying heads' values read the token dimensions (0 to the constant's), each head its
    share, and write them, times gain, from target on: together they carry a token embedding elsewhere."""
    head_dim = layout.head_dim
    for head in layout.copying:
        rows = [r for r in range(head * head_dim, (head + 1) * head_dim) if r < layout.constant]
        attention.v_proj.weight[head * head_dim : (head + 1) * head_dim] = 0
        attention.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0
        attention.v_proj.weight[rows, rows] = 1.0
        attention.o_proj.weight[[target + r for r in rows], rows] = gain


def _write_the_token_two_back(
    previous: torch.nn.Module,
    layout: _Layout,
    beside: torch.Tensor,
    write: torch.Tensor,
    embedding_rms: float,
) -> None:
    """The two-back head's values: the token two back, through `beside` and `write`, into the
    part of the upper half that the induction key reads."""
    start = len(layout.copying) * layout.head_dim
    rows = slice(start, start + len(layout.content_rows))
    previous.v_proj.weight[start : start + layout.head_dim] = 0
    previous.v_proj.weight[rows, : layout.constant] = beside
    previous.o_proj.weight[layout.half : layout.half + layout.constant, rows] = embedding_rms * write


def _kept_regions(model: LlamaForCausalLM, layout: _Layout) -> dict[torch.nn.Parameter, list[Region]]:
    """What pretraining must keep as it is (see `install`)."""
    previous, induction = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    everything, upper = slice(None), slice(layout.half, None)
    circuit = slice(0, len(layout.copying) * layout.head_dim)
    layer_0_circuit = slice(0, layout.layer_0_heads * layout.head_dim)
    return {
        model.get_input_embeddings().weight: [(everything, slice(layout.constant, None))],
        previous.v_proj.weight: [(layer_0_circuit, everything)],
        previous.o_proj.weight: [(upper, everything), (everything, layer_0_circuit)],
        model.model.layers[0].mlp.down_proj.weight: [(upper, everything)],
        # Layer 0's and 1's norms set the scales the circuit was calibrated for.
        model.model.layers[0].input_layernorm.weight: [(everything,)],
        model.model.layers[1].input_layernorm.weight: [(everything,)],
        previous.q_proj.weight: [(layer_0_circuit, everything)],
        previous.k_proj.weight: [(layer_0_circuit, everything)],
        induction.q_proj.weight: [(circuit, everything)],
        induction.k_proj.weight: [(circuit, everything)],
    }


def _second_to_last_maps(
    projection: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`beside`, a random projection blind to `projection`'s row space, and `write`, which puts its
    output in that row space: `projection @ write` is the identity, `beside @ write` is zero.

    Layer 0 writes `write @ beside @ token` two back into the upper half beside the previous token:
    the induction key (`projection` of the upper half) then reads both tokens, and the query reads
    the previous token through `beside`, which the write leaves untouched.
    """
    write = torch.linalg.pinv(projection)
    beside = torch.randn(projection.shape, generator=generator) / projection.shape[0] ** 0.5
    return beside - beside @ write @ projection, write


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
