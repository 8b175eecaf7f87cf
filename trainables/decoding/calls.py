"""What a model is called with to decode: its device's autocast, and prompt tuning's embeddings."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainables.methods import is_prompt_learning


def model_device(model) -> torch.device:
    return next(p.device for p in model.parameters())


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
    embedded = {
        "inputs_embeds": torch.cat([virtual, token_embeddings], dim=1),
        "attention_mask": torch.cat([virtual_mask, attention_mask], dim=1),
    }
    return GenerationCall(model.get_base_model(), embedded)
