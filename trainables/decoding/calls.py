"""What a model is called with to decode: its device's autocast, prompt tuning's embeddings, and
prompt lookup's drafter for it."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainables import architecture
from trainables.decoding.lookup import Drafter, PromptLookup
from trainables.methods import is_prompt_learning


def model_device(model) -> torch.device:
    return next(p.device for p in model.parameters())


def drafter(lookup: PromptLookup | None, model) -> Drafter | None:
    """Prompt lookup's drafter for decoding with `model` (None: lookup off), which knows the
    model's sliding attention window."""
    return None if lookup is None else Drafter(lookup, architecture.sliding_window(model.config))


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


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
    # Inside PeftModel.disable_adapter() (the base model's answer), only this private flag says so.
    if not is_prompt_learning(model) or model._adapters_disabled:
        return GenerationCall(model, inputs)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    token_embeddings = model.word_embeddings(input_ids)
    virtual = model.get_prompt(batch_size=input_ids.shape[0]).to(token_embeddings.dtype)
    virtual_mask = attention_mask.new_ones(virtual.shape[:2])
    # Each row's virtual tokens go right before its first real token, after its left padding, as
    # they stand in the row alone: a sliding window (Mistral, Gemma) counts columns, pads included.
    columns = _virtual_after_left_padding(attention_mask, virtual.shape[1])
    embeddings = torch.cat([virtual, token_embeddings], dim=1)
    embedded = {
        "inputs_embeds": embeddings.gather(1, columns[..., None].expand(-1, -1, embeddings.shape[-1])),
        "attention_mask": torch.cat([virtual_mask, attention_mask], dim=1).gather(1, columns),
    }
    return GenerationCall(model.get_base_model(), embedded)


def _virtual_after_left_padding(attention_mask: torch.Tensor, virtual_tokens: int) -> torch.Tensor:
    """For [virtual tokens | left-padded row], the column each new column takes: the row's left
    pads, then the virtual tokens, then the rest as it was."""
    pads = (attention_mask.cumsum(dim=-1) == 0).sum(dim=-1, keepdim=True)  # [rows, 1]
    new = torch.arange(virtual_tokens + attention_mask.shape[1], device=attention_mask.device)
    in_pads, in_virtual = new < pads, new < pads + virtual_tokens
    return torch.where(in_pads, new + virtual_tokens, torch.where(in_virtual, new - pads, new))
