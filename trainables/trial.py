"""One trial: config -> base model -> PEFT method -> train -> evaluate -> report (+ checkpoint).

`run` is the Ray Tune function trainable. `execute` does the work with the reporting and the
checkpoint to resume from passed in, so it also runs outside Tune (tests, benchmarks).
Every trial leaves a self-describing trial_record.json; a failure becomes a record, not a crash.
"""

import importlib.metadata
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file, save_file

from trainables import loop, measure, models
from trainables.config import BASELINE, ConfigError, TrialConfig
from trainables.methods import METHODS, BuildContext
from trainables.tasks import get_task
from trainables.tasks.data import DataError
from trainables.tasks.spec import Task

RECORD_FILE = "trial_record.json"
ADAPTER_DIR = "adapter"
TRAINABLE_STATE = "trainable_state.safetensors"
OPTIMIZER_STATE = "training_state.pt"
LATENCY_EXAMPLES = 4
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "ray", "datasets")
# Failures that would fail again if retried; anything else is re-raised so Tune can retry it.
DETERMINISTIC_FAILURES = (ConfigError, DataError, loop.NonFiniteLoss, torch.OutOfMemoryError)

Report = Callable[[dict, Path | None], None]


@dataclass(frozen=True)
class Plan:
    """Everything decided before the model is loaded: a bad config fails here, cheaply."""

    config: TrialConfig
    task: Task
    splits: dict
    total_steps: int


def prepare(values: dict) -> Plan:
    config = TrialConfig.parse(values)
    task = get_task(config.task)
    splits = task.splits(config.validation_share, config.seed)
    splits["train"] = splits["train"].select(range(config.usable_train_size(len(splits["train"]))))
    if config.method == BASELINE:
        total_steps, problems = 0, []
    else:
        total_steps = config.total_steps(len(splits["train"]))
        problems = METHODS[config.method].problems(config, total_steps)
    if not_loadable := models.unloadable_reason(config.model):
        problems.append(f"model: {not_loadable}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return Plan(config, task, splits, total_steps)


def versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES}


def few_shot_prefix(task: Task, train, shots: int, seed: int) -> str:
    if not shots:
        return ""
    picked = random.Random(seed).sample(range(len(train)), shots)
    return "".join(task.format_prompt(train[i]) + task.format_target(train[i]) + "\n\n" for i in picked)


def evaluate(model, tokenizer, plan: Plan, prefix: str) -> dict:
    config, task = plan.config, plan.task
    split = plan.splits[config.eval_split]
    examples = list(split.select(range(min(config.eval_examples, len(split)))))
    features = loop.encode_examples(task, tokenizer, examples, config.max_length, prefix)
    val_loss = loop.validation_loss(model, features, config.eval_batch_size, tokenizer.pad_token_id)
    prompts = [prefix + task.format_prompt(example) for example in examples]
    generations = loop.generate(model, tokenizer, prompts, task.max_new_tokens, config.eval_batch_size)
    scores = task.score(generations.texts, examples)
    metrics = {
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 50.0)),
        **scores,
        "quality": scores[task.primary_metric],
        "gen_tokens_per_s": generations.new_tokens / max(generations.seconds, 1e-9),
        "sample_output": generations.texts[0],
    }
    # Latency: one request at a time, as a user waiting on a single answer sees it.
    single = [
        loop.generate(model, tokenizer, [p], task.max_new_tokens, 1) for p in prompts[:LATENCY_EXAMPLES]
    ]
    metrics["latency_s"] = sum(g.seconds for g in single) / len(single)
    return metrics


def load_peft_model(plan: Plan, model_path: str):
    config = plan.config
    method = METHODS[config.method]
    base = models.load_model(model_path, quantize_4bit=method.quantize_4bit)
    if method.quantize_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=torch.cuda.is_available())
    torch.manual_seed(config.seed)
    context = BuildContext(plan.total_steps, model_path, plan.task.instruction)
    return get_peft_model(base, method.peft_config(config, context))


def score_checkpoint(values: dict, checkpoint: Path, split: str = "test", examples: int = 1_000_000) -> dict:
    """Evaluate a trained adapter on a split, all of it by default (test: only for final winners)."""
    plan = prepare(values | {"eval_split": split, "eval_examples": examples})
    model_path = models.resolve(plan.config.model)
    base = models.load_model(model_path, quantize_4bit=METHODS[plan.config.method].quantize_4bit)
    model = PeftModel.from_pretrained(base, checkpoint / ADAPTER_DIR)
    return evaluate(model, models.load_tokenizer(model_path), plan, "")


def score_base_model(values: dict, split: str = "test", examples: int = 1_000_000) -> dict:
    """Evaluate the untouched base model (k-shot when `shots` is set) on a split, all of it by default."""
    plan = prepare(values | {"method": BASELINE, "eval_split": split, "eval_examples": examples})
    model_path = models.resolve(plan.config.model)
    prefix = few_shot_prefix(plan.task, plan.splits["train"], plan.config.shots, plan.config.seed)
    return evaluate(models.load_model(model_path), models.load_tokenizer(model_path), plan, prefix)


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: loop.TrainState) -> None:
    model.save_pretrained(directory / ADAPTER_DIR)
    trainable = {
        name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad
    }
    save_file(trainable, directory / TRAINABLE_STATE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": state.step,
            "tokens": state.tokens,
            "seconds": state.seconds,
            "last_train_loss": state.window_loss(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        directory / OPTIMIZER_STATE,
    )


def restore_checkpoint(directory: Path, model, optimizer, scheduler) -> loop.TrainState:
    model.load_state_dict(load_file(directory / TRAINABLE_STATE), strict=False)
    saved = torch.load(directory / OPTIMIZER_STATE, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["cpu_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return loop.TrainState(
        step=saved["step"],
        tokens=saved["tokens"],
        seconds=saved["seconds"],
        last_train_loss=saved["last_train_loss"],
    )


class Recorder:
    """Keeps the trial's self-describing record on disk, rewritten at every report."""

    def __init__(self, directory: Path | None, values: dict, identity: dict | None = None):
        self.path = directory / RECORD_FILE if directory else None
        fresh = {"status": "running", "error": None, "config": values, "metrics": {}}
        # A resumed trial keeps what its earlier run recorded and updates it.
        earlier = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}
        self.record = fresh | earlier | (identity or {})
        self.record |= {"versions": versions(), "hardware": measure.hardware_name()}

    def update(self, status: str, metrics: dict | None = None, error: str | None = None) -> None:
        self.record.update(status=status, error=error)
        self.record["metrics"].update(metrics or {})
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.record, indent=2, default=str))


def execute(
    values: dict,
    report: Report,
    resume_from: Path | None = None,
    record_dir: Path | None = None,
    identity: dict | None = None,
) -> dict:
    """Run one trial; returns the last metrics. Records, then raises, any failure.

    identity (trial id, node) goes into the record as it is.
    """
    recorder = Recorder(record_dir, values, identity)
    try:
        return _execute(values, report, resume_from, recorder)
    except Exception as error:
        recorder.update("failed", error=describe_failure(error))
        raise


def _execute(values: dict, report: Report, resume_from: Path | None, recorder: Recorder) -> dict:
    started = time.perf_counter()
    plan = prepare(values)
    config = plan.config
    price = measure.hourly_price(config.price_per_hour)
    model_path = models.resolve(config.model)
    tokenizer = models.load_tokenizer(model_path)
    stopwatch = measure.Stopwatch()

    def common_metrics() -> dict:
        wall = time.perf_counter() - started
        return {
            "method": config.method,
            "wall_time_s": wall,
            "cost_usd": measure.cost_usd(wall, price),
            "price_per_hour": price,
            "peak_memory_mb": measure.peak_memory_mb(),
            "attention": models.attention_implementation(),
            "eval_time_s": stopwatch.seconds.get("eval", 0.0),
        }

    if config.method == BASELINE:
        model = models.load_model(model_path)
        prefix = few_shot_prefix(plan.task, plan.splits["train"], config.shots, config.seed)
        with stopwatch.phase("eval"):
            metrics = evaluate(model, tokenizer, plan, prefix)
        metrics |= {
            "step": 0,
            "train_time_s": 0.0,
            "trainable_params": 0,
            "trainable_share": 0.0,
            "adapter_bytes": 0,
        }
        metrics |= common_metrics() | {"status": "completed"}
        recorder.update("completed", metrics)
        report(metrics, None)
        return metrics

    model = load_peft_model(plan, model_path)
    trainable, total = model.get_nb_trainable_parameters()
    features = loop.encode_examples(plan.task, tokenizer, plan.splits["train"], config.max_length)
    optimizer, scheduler = loop.make_optimizer(model, config, plan.total_steps)
    state = restore_checkpoint(resume_from, model, optimizer, scheduler) if resume_from else loop.TrainState()
    last: dict = {}

    def on_eval(state: loop.TrainState) -> None:
        nonlocal last
        final = state.step == plan.total_steps
        with stopwatch.phase("eval"):
            metrics = evaluate(model, tokenizer, plan, "")
        with tempfile.TemporaryDirectory() as scratch:
            checkpoint = Path(scratch)
            save_checkpoint(checkpoint, model, optimizer, scheduler, state)
            metrics |= {
                "step": state.step,
                "train_loss": state.window_loss(),
                "train_time_s": state.seconds,
                "train_tokens_per_s": state.tokens / max(state.seconds, 1e-9),
                "trainable_params": trainable,
                "trainable_share": trainable / total,
                "adapter_bytes": measure.size_on_disk(checkpoint / ADAPTER_DIR),
                "status": "completed" if final else "running",
            }
            metrics |= common_metrics()
            recorder.update(metrics["status"], metrics)
            # One line per evaluation: the trial's log in the Ray dashboard, and the terminal.
            print(
                f"{config.method} step {state.step}/{plan.total_steps}: quality {metrics['quality']:.4f}, "
                f"val_loss {metrics['val_loss']:.3f}, train_loss {metrics['train_loss']:.3f}, "
                f"latency {metrics['latency_s']:.3f}s, ${metrics['cost_usd']:.5f}",
                flush=True,
            )
            report(metrics, checkpoint)
        last = metrics

    if state.step >= plan.total_steps:
        on_eval(state)  # resumed from the final checkpoint: report the final result again
    loop.train(
        model, features, config, METHODS[config.method], plan.total_steps,
        optimizer, scheduler, state, tokenizer.pad_token_id, on_eval,
    )  # fmt: skip
    return last


def describe_failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:500]


def run(config: dict) -> None:
    """The Ray Tune function trainable."""
    import ray
    from ray import tune

    checkpoint = tune.get_checkpoint()
    context = tune.get_context()
    record_dir = Path(context.get_trial_dir())
    identity = {"trial_id": context.get_trial_id(), "node_id": ray.get_runtime_context().get_node_id()}

    def report(metrics: dict, directory: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    try:
        if checkpoint is None:
            execute(config, report, None, record_dir, identity)
        else:
            with checkpoint.as_directory() as resume_from:
                execute(config, report, Path(resume_from), record_dir, identity)
    except Exception as error:
        failure = {"status": "failed", "error": describe_failure(error), "quality": float("nan")}
        tune.report(failure | {"method": config.get("method")})
        if not isinstance(error, DETERMINISTIC_FAILURES):
            raise
