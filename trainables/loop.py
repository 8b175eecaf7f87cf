"""The explicit train / eval loop shared by every method.

Batches group examples of similar length (dynamic padding, little compute spent on pad tokens,
no attention across examples). The micro-batch order is a pure function of (seed, epoch), so a
resumed run skips to the exact batch it stopped at.
"""

import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from peft import PeftModel, PeftType
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup
from transformers.integrations.neftune import activate_neftune, deactivate_neftune

from trainables.config import TrialConfig
from trainables.decoding import Request, Row, RunningBatch, real_token_positions
from trainables.dropout import use_cpu_dropout
from trainables.methods import METHODS, Method
from trainables.tasks.spec import Task

IGNORE_INDEX = -100
GROUPS_PER_MEGABATCH = 16


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the trial ends with this reason."""


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # Each step's loss since the last evaluation, left on the device: reading a loss back to the
    # host waits for the device to finish, so that happens once per evaluation, not per step.
    losses: list[torch.Tensor] = field(default_factory=list)
    last_train_loss: float = math.nan

    def window_loss(self) -> float:
        """Mean training loss since the last evaluation (the previous one's, if none since)."""
        if self.losses:
            self.last_train_loss = torch.stack(self.losses).mean().item()
        return self.last_train_loss

    def check_finite(self) -> None:
        """Raises NonFiniteLoss naming the first step since the last evaluation whose loss was not finite."""
        if not self.losses:
            return
        finite = torch.isfinite(torch.stack(self.losses)).tolist()
        if False in finite:
            first = finite.index(False)
            value = self.losses[first].item()
            raise NonFiniteLoss(f"training loss became {value} at step {self.step - len(finite) + first + 1}")


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str, max_length: int | None) -> dict:
    """Prompt + target + EOS; the loss only sees the target. Beyond max_length, the target keeps at
    most half of it and the prompt loses its start; None: no limit."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    if max_length is not None:
        target_ids = target_ids[: max_length // 2]
        prompt_ids = prompt_ids[-(max_length - len(target_ids)) :]
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


def encode_examples(task: Task, tokenizer, examples, max_length: int | None, prefix: str = "") -> list[dict]:
    return [
        encode(tokenizer, prefix + task.format_prompt(example), task.format_target(example), max_length)
        for example in examples
    ]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches whose members have similar lengths (HF's LengthGroupedSampler idea)."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    megabatch = batch_size * GROUPS_PER_MEGABATCH
    batches = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def micro_batches(lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    for epoch in itertools.count():
        yield from length_grouped_batches(lengths, batch_size, seed, epoch)


def collate(features: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows padded on the right, with no attention mask: under the causal mask no real token
    attends to a pad after it, and pads carry no label, so a padding mask would change no loss or
    gradient; without one, attention runs its causal kernel (SDPA's flash path on the CPU too)
    instead of a masked one."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.tensor(feature["input_ids"])
        labels[row, :length] = torch.tensor(feature["labels"])
    return {"input_ids": input_ids.to(device), "labels": labels.to(device)}


def first_target(feature: dict) -> int:
    return next(i for i, label in enumerate(feature["labels"]) if label != IGNORE_INDEX)


def prompt_ids(feature: dict) -> list[int]:
    return feature["input_ids"][: first_target(feature)]


def is_prompt_learning(model) -> bool:
    """Whether the model puts virtual tokens in front of every input (prompt tuning and kin)."""
    peft_config = getattr(model, "active_peft_config", None)
    return peft_config is not None and peft_config.is_prompt_learning


def target_logits_only(model, rows: list[dict], batch: dict[str, torch.Tensor]) -> dict:
    """The collated rows, asking the model for logits only where a target token is predicted:
    from the position before the rows' first target token on. The prompt's logits are never used,
    and the vocabulary projection and its softmax are a large part of a small model's step (and of
    a large vocabulary's memory). The loss stays the model's own, so methods that add a term to it
    (AdaLoRA's orthogonality) still do. Prompt tuning's virtual tokens shift every position, so
    such models get the whole batch."""
    if is_prompt_learning(model):
        return batch
    start = max(min(first_target(row) for row in rows) - 1, 0)
    width = batch["labels"].shape[1]
    return batch | {"labels": batch["labels"][:, start:], "logits_to_keep": width - start}


def _device(model) -> torch.device:
    return next(p.device for p in model.parameters())


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model, config: TrialConfig, total_steps: int):
    method = METHODS[config.method]
    optimizer = method.optimizer(model, config.hyperparameters, config.learning_rate, config.weight_decay)
    warmup = math.floor(config.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


@contextmanager
def noisy_embeddings(model, alpha: float):
    """NEFTune's noise on the input embeddings within the block, in training mode only (the
    hook reads the embedding module's mode, so evaluation inside the block sees clean ones); 0: none."""
    if not alpha:
        yield
        return
    hook = activate_neftune(model, alpha)
    try:
        yield
    finally:
        deactivate_neftune(model, hook)


def train(
    model,
    features: list[dict],
    config: TrialConfig,
    method: Method,
    total_steps: int,
    optimizer,
    scheduler,
    state: TrainState,
    pad_id: int,
    on_eval: Callable[[TrainState], None],
) -> TrainState:
    """Run optimizer steps from state.step to total_steps, calling on_eval every eval_every steps."""
    device = _device(model)
    lengths = [len(f["input_ids"]) for f in features]
    stream = itertools.islice(
        micro_batches(lengths, config.batch_size, config.seed), state.step * config.grad_accum, None
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_cpu_dropout(model)
    model.train()
    with noisy_embeddings(model, config.neftune_alpha):
        while state.step < total_steps:
            started = time.perf_counter()
            step_loss = torch.zeros((), device=device)
            for _ in range(config.grad_accum):
                rows = next(stream)
                chosen = [features[i] for i in rows]
                batch = target_logits_only(model, chosen, collate(chosen, pad_id, device))
                with autocast(device):
                    loss = model(**batch).loss
                (loss / config.grad_accum).backward()
                step_loss += loss.detach().float() / config.grad_accum
                state.tokens += sum(lengths[i] for i in rows)
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if method.after_optimizer_step is not None:
                method.after_optimizer_step(model, state.step)
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append(step_loss)
            evaluating = state.step % config.eval_every == 0 or state.step == total_steps
            if evaluating and device.type == "cuda":
                torch.cuda.synchronize(device)  # the window's queued work is training time, not evaluation's
            state.seconds += time.perf_counter() - started
            if evaluating:
                state.check_finite()
                on_eval(state)
                state.losses.clear()
                model.train()
    return state


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
    device = _device(model)
    model.eval()
    sums, tokens = [], []
    for start in range(0, len(features), batch_size):
        rows = features[start : start + batch_size]
        batch = target_logits_only(model, rows, collate(rows, pad_id, device))
        labels = batch.pop("labels")
        with autocast(device):
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

    @property
    def new_tokens(self) -> int:
        return sum(self.row_tokens)

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
        )

    @staticmethod
    def joined(parts: list["Generations"]) -> "Generations":
        return Generations(
            [text for part in parts for text in part.texts],
            [count for part in parts for count in part.row_tokens],
            sum(part.seconds for part in parts),
            [cut for part in parts for cut in part.cut],
        )


# Adapters whose virtual tokens are embeddings put in front of the prompt's.
PROMPT_EMBEDDING_TYPES = (PeftType.PROMPT_TUNING, PeftType.P_TUNING)


@dataclass(frozen=True)
class GenerationCall:
    """What decodes a prompt: the model whose forward is called, and the prompt's inputs to it."""

    model: object
    inputs: dict


def generation_call(model, inputs: dict) -> GenerationCall:
    """The model and the inputs as they are, except for prompt tuning and P-tuning.

    PEFT 0.21's forward puts the virtual tokens in front of whatever it is given, and in
    `generate` it does so again at every step whose cache comes as `cache` (the name transformers
    5 uses): each new token would follow another copy of them (wrong answers, and a cache that
    grows by num_virtual_tokens + 1 a step). So the virtual tokens go in front of the prompt's
    embeddings here, once, and the base model decodes from those embeddings, as PEFT's forward
    does in training.
    """
    prompt_embedding = (
        isinstance(model, PeftModel) and model.active_peft_config.peft_type in PROMPT_EMBEDDING_TYPES
    )
    # Inside PeftModel.disable_adapter() (the base model's answer), only this private flag says so.
    if not prompt_embedding or model._adapters_disabled:
        return GenerationCall(model, inputs)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    token_embeddings = model.word_embeddings(input_ids)
    virtual = model.get_prompt(batch_size=input_ids.shape[0]).to(token_embeddings.dtype)
    virtual_mask = attention_mask.new_ones(virtual.shape[:2])
    embedded = {
        "inputs_embeds": torch.cat([virtual, token_embeddings], dim=1),
        "attention_mask": torch.cat([virtual_mask, attention_mask], dim=1),
    }
    return GenerationCall(model.get_base_model(), embedded)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, fixed_length: bool = False
) -> Generations:
    """Greedy, batched, left-padded; counts tokens up to and including each row's EOS, and cut rows.

    fixed_length: every row generates exactly max_new_tokens (EOS is held back until then), so
    timings compare models whatever the length of their answers.
    """
    device = _device(model)
    model.eval()
    batches = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left"
        ).to(device)
        batches.append(_generate_batch(model, tokenizer, inputs, max_new_tokens, fixed_length))
    return Generations.joined(batches)


def _generate_batch(
    model, tokenizer, inputs: dict, max_new_tokens: int, fixed_length: bool = False, cache=None
) -> Generations:
    """One left-padded batch, decoded greedily until every row has ended; a row that ends leaves
    the batch (decoding.RunningBatch), so the later steps compute only the rows still answering.
    cache: the key-value cache of all but each prompt's last token, when a forward pass has already
    computed it; generation then starts at that token."""
    call = generation_call(model, inputs)
    device = _device(model)
    # The prompt is already tokenized; each row needs only its limits.
    request = Request("", None, max_new_tokens, min_tokens=max_new_tokens if fixed_length else 0)
    rows = [Row(request, prompt_tokens=0) for _ in range(len(inputs["attention_mask"]))]
    batch = RunningBatch(tokenizer, device)

    def forward(**step_inputs) -> torch.Tensor:
        return call.model(**step_inputs, use_cache=True, logits_to_keep=1).logits

    started = time.perf_counter()
    with autocast(device):
        batch.join(rows, forward, call.inputs, cache)
        while len(batch):
            batch.step(forward)
    seconds = time.perf_counter() - started
    completions = [row.completion for row in rows]
    return Generations(
        [completion.text for completion in completions],
        [completion.completion_tokens for completion in completions],
        seconds,
        [completion.finish_reason == "length" for completion in completions],
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
    model, tokenizer, features: list[dict], max_new_tokens: int, batches: list[list[int]], shared: int = 0
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
    device, pad_id = _device(model), tokenizer.pad_token_id
    shared = 0 if is_prompt_learning(model) else shared
    model.eval()
    shared_cache = None
    if shared:
        start = torch.tensor([prompt_ids(features[0])[:shared]], device=device)
        with autocast(device):
            shared_cache = model(input_ids=start, use_cache=True, logits_to_keep=1).cache
    losses, generations = [], []
    for batch in batches:
        rows = [features[index] for index in batch]
        encoded = PromptThenTarget.of(rows, pad_id, device, shared)
        call = generation_call(model, encoded.tokens())
        inputs = with_positions(call.inputs)
        cache = None
        if shared_cache is not None:
            cache = copy.deepcopy(shared_cache)
            cache.batch_repeat_interleave(len(rows))
            inputs = inputs | {key: inputs[key][:, shared:] for key in ("input_ids", "position_ids")}
        with autocast(device):
            output = call.model(
                **inputs, cache=cache, use_cache=True, logits_to_keep=encoded.target_width + 1
            )
        losses.append(encoded.losses(output.logits))
        cache = output.cache
        cache.crop(-(encoded.target_width + 1))  # back to all but the prompts' last column
        generations.append(_generate_batch(model, tokenizer, encoded.prompts(), max_new_tokens, cache=cache))
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
