"""Loading the tokenizer and causal LM from an HF id, a local directory, or the embedded default."""

import functools
import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerBase,
)

from trainables import architecture, embedded
from trainables.errors import ConfigError

EMBEDDED = "embedded"


def resolve(model: str) -> str:
    """`embedded` becomes the shipped model (or, for changed train data, its cached build);
    anything else goes to from_pretrained."""
    return str(embedded.ensure_built()) if model == EMBEDDED else model


def unloadable_reason(model: str) -> str | None:
    """A reason the model cannot be loaded, checked cheaply before any expensive work; None if fine."""
    if model == EMBEDDED:
        return None
    path = Path(model)
    is_local = path.exists() or model.startswith((".", "/", "~"))
    if is_local and not (path.expanduser() / "config.json").is_file():
        return f"model path '{model}' has no config.json"
    return None


def attention_implementation(model: str) -> str:
    """FlashAttention 2 where CUDA and flash-attn are present and the architecture has it, else PyTorch
    SDPA, else the architecture's own eager attention (Gemma 2 has no SDPA path: its logit soft-capping)."""
    model_class = _causal_lm_class(model)
    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if flash and getattr(model_class, "_supports_flash_attn", False):
        return "flash_attention_2"
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


@functools.cache
def _causal_lm_class(model: str) -> type | None:
    """The transformers class AutoModelForCausalLM builds for this model, from its config alone."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(resolve(model))
    return MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, as every prompt and target is encoded with it: its EOS pads where it has
    no pad token (padding is masked), and it never appends an EOS to a text (encoding.encode ends
    each target with one). Whether it puts a BOS in front stays its own habit."""
    tokenizer = AutoTokenizer.from_pretrained(resolve(model))
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"model '{model}': its tokenizer has no EOS token, which ends every target and answer"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    adds_bos, appends_eos = _special_tokens_added(tokenizer)
    if appends_eos:
        # A prompt ending in EOS reads as a finished text. transformers rebuilds the tokenizer's
        # template from these two flags; the BOS flag is set from what it did, not what it says.
        tokenizer.add_eos_token = False
        tokenizer.add_bos_token = adds_bos
        if _special_tokens_added(tokenizer) != (adds_bos, False):
            raise ConfigError(
                f"model '{model}': its tokenizer appends EOS to every text and cannot be told not to"
            )
    return tokenizer


def _special_tokens_added(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether the tokenizer puts its BOS in front of an encoded text, and its EOS after it."""
    ids = tokenizer("a")["input_ids"]
    return ids[0] == tokenizer.bos_token_id, ids[-1] == tokenizer.eos_token_id


def device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def compute_dtype() -> torch.dtype:
    """bf16 on GPU (FlashAttention 2 needs it), fp32 on CPU: a CPU without bf16 instructions (AVX2
    alone) multiplies bf16 matrices some 50 times slower than fp32 ones."""
    return torch.bfloat16 if device().type == "cuda" else torch.float32


def nf4_config() -> BitsAndBytesConfig:
    """QLoRA's recipe: 4-bit NormalFloat, double quantization, computing in the model's dtype (bf16
    on GPU, as the paper's)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def load_model(model: str, *, quantize_4bit: bool = False, safetensors_only: bool = False):
    """In compute_dtype(); optionally 4-bit NF4 base weights.

    safetensors_only refuses pickled weights: for directories a sweep wrote, which get served.
    """
    target = device()
    dtype = compute_dtype()
    extra = {"quantization_config": nf4_config(), "device_map": {"": str(target)}} if quantize_4bit else {}
    if safetensors_only:
        extra["use_safetensors"] = True
    loaded = AutoModelForCausalLM.from_pretrained(
        resolve(model), dtype=dtype, attn_implementation=attention_implementation(model), **extra
    )
    return loaded if quantize_4bit else loaded.to(target)


@functools.cache
def parameter_count(model: str) -> int | None:
    """The model's parameters, from its config alone (its skeleton: no weights are read).

    None where the config cannot be read; the checks that own that problem report it.
    """
    try:
        skeleton = architecture.skeleton(resolve(model))
    except (OSError, ValueError):
        return None
    return sum(parameter.numel() for parameter in skeleton.parameters())


def has_fewer_parameters(model: str, limit: int) -> bool:
    """Whether the model is known to be under `limit` parameters (an unknown size is not)."""
    if model == EMBEDDED:
        return True  # a few million parameters; counting them exactly would mean building it first
    count = parameter_count(model)
    return count is not None and count < limit
