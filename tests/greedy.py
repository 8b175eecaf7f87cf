"""The reference that generation is checked against: greedy decoding with one full forward pass
per token, no cache (PEFT's forward puts prompt tuning's virtual tokens in correctly)."""

import torch

# How far apart the two best next tokens' logits may be for QLoRA to choose either: its 4-bit
# kernels round differently for other batch shapes, which moved the embedded model's logits by up
# to 0.057 (median 0.01) between a row alone and the same row in a left-padded batch of 3, so the
# gap between two of them by up to twice that.
NEAR_TIE = 0.12


def greedy_without_cache(
    model, tokenizer, prompts: list[str], new_tokens: int, hold_eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's new tokens, and at each step the gap between the best two logits. hold_eos:
    EOS is never chosen (as fixed-length generation holds it back)."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    gaps = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
            if hold_eos:
                logits[:, tokenizer.eos_token_id] = -torch.inf
            best_two = logits.topk(2, dim=-1)
            gaps.append(best_two.values[:, 0] - best_two.values[:, 1])
            chosen = best_two.indices[:, :1]
            ids, mask = torch.cat([ids, chosen], dim=1), torch.cat([mask, torch.ones_like(chosen)], dim=1)
    return ids[:, inputs["input_ids"].shape[1] :], torch.stack(gaps, dim=1)


def greedy_text(model, tokenizer, prompt: str, new_tokens: int, hold_eos: bool = True) -> str:
    """The prompt's greedy answer alone, up to its first EOS where EOS may be chosen."""
    new_ids, _ = greedy_without_cache(model, tokenizer, [prompt], new_tokens, hold_eos)
    tokens = new_ids[0].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def gap_where_they_part(
    model, tokenizer, prompt: str, first: str, second: str, new_tokens: int, hold_eos: bool = True
) -> float:
    """Following the reference's greedy tokens, the logit gap at the step where the two answers no
    longer both agree with it."""
    new_ids, gaps = greedy_without_cache(model, tokenizer, [prompt], new_tokens, hold_eos)
    for step in range(new_tokens):
        text = tokenizer.decode(new_ids[0, : step + 1], skip_special_tokens=True)
        if not (first.startswith(text) and second.startswith(text)):
            return gaps[0, step].item()
    raise AssertionError(f"{first!r} and {second!r} both follow the reference")
