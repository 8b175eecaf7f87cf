"""METHODS registry: name -> how to build its PEFT config, whether the base is 4-bit, per-step hooks.

Adding a PEFT method is one entry here and one row in tests/trainables/test_methods.py.
Method quirks live in their spec, never as `if method == ...` in the loop.
"""

from collections.abc import Callable
from dataclasses import dataclass

from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)

from trainables.config import TrialConfig


@dataclass(frozen=True)
class BuildContext:
    total_steps: int
    model_path: str
    instruction: str


@dataclass(frozen=True)
class Method:
    name: str
    peft_config: Callable[[TrialConfig, BuildContext], PeftConfig]
    quantize_4bit: bool = False
    # Called after each optimizer step, while gradients are still there (AdaLoRA needs them).
    after_optimizer_step: Callable[[object, int], None] | None = None
    # Problems with the config that only this method has, given the run's length.
    problems: Callable[[TrialConfig, int], list[str]] = lambda config, total_steps: []


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


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("qlora", _lora, quantize_4bit=True),
        Method("lora", _lora),
        Method("adalora", _adalora, after_optimizer_step=_adalora_budget_update, problems=_adalora_problems),
        Method("ia3", _ia3),
        Method("prompt_tuning", _prompt_tuning),
    )
}
