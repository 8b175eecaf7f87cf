"""METHODS registry: name -> how it wraps the base model, whether the base is 4-bit, per-step hooks,
how it saves and reloads what it trained.

Adding a method is one entry here and one row in tests/trainables/test_methods.py.
Method quirks live in their spec, never as `if method == ...` in the loop.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainables import models
from trainables.config import TrialConfig

# What a PEFT method saves, and what full fine-tuning saves: safetensors only, never pickles.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class BuildContext:
    total_steps: int
    model_path: str
    instruction: str


def _save_adapter(model, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    model.save_pretrained(directory)


def _load_adapter(model_path: str, saved: Path, quantize_4bit: bool) -> PeftModel:
    return PeftModel.from_pretrained(models.load_model(model_path, quantize_4bit=quantize_4bit), saved)


@dataclass(frozen=True)
class Method:
    name: str
    # The base model -> the model that trains: a PeftModel, or the base itself.
    wrap: Callable[[PreTrainedModel, TrialConfig, BuildContext], torch.nn.Module]
    quantize_4bit: bool = False
    # Called after each optimizer step, while gradients are still there (AdaLoRA needs them).
    after_optimizer_step: Callable[[object, int], None] | None = None
    # What the method carries from step to step beyond its trainable weights (AdaLoRA's rank
    # allocation): saved with each checkpoint, so that a resumed run continues exactly.
    training_state: Callable[[torch.nn.Module], dict] = lambda model: {}
    restore_training_state: Callable[[torch.nn.Module, dict], None] = lambda model, state: None
    # Problems with the config that only this method has, given the run's length.
    problems: Callable[[TrialConfig, int], list[str]] = lambda config, total_steps: []
    # Writes what the trial keeps into a directory; saved_files are what that directory holds.
    save: Callable[[torch.nn.Module, PreTrainedTokenizerBase, Path], None] = _save_adapter
    saved_files: tuple[str, ...] = ADAPTER_FILES
    # (base model path, saved directory, 4-bit base) -> the trained model again, for scoring.
    load_trained: Callable[[str, Path, bool], torch.nn.Module] = _load_adapter
    # The saved directory is a whole model: served as a model of its own, not as an adapter on the base.
    standalone: bool = False
    # In the default sweep only for base models with fewer parameters than this (None: always);
    # above it, the method is opt-in through --methods.
    default_below_params: int | None = None


def with_peft(peft_config: Callable[[TrialConfig, BuildContext], PeftConfig]):
    """A PEFT method's wrap: the base with the adapter that peft_config describes."""

    def wrap(base: PreTrainedModel, config: TrialConfig, context: BuildContext) -> PeftModel:
        return get_peft_model(base, peft_config(config, context))

    return wrap


def _lora(config: TrialConfig, context: BuildContext) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules="all-linear",
        task_type=TaskType.CAUSAL_LM,
    )


def adalora_schedule(config: TrialConfig, total_steps: int) -> tuple[int, int]:
    tinit = config.adalora_tinit if config.adalora_tinit is not None else total_steps // 10
    tfinal = config.adalora_tfinal if config.adalora_tfinal is not None else total_steps // 5
    return tinit, tfinal


def _adalora_problems(config: TrialConfig, total_steps: int) -> list[str]:
    tinit, tfinal = adalora_schedule(config, total_steps)
    problems = []
    if tinit + tfinal >= total_steps:
        problems.append(
            f"adalora_tinit + adalora_tfinal: {tinit} + {tfinal} must be below the run's {total_steps} steps"
        )
    if config.target_rank > config.rank:
        problems.append(f"target_rank: {config.target_rank} is above the initial rank {config.rank}")
    return problems


def _adalora(config: TrialConfig, context: BuildContext) -> AdaLoraConfig:
    tinit, tfinal = adalora_schedule(config, context.total_steps)
    return AdaLoraConfig(
        init_r=config.rank,
        target_r=config.target_rank,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, (context.total_steps - tinit - tfinal) // 10),
        total_step=context.total_steps,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules="all-linear",
        task_type=TaskType.CAUSAL_LM,
    )


def _adalora_budget_update(model, step: int) -> None:
    model.base_model.update_and_allocate(step)


# The rank allocator's smoothed importance and uncertainty of every adapter weight: what decides
# which singular values the next allocation keeps.
ADALORA_ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def _adalora_state(model: PeftModel) -> dict:
    """The rank pattern (which singular values survive; after tfinal, every step re-applies it) and
    the allocator's estimates: without them a resumed run reallocates differently, or crashes."""
    allocator = model.base_model.rankallocator
    return {
        "rank_pattern": model.peft_config[allocator.adapter_name].rank_pattern,
        **{name: getattr(allocator, name) for name in ADALORA_ALLOCATOR_STATE},
    }


def _restore_adalora_state(model: PeftModel, state: dict) -> None:
    allocator = model.base_model.rankallocator
    model.peft_config[allocator.adapter_name].rank_pattern = state["rank_pattern"]
    for name in ADALORA_ALLOCATOR_STATE:
        setattr(allocator, name, state[name])


def _ia3(config: TrialConfig, context: BuildContext) -> IA3Config:
    # PEFT knows the attention and feed-forward modules of common architectures.
    return IA3Config(task_type=TaskType.CAUSAL_LM)


def _prompt_tuning(config: TrialConfig, context: BuildContext) -> PromptTuningConfig:
    from_text = config.prompt_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=context.instruction if from_text else None,
        tokenizer_name_or_path=context.model_path if from_text else None,
    )


def _train_every_weight(base: PreTrainedModel, config: TrialConfig, context: BuildContext) -> PreTrainedModel:
    return base.requires_grad_(True)


def _save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """A standalone model directory: AutoModelForCausalLM and AutoTokenizer load it as they are."""
    model.save_pretrained(directory, max_shard_size="1000GB")  # one file, as MODEL_FILES names
    tokenizer.save_pretrained(directory)


def _load_model(model_path: str, saved: Path, quantize_4bit: bool) -> PreTrainedModel:
    return models.load_model(str(saved), safetensors_only=True)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("qlora", with_peft(_lora), quantize_4bit=True),
        Method("lora", with_peft(_lora)),
        Method(
            "adalora",
            with_peft(_adalora),
            after_optimizer_step=_adalora_budget_update,
            training_state=_adalora_state,
            restore_training_state=_restore_adalora_state,
            problems=_adalora_problems,
        ),
        Method("ia3", with_peft(_ia3)),
        Method("prompt_tuning", with_peft(_prompt_tuning)),
        # The reference the others are measured against: every weight trains, nothing is frozen.
        Method(
            "full",
            _train_every_weight,
            save=_save_model,
            saved_files=MODEL_FILES,
            load_trained=_load_model,
            standalone=True,
            default_below_params=1_000_000_000,
        ),
    )
}
