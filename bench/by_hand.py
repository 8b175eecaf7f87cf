"""The by-hand study users run today, the baseline side of the benchmarks: a Hugging Face `Trainer`
script with PEFT at the trial's settings (by default the reference studies' textbook ones: lr 2e-4,
r 8, alpha 16, dropout 0.05, a linear schedule with 10% warm-up), one method at a time.

The model is wrapped by the method's own registry entry, so both sides train the same PEFT config;
only the loop differs.
"""

import time
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from trainables import encoding
from trainables.methods import METHODS
from trainables.training import trial


class _CountingCollator(DataCollatorForSeq2Seq):
    """Pads as a by-hand script does, and counts the real (non-pad) tokens it hands the model."""

    real_tokens = 0

    def __call__(self, features, return_tensors=None):
        self.real_tokens += sum(len(f["input_ids"]) for f in features)
        return super().__call__(features, return_tensors)


class _MethodStepHook(TrainerCallback):
    """What a by-hand AdaLoRA script adds to Trainer, following PEFT's docs: the rank budget
    update after each optimizer step, while the gradients are still there."""

    def __init__(self, model, hook) -> None:
        self.model, self.hook = model, hook

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.hook(self.model, state.global_step)


@dataclass(frozen=True)
class TrainerRun:
    model: torch.nn.Module
    real_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds


def fresh_model(plan: trial.Plan, model_path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return trial.load_trainable_model(plan, model_path)


def train_with_trainer(
    plan: trial.Plan, model_path: str, features: list[dict], tokenizer, output_dir
) -> TrainerRun:
    model = fresh_model(plan, model_path)
    config = plan.config
    arguments = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_steps=plan.total_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=int(config.warmup_ratio * plan.total_steps),
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=config.seed,
    )
    collator = _CountingCollator(tokenizer, label_pad_token_id=encoding.IGNORE_INDEX, padding=True)
    hook = METHODS[config.method].after_optimizer_step
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(features),
        data_collator=collator,
        callbacks=[_MethodStepHook(model, hook)] if hook else None,
    )
    started = time.perf_counter()
    trainer.train()
    return TrainerRun(model, collator.real_tokens, time.perf_counter() - started)
