"""Examples as the model reads them: prompt + target tokens, the loss on the target only, and
their batches. Training and evaluation read the same features."""

import torch
from transformers import PreTrainedTokenizerBase

from trainables.methods import is_prompt_learning
from trainables.tasks.spec import Task

IGNORE_INDEX = -100


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
