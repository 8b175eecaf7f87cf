"""Random-weight models of the architectures users bring, each built from its config in a second."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

# The architecture matrix (tests/test_architectures.py) and the refusals' examples.
ARCHITECTURES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "olmo2",
    "granite",
)
# Shorter than the QA task's prompts (245 to 316 tokens with the test tokenizer), so that a sliding
# window (Mistral, Gemma 2 and 3) cuts what a token sees; long enough that through two layers
# prompt tuning's virtual tokens still reach the answer, as through a real model's many layers.
SLIDING_WINDOW = 200
SLIDING = ("mistral", "gemma2", "gemma3_text")


def build(model_type: str, tokenizer_dir: str, directory: Path, **overrides) -> str:
    """A small model of `model_type` with the tokenizer of `tokenizer_dir`, saved in `directory`.

    Larger initial weights than the defaults: answers then depend on the prompt, so that answers
    can tell a wrong cache, mask or adapter apart.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        **({"sliding_window": SLIDING_WINDOW} if model_type in SLIDING else {}) | overrides,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
