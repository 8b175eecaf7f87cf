"""Iteration-level batching: a batch of rows decoded one token at a time, which rows join and leave.

A row is one request being answered. Rows that join are prefilled together, left-padded, and
their key/value cache is laid beside the running rows' (the narrower side padded on the left, so
every row's newest token sits in the last column); a finished row leaves at once and the columns
that only padding still fills are cut. Each row keeps its own position ids, counted from its first
real token, and the attention mask hides the padding: a row's greedy answer is the one it gets
alone. Each row also keeps its own sampling settings (and random generator), token limits and
stop strings, so requests of any settings share one batch.

Serving (serve.engine) lets new requests join between steps. Evaluation (trainables.training.loop) decodes
each batch of rows to its end: as rows finish they leave, so the steps that remain cost only what
the unfinished rows need, where `generate` computes every row until the batch's longest ends.

The model is whatever forward the caller gives for each step (a base, or PEFT with one adapter
name per row): the batch holds only the tokens, the cache and the per-row bookkeeping.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from trainables.decoding.cache import append_in_place, full_attention_cache


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Request:
    prompt: str
    adapter: str | None  # None: the base model
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # EOS is held back until this many tokens: fixed-length answers for benchmarks


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


# (input_ids or inputs_embeds, attention_mask, position_ids, cache) -> logits of each row's last position
Forward = Callable[..., torch.Tensor]


def real_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each column's position id, counting a row's real tokens only, whatever padding lies before
    or between them (a padding column, masked anyway, takes the position of the token before it)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [text.index(marker) for marker in stop if marker and marker in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class Row:
    request: Request
    prompt_tokens: int
    owner: object = None  # what the caller answers when the row finishes
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    completion: Completion | None = None  # set when the row is finished

    def __post_init__(self):
        sampling = self.request.sampling
        if sampling.temperature > 0:
            # A generator per row: a seeded request draws the same tokens whatever it shares a batch with.
            self.generator = torch.Generator()
            if sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(sampling.seed)


class RunningBatch:
    """The rows being decoded, their key/value cache, attention mask and next inputs."""

    def __init__(self, tokenizer, device: torch.device):
        self.tokenizer, self.device = tokenizer, device
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None  # [rows, cached columns]
        self.next_positions: torch.Tensor | None = None  # [rows]: the position id of each row's next token
        self.next_tokens: torch.Tensor | None = None  # [rows]: each row's last chosen token, fed next

    def __len__(self) -> int:
        return len(self.rows)

    def prompts(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            [request.prompt for request in requests], return_tensors="pt", padding=True, padding_side="left"
        ).to(self.device)

    def join(
        self,
        rows: list[Row],
        forward: Forward,
        inputs: dict[str, torch.Tensor],
        cache: DynamicCache | None = None,
    ) -> list[Row]:
        """Prefills `rows` from `inputs` (left-padded ids or embeddings, with their mask) and adds them.

        cache: the key-value cache of all but each prompt's last column, when a pass over the
        prompts has already computed it; only that column is then read.
        Returns the rows that finished on their first token (they have left the batch).
        """
        mask = inputs["attention_mask"]
        positions = real_token_positions(mask)
        if cache is None:
            cache = full_attention_cache()
            logits = forward(**inputs, position_ids=positions, cache=cache)
        else:
            last = {key: inputs[key][:, -1:] for key in ("input_ids", "inputs_embeds") if key in inputs}
            logits = forward(**last, attention_mask=mask, position_ids=positions[:, -1:], cache=cache)
        append_in_place(cache)
        if self.rows:
            self._lay_beside(cache, mask.long(), positions[:, -1] + 1)
        else:
            self.cache, self.attention_mask, self.next_positions = cache, mask.long(), positions[:, -1] + 1
        self.rows += rows
        return self._advance(rows, logits)

    def step(self, forward: Forward) -> list[Row]:
        """One token for every row; returns the rows that finished (they have left the batch)."""
        ones = self.attention_mask.new_ones(len(self.rows), 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        logits = forward(
            input_ids=self.next_tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.next_positions[:, None],
            cache=self.cache,
        )
        self.next_positions = self.next_positions + 1
        return self._advance(self.rows, logits)

    def drop(self, leaving: list[Row]) -> None:
        """Takes rows out (finished or abandoned by their caller) and cuts the columns only padding fills."""
        if not leaving:
            return
        gone = {id(row) for row in leaving}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.attention_mask = self.next_positions = self.next_tokens = None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.next_positions, self.next_tokens = self.next_positions[index], self.next_tokens[index]
        first_used = int(self.attention_mask.any(dim=0).long().argmax())
        if first_used:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first_used:, :], layer.values[..., first_used:, :]
            self.attention_mask = self.attention_mask[:, first_used:]

    def _lay_beside(self, cache: DynamicCache, attention_mask: torch.Tensor, next_positions: torch.Tensor):
        width = max(self.attention_mask.shape[1], attention_mask.shape[1])
        for running, joining in zip(self.cache.layers, cache.layers, strict=True):
            running.keys = torch.cat([_pad_left(running.keys, width, 2), _pad_left(joining.keys, width, 2)])
            running.values = torch.cat(
                [_pad_left(running.values, width, 2), _pad_left(joining.values, width, 2)]
            )
        self.attention_mask = torch.cat(
            [_pad_left(self.attention_mask, width, 1), _pad_left(attention_mask, width, 1)]
        )
        self.next_positions = torch.cat([self.next_positions, next_positions])

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> list[Row]:
        """Chooses each of `rows` (the batch's last rows) its next token; returns those now finished."""
        chosen = self._choose(rows, logits[:, -1, :].float())
        if len(rows) == len(self.rows):
            self.next_tokens = chosen
        else:
            self.next_tokens = torch.cat([self.next_tokens, chosen])
        finished = []
        for row, token in zip(rows, chosen.tolist(), strict=True):
            row.tokens.append(token)
            row.completion = self._completion_if_done(row)
            if row.completion is not None:
                finished.append(row)
        self.drop(finished)
        return finished

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        eos = self.tokenizer.eos_token_id
        held = [i for i, row in enumerate(rows) if len(row.tokens) < row.request.min_tokens]
        if held:
            logits[held, eos] = float("-inf")
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row.generator is not None:
                chosen[i] = _sample(logits[i], row.request.sampling, row.generator)
        return chosen

    def _completion_if_done(self, row: Row) -> Completion | None:
        request, tokens = row.request, row.tokens
        ended = tokens[-1] == self.tokenizer.eos_token_id
        answer = tokens[:-1] if ended else tokens
        if request.stop:
            # On the decoded text, as the answer is cut: a stop string may span or split tokens.
            text, stopped = truncate_at_stop(self._decode(answer), request.stop)
            if stopped:
                return Completion(text, row.prompt_tokens, self._tokens_behind(answer, text), "stop")
        if ended or len(tokens) >= request.max_tokens:
            reason = "stop" if ended else "length"
            return Completion(self._decode(answer), row.prompt_tokens, len(tokens), reason)
        return None

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_behind(self, tokens: list[int], text: str) -> int:
        """How many leading tokens produced `text` (a stop string may begin inside the last one)."""
        return next(n for n in range(len(tokens) + 1) if len(self._decode(tokens[:n])) >= len(text))


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token from the temperature-scaled distribution, cut to its top-p nucleus."""
    probabilities = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = probabilities.sort(descending=True)
        # Keep the most likely tokens until their mass reaches top_p (at least one).
        outside = ordered.cumsum(-1) - ordered >= sampling.top_p
        probabilities = probabilities.scatter(0, order, ordered.masked_fill(outside, 0.0))
    return torch.multinomial(probabilities.cpu(), 1, generator=generator)[0]
