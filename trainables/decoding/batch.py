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

With prompt lookup (decoding.lookup), a step feeds each greedy row its next token and a draft of
the tokens that may follow, all in one forward pass: the logits after each fed token say what
greedy decoding chooses there, so the row keeps the draft's tokens up to the first it would not
have chosen, and the token chosen there. Rows keep different lengths of their drafts; the columns
of a row's rejected tokens stay in the cache, masked like padding, and the columns that no row
kept are cut. Each row's answer is the one it gets without drafts.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from trainables.decoding.cache import append_in_place, full_attention_cache
from trainables.decoding.lookup import Drafter, NgramIndex


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


# (input_ids or inputs_embeds, attention_mask, position_ids, cache, logits_to_keep) -> the logits
# of each row's last logits_to_keep positions
Forward = Callable[..., torch.Tensor]


def real_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each column's position id, counting a row's real tokens only, whatever padding lies before
    or between them (a padding column, masked anyway, takes the position of the token before it)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_token_ids(tokens: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's token ids without its padding, from a tokenizer's left-padded batch."""
    return [
        ids[mask.bool()].tolist()
        for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"], strict=True)
    ]


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
    own: NgramIndex | None = None  # its prompt and answer, for drafts (greedy rows, prompt lookup on)

    def take(self, token: int) -> None:
        self.tokens.append(token)
        if self.own is not None:
            self.own.extend([token])

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

    def __init__(self, tokenizer, device: torch.device, drafter: Drafter | None = None):
        """drafter: prompt lookup's (None: off); one drafter may serve batch after batch, whose
        answers its later drafts then search."""
        self.tokenizer, self.device, self.drafter = tokenizer, device, drafter
        # Drafts fed with a row's next token, and how many of their tokens the rows kept.
        self.drafts_checked = self.draft_tokens_accepted = 0
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
        prompt_ids: list[list[int]],
        cache: DynamicCache | None = None,
    ) -> list[Row]:
        """Prefills `rows` from `inputs` (left-padded ids or embeddings, with their mask) and adds them.

        cache: the key-value cache of all but each prompt's last column, when a pass over the
        prompts has already computed it; only that column is then read.
        prompt_ids: each row's prompt tokens, what prompt lookup drafts from (inputs may be
        embeddings: prompt tuning's).
        Returns the rows that finished on their first token (they have left the batch).
        """
        mask = inputs["attention_mask"]
        positions = real_token_positions(mask)
        if cache is None:
            cache = full_attention_cache()
            logits = forward(**inputs, position_ids=positions, cache=cache, logits_to_keep=1)
        else:
            last = {key: inputs[key][:, -1:] for key in ("input_ids", "inputs_embeds") if key in inputs}
            logits = forward(
                **last, attention_mask=mask, position_ids=positions[:, -1:], cache=cache, logits_to_keep=1
            )
        if self.drafter is not None:
            for row, ids in zip(rows, prompt_ids, strict=True):
                if row.generator is None:  # sampled rows are not drafted for
                    row.own = self.drafter.row(ids)
        append_in_place(cache)
        if self.rows:
            self._lay_beside(cache, mask.long(), positions[:, -1] + 1)
        else:
            self.cache, self.attention_mask, self.next_positions = cache, mask.long(), positions[:, -1] + 1
        self.rows += rows
        return self._advance(rows, logits)

    def step(self, forward: Forward) -> list[Row]:
        """At least one token for every row (more where a draft holds); returns the rows that
        finished (they have left the batch)."""
        drafts = [self._draft(row) for row in self.rows] if self._may_draft() else []
        width = 1 + max(map(len, drafts), default=0)
        if width == 1:
            ones = self.attention_mask.new_ones(len(self.rows), 1)
            self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
            logits = forward(
                input_ids=self.next_tokens[:, None],
                attention_mask=self.attention_mask,
                position_ids=self.next_positions[:, None],
                cache=self.cache,
                logits_to_keep=1,
            )
            self.next_positions = self.next_positions + 1
            return self._advance(self.rows, logits)
        # Each row's next token and its draft, the shorter drafts padded on the right (masked, at
        # the position of the row's last token: none past what the row itself may reach).
        padding = [width - 1 - len(draft) for draft in drafts]
        fed = [
            [token, *draft, *[token] * pads]
            for token, draft, pads in zip(self.next_tokens.tolist(), drafts, padding, strict=True)
        ]
        fed_mask = [[1] * (width - pads) + [0] * pads for pads in padding]
        offsets = [[min(column, len(draft)) for column in range(width)] for draft in drafts]
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_tensor(fed_mask)], dim=1
        )
        logits = forward(
            input_ids=torch.tensor(fed, device=self.device),
            attention_mask=self.attention_mask,
            position_ids=self.next_positions[:, None] + torch.tensor(offsets, device=self.device),
            cache=self.cache,
            logits_to_keep=width,
        )
        return self._accept(drafts, logits)

    def _may_draft(self) -> bool:
        """Whether this step may draft: with a sliding window, only while every row would stay
        inside it were each step from now on as wide as a draft makes it (Drafter's window)."""
        if self.drafter is None:
            return False
        if self.drafter.window is None:
            return True
        steps_left = max(row.request.max_tokens - len(row.tokens) for row in self.rows)
        widest = self.attention_mask.shape[1] + (1 + self.drafter.lookup.tokens) * steps_left
        return widest < self.drafter.window

    def _draft(self, row: Row) -> list[int]:
        """The tokens lookup guesses follow the row's next one: at most what the row may still
        add after it (a step adds the kept draft and one token more)."""
        if row.own is None:
            return []
        return self.drafter.draft(row.own, row.request.adapter, row.request.max_tokens - len(row.tokens) - 1)

    def _accept(self, drafts: list[list[int]], logits: torch.Tensor) -> list[Row]:
        """Each row's tokens from a drafted step: its choice after the next token (sampled rows
        as ever), then, while the draft's token is the one chosen, the choice after that token."""
        logits = logits.float()
        first = self._choose(self.rows, logits[:, 0]).tolist()
        after_draft = self._greedy(self.rows, logits[:, 1:]).tolist()
        kept_columns, next_tokens, finished = [], [], []
        for row, draft, choice, choices in zip(self.rows, drafts, first, after_draft, strict=True):
            chosen = [choice]
            for drafted, greedy in zip(draft, choices, strict=False):
                if drafted != chosen[-1]:
                    break
                chosen.append(greedy)
            if draft:
                self.drafts_checked += 1
                self.draft_tokens_accepted += len(chosen) - 1
            kept_columns.append(len(chosen))  # the next token's and the kept draft's
            next_tokens.append(chosen[-1])
            for token in chosen:  # one by one, as plain steps take them: the row may end on any
                row.take(token)
                row.completion = self._completion_if_done(row)
                if row.completion is not None:
                    finished.append(row)
                    break
        self._remember(finished)
        width = logits.shape[1]
        kept = torch.tensor(kept_columns, device=self.device)
        self.attention_mask[:, -width:] = (torch.arange(width, device=self.device) < kept[:, None]).long()
        self.next_positions = self.next_positions + kept
        self.next_tokens = torch.tensor(next_tokens, device=self.device)
        self._cut_last_columns(width - max(kept_columns))
        self.drop(finished)
        return finished

    def _cut_last_columns(self, count: int) -> None:
        """Cuts the cache's last columns (drafted tokens no row kept)."""
        if not count:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., :-count, :], layer.values[..., :-count, :]
        self.attention_mask = self.attention_mask[:, :-count]

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
            row.take(token)
            row.completion = self._completion_if_done(row)
            if row.completion is not None:
                finished.append(row)
        self._remember(finished)
        self.drop(finished)
        return finished

    def _remember(self, finished: list[Row]) -> None:
        """Finished answers, for later drafts of the same adapter."""
        for row in finished:
            if row.own is not None:
                self.drafter.answered(row.request.adapter, row.tokens)

    def _greedy(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        """Each row's greedy choice after each of its drafted tokens ([rows, columns]), EOS held
        back where the row would have fewer than min_tokens tokens before it, as _choose holds it."""
        taken = torch.tensor([len(row.tokens) for row in rows], device=logits.device)
        least = torch.tensor([row.request.min_tokens for row in rows], device=logits.device)
        columns = torch.arange(1, logits.shape[1] + 1, device=logits.device)
        held = taken[:, None] + columns < least[:, None]
        logits[..., self.tokenizer.eos_token_id] = logits[..., self.tokenizer.eos_token_id].masked_fill(
            held, float("-inf")
        )
        return logits.argmax(dim=-1)

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
