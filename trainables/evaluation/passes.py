"""One pass over prompt + target: each row's target loss, then its greedy answer from the same
cache; and plain batched generation. What a trial's evaluation and the scoring jobs run."""

import copy
import itertools
import time
from dataclasses import dataclass

import torch

from trainables.decoding import calls
from trainables.decoding.batch import Request, Row, RunningBatch, prompt_token_ids, real_token_positions
from trainables.decoding.cache import full_attention_cache
from trainables.decoding.lookup import Drafter, PromptLookup
from trainables.encoding import IGNORE_INDEX, collate, prompt_ids, target_logits_only
from trainables.methods import is_prompt_learning


@dataclass(frozen=True)
class TargetLosses:
    """Each row's summed cross-entropy over its target tokens (teacher forcing), and their count."""

    sums: list[float]
    tokens: list[int]

    def head(self, rows: int) -> "TargetLosses":
        return self.taken(range(rows))

    def taken(self, indices) -> "TargetLosses":
        return TargetLosses([self.sums[i] for i in indices], [self.tokens[i] for i in indices])

    @staticmethod
    def joined(parts: list["TargetLosses"]) -> "TargetLosses":
        return TargetLosses(
            [s for part in parts for s in part.sums], [t for part in parts for t in part.tokens]
        )

    def mean(self) -> float:
        """Mean cross-entropy per target token."""
        return sum(self.sums) / max(sum(self.tokens), 1)


@torch.no_grad()
def target_losses(model, features: list[dict], batch_size: int, pad_id: int) -> TargetLosses:
    """Computed from the logits rather than the model's loss, which for AdaLoRA adds a training
    regulariser (and fails on an adapter loaded for inference)."""
    device = calls.model_device(model)
    model.eval()
    sums, tokens = [], []
    for start in range(0, len(features), batch_size):
        rows = features[start : start + batch_size]
        batch = target_logits_only(model, rows, collate(rows, pad_id, device))
        labels = batch.pop("labels")
        with calls.autocast(device):
            logits = model(**batch).logits
        # Logits of the kept positions; prompt tuning's come after its virtual tokens' too.
        logits = logits[:, -labels.shape[1] :, :].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        sums += losses.sum(dim=1).tolist()
        tokens += (targets != IGNORE_INDEX).sum(dim=1).tolist()
    return TargetLosses(sums, tokens)


@dataclass(frozen=True)
class Generations:
    texts: list[str]
    row_tokens: list[int]  # each row's new tokens, up to and including its EOS
    seconds: float
    cut: list[bool]  # each row: whether the budget cut it (max_new_tokens tokens and no EOS)
    # Prompt lookup's drafts checked, and their tokens kept, over the whole batches (as the time).
    drafts_checked: int = 0
    draft_tokens_accepted: int = 0

    @property
    def new_tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def accepted_draft_length(self) -> float | None:
        """Draft tokens kept per draft checked; None where no draft was."""
        return self.draft_tokens_accepted / self.drafts_checked if self.drafts_checked else None

    @property
    def truncated(self) -> int:
        return sum(self.cut)

    def head(self, rows: int) -> "Generations":
        """The first rows' generations (the time is the whole batch's: only the rows are cut)."""
        return self.taken(range(rows))

    def taken(self, indices) -> "Generations":
        """These rows' generations, in this order (the time stays the whole batch's)."""
        return Generations(
            [self.texts[i] for i in indices],
            [self.row_tokens[i] for i in indices],
            self.seconds,
            [self.cut[i] for i in indices],
            self.drafts_checked,
            self.draft_tokens_accepted,
        )

    @staticmethod
    def joined(parts: list["Generations"]) -> "Generations":
        return Generations(
            [text for part in parts for text in part.texts],
            [count for part in parts for count in part.row_tokens],
            sum(part.seconds for part in parts),
            [cut for part in parts for cut in part.cut],
            sum(part.drafts_checked for part in parts),
            sum(part.draft_tokens_accepted for part in parts),
        )


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    fixed_length: bool = False,
    lookup: PromptLookup | None = None,
) -> Generations:
    """Greedy, batched, left-padded; counts tokens up to and including each row's EOS, and cut rows.

    fixed_length: every row generates exactly max_new_tokens (EOS is held back until then), so
    timings compare models whatever the length of their answers. lookup: prompt lookup's
    settings, None: off (the answers are the same).
    """
    device = calls.model_device(model)
    model.eval()
    drafter = calls.drafter(lookup, model)
    batches = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left"
        ).to(device)
        batches.append(_generate_batch(model, tokenizer, inputs, max_new_tokens, drafter, fixed_length))
    return Generations.joined(batches)


def _generate_batch(
    model,
    tokenizer,
    inputs: dict,
    max_new_tokens: int,
    drafter: Drafter | None,
    fixed_length: bool = False,
    cache=None,
) -> Generations:
    """One left-padded batch, decoded greedily until every row has ended; a row that ends leaves
    the batch (decoding.RunningBatch), so the later steps compute only the rows still answering.
    cache: the key-value cache of all but each prompt's last token, when a forward pass has already
    computed it; generation then starts at that token."""
    call = calls.generation_call(model, inputs)
    device = calls.model_device(model)
    # The prompt is already tokenized; each row needs only its limits.
    request = Request("", None, max_new_tokens, min_tokens=max_new_tokens if fixed_length else 0)
    rows = [Row(request, prompt_tokens=0) for _ in range(len(inputs["attention_mask"]))]
    batch = RunningBatch(tokenizer, device, drafter)

    def forward(**step_inputs) -> torch.Tensor:
        return call.model(**step_inputs, use_cache=True).logits

    started = time.perf_counter()
    with calls.autocast(device):
        batch.join(rows, forward, call.inputs, prompt_token_ids(inputs), cache)
        while len(batch):
            batch.step(forward)
    seconds = time.perf_counter() - started
    completions = [row.completion for row in rows]
    return Generations(
        [completion.text for completion in completions],
        [completion.completion_tokens for completion in completions],
        seconds,
        [completion.finish_reason == "length" for completion in completions],
        batch.drafts_checked,
        batch.draft_tokens_accepted,
    )


def row_batches(lengths: list[int], batch_size: int, head: int = 0) -> list[list[int]]:
    """Batches of at most batch_size row indices, rows of similar length together (little padding
    in the prompt's pass). None mixes the first `head` rows with the others: those rows are
    batched as they would be alone, so their figures are those of their own evaluation."""
    rows = len(lengths)
    bounds = [0, head, rows] if 0 < head < rows else [0, rows]
    batches = []
    for begin, end in itertools.pairwise(bounds):
        by_length = sorted(range(begin, end), key=lambda row: lengths[row], reverse=True)
        batches += [by_length[start : start + batch_size] for start in range(0, len(by_length), batch_size)]
    return batches


def shared_prompt_start(tokenizer, prefix: str, features: list[dict]) -> int:
    """How many prompt tokens every row starts with: a k-shot prefix's, but its last (which may
    merge with the prompt's first), when every row's prompt begins with them; else 0."""
    if not prefix:
        return 0
    start = tokenizer(prefix)["input_ids"][:-1]
    return len(start) if all(prompt_ids(feature)[: len(start)] == start for feature in features) else 0


def with_positions(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs with the position ids that decoding gives the same columns."""
    return inputs | {"position_ids": real_token_positions(inputs["attention_mask"])}


@torch.no_grad()
def losses_and_generations(
    model,
    tokenizer,
    features: list[dict],
    max_new_tokens: int,
    batches: list[list[int]],
    shared: int = 0,
    lookup: PromptLookup | None = None,
) -> tuple[TargetLosses, Generations]:
    """Each encoded row's target loss (teacher forcing) and the model's greedy answer to its
    prompt, the same prompt tokens for both, in row order whatever the batches' order.

    One forward pass per batch reads prompt and target together: its logits give the loss, and the
    key-value cache it leaves, cut back to the prompt, is where generation starts. The prompt, most
    of a row's tokens, is encoded once instead of once for the loss and again for generation.
    `shared`: the first prompt tokens of every row, the same in all (a k-shot prefix, see
    shared_prompt_start), encoded once for the whole evaluation; each batch starts from their cache.
    Prompt tuning's virtual tokens go in front of every row (see generation_call), before any
    shared tokens, so such models share none.
    """
    device, pad_id = calls.model_device(model), tokenizer.pad_token_id
    shared = 0 if is_prompt_learning(model) else shared
    model.eval()
    drafter = calls.drafter(lookup, model)
    shared_cache = None
    if shared:
        start = torch.tensor([prompt_ids(features[0])[:shared]], device=device)
        with calls.autocast(device):
            shared_cache = full_attention_cache()
            model(input_ids=start, cache=shared_cache, use_cache=True, logits_to_keep=1)
    losses, generations = [], []
    for batch in batches:
        rows = [features[index] for index in batch]
        encoded = PromptThenTarget.of(rows, pad_id, device, shared)
        call = calls.generation_call(model, encoded.tokens())
        inputs = with_positions(call.inputs)
        if shared_cache is None:
            cache = full_attention_cache()
        else:
            cache = copy.deepcopy(shared_cache)
            cache.batch_repeat_interleave(len(rows))
            inputs = inputs | {key: inputs[key][:, shared:] for key in ("input_ids", "position_ids")}
        with calls.autocast(device):
            output = call.model(
                **inputs, cache=cache, use_cache=True, logits_to_keep=encoded.target_width + 1
            )
        losses.append(encoded.losses(output.logits))
        cache = output.cache
        cache.crop(-(encoded.target_width + 1))  # back to all but the prompts' last column
        generations.append(
            _generate_batch(model, tokenizer, encoded.prompts(), max_new_tokens, drafter, cache=cache)
        )
    batched_order = [row for batch in batches for row in batch]
    row_order = sorted(range(len(batched_order)), key=batched_order.__getitem__)
    return TargetLosses.joined(losses).taken(row_order), Generations.joined(generations).taken(row_order)


@dataclass(frozen=True)
class PromptThenTarget:
    """A batch laid out for one pass that both scores targets and primes generation: each row's
    prompt padded on the left up to prompt_width, its target after it, padded on the right. Every
    prompt then ends at the same column, where a left-padded generation batch ends its prompts.
    With `shared` tokens that every prompt starts with, those come first and the padding after
    them: [shared | pads | rest of the prompt | target | pads]; positions skip the pads."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    target_width: int

    @staticmethod
    def of(rows: list[dict], pad_id: int, device: torch.device, shared: int = 0) -> "PromptThenTarget":
        prompts = [prompt_ids(row) for row in rows]
        targets = [row["input_ids"][len(prompt) :] for row, prompt in zip(rows, prompts, strict=True)]
        rests = [prompt[shared:] for prompt in prompts]
        prompt_width, target_width = shared + max(map(len, rests)), max(map(len, targets))
        input_ids = torch.full((len(rows), prompt_width + target_width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        input_ids[:, :shared] = torch.tensor(prompts[0][:shared])
        attention_mask[:, :shared] = 1
        for index, (rest, target) in enumerate(zip(rests, targets, strict=True)):
            begin, end = prompt_width - len(rest), prompt_width + len(target)
            input_ids[index, begin:end] = torch.tensor(rest + target)
            attention_mask[index, begin:end] = 1
        return PromptThenTarget(input_ids.to(device), attention_mask.to(device), prompt_width, target_width)

    def tokens(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def losses(self, logits: torch.Tensor) -> TargetLosses:
        """logits: those of the last prompt column and every target column but the last."""
        targets = self.input_ids[:, self.prompt_width :].masked_fill(
            self.attention_mask[:, self.prompt_width :] == 0, IGNORE_INDEX
        )
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return TargetLosses(per_token.sum(dim=1).tolist(), (targets != IGNORE_INDEX).sum(dim=1).tolist())

    def prompts(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[:, : self.prompt_width],
            "attention_mask": self.attention_mask[:, : self.prompt_width],
        }
