"""One trial: config -> base model -> PEFT method -> train -> evaluate -> report (+ checkpoint).

`tune_trainable` is the Ray Tune function trainable. `execute` does the work with the reporting and the
checkpoint to resume from passed in, so it also runs outside Tune (tests, benchmarks).
Every trial leaves a self-describing trial_record.json; a failure becomes a record, not a crash.
"""

import functools
import importlib.metadata
import json
import math
import os
import random
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from peft import PeftModel, prepare_model_for_kbit_training
from safetensors.torch import load_file, save_file

from trainables import encoding, files, measure, models, registries
from trainables.config import ConfigError, TrialConfig
from trainables.evaluation import passes
from trainables.methods import BASELINE, METHODS, BuildContext, Method
from trainables.record import ADAPTER_DIR, EVALUATIONS, FULL_VALIDATION_QUALITY, RECORD_FILE
from trainables.tasks import get_task
from trainables.tasks.data import DataError
from trainables.tasks.spec import PER_EXAMPLE, Task
from trainables.training import loop

TRAINABLE_STATE = "trainable_state.safetensors"
OPTIMIZER_STATE = "training_state.pt"
# Latency is timed on this many fixed prompts (the validation split's first), after one warm-up.
SPEED_PROMPTS = 4
# Beside a checkpoint: the periodic rows' losses and answers that its evaluation gave.
PERIODIC_ROWS_FILE = "periodic_rows.json"
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "ray", "datasets")
# Failures that would fail again if retried; anything else is re-raised so Tune can retry it.
# Out of memory on a GPU shared with other trials gets one retry first (_once_more_on_shared_gpu_oom).
DETERMINISTIC_FAILURES = (ConfigError, DataError, loop.NonFiniteLoss, torch.OutOfMemoryError)

Report = Callable[[dict, Path | None], None]


@dataclass(frozen=True)
class Plan:
    """Everything decided before the model is loaded: a bad config fails here, cheaply."""

    config: TrialConfig
    task: Task
    splits: dict
    total_steps: int
    # Every train row, before train_examples caps them: what the generation budget is measured on,
    # so all trials of a task and the sweep's up-front check agree on it.
    uncapped_train: datasets.Dataset


def prepare(values: dict) -> Plan:
    config = registries.trial_config(values)
    task = get_task(config.task)
    splits = task.splits()
    uncapped_train = splits["train"]
    splits["train"] = uncapped_train.select(range(config.usable_train_size(len(uncapped_train))))
    method = METHODS[config.method]
    total_steps = config.total_steps(len(splits["train"])) if method.trains else 0
    problems = method.problems(config.hyperparameters, total_steps)
    if not_loadable := models.unloadable_reason(config.model):
        problems.append(f"model: {not_loadable}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return Plan(config, task, splits, total_steps, uncapped_train)


def versions() -> dict[str, str]:
    """The versions a trial ran with; a package this process lacks (a trial run by hand, without
    Ray) is recorded as absent rather than failing the trial."""

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {name: version(name) for name in VERSIONED_PACKAGES}


def few_shot_prefix(task: Task, train, shots: int, seed: int) -> str:
    if not shots:
        return ""
    picked = random.Random(seed).sample(range(len(train)), shots)
    return "".join(task.format_prompt(train[i]) + task.format_target(train[i]) + "\n\n" for i in picked)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict
    # The primary metric of each example, in split order: what test verdicts bootstrap. Kept out of
    # the metrics, which Tune reports and records.
    per_example: list[float]
    # What the metrics were computed from, so that a head of the rows can be scored without
    # generating again.
    examples: list[dict]
    losses: passes.TargetLosses
    generations: passes.Generations
    max_new_tokens: int

    def head(self, task: Task, rows: int) -> "Evaluation":
        """The evaluation of the first `rows` rows alone. No batch mixes the periodic rows with
        the others, and those rows are batched as an evaluation of them alone batches them, so for
        them these are the figures a separate evaluation gives."""
        return scored(
            task,
            self.examples[:rows],
            self.losses.head(rows),
            self.generations.head(rows),
            self.max_new_tokens,
        )


def scored(
    task: Task,
    examples: list[dict],
    losses: passes.TargetLosses,
    generations: passes.Generations,
    max_new_tokens: int,
) -> Evaluation:
    scores = task.score(generations.texts, examples)
    per_example = scores.pop(PER_EXAMPLE)[task.primary_metric]
    val_loss = losses.mean()
    metrics = {
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 50.0)),
        **scores,
        "quality": scores[task.primary_metric],
        "sample_output": generations.texts[0],
        # Answers cut by the budget score badly whatever the method; a high rate flags the budget.
        "truncated_rate": generations.truncated / len(examples),
        "max_new_tokens": max_new_tokens,
        # Prompt lookup's draft tokens kept per draft checked (None: off, or no draft found).
        "accepted_draft_length": generations.accepted_draft_length,
    }
    return Evaluation(metrics, per_example, examples, losses, generations, max_new_tokens)


def evaluation_rows(plan: Plan, whole_split: bool) -> list[dict]:
    """The whole split (up to full_eval_examples), or its fixed first eval_examples rows (every
    periodic evaluation, so ASHA compares trials on the same rows)."""
    config, split = plan.config, plan.splits[plan.config.eval_split]
    count = (config.full_eval_examples or len(split)) if whole_split else config.eval_examples
    return list(split.select(range(min(count, len(split)))))


@dataclass(frozen=True)
class PeriodicRows:
    """The losses and answers of a checkpoint's periodic evaluation, kept beside it: the head of
    its whole split, which a later measurement of that checkpoint need not generate again."""

    split: str
    losses: passes.TargetLosses
    generations: passes.Generations

    def save(self, checkpoint: Path) -> None:
        saved = {"split": self.split, "losses": vars(self.losses), "generations": vars(self.generations)}
        (checkpoint / PERIODIC_ROWS_FILE).write_text(json.dumps(saved))

    @staticmethod
    def of(checkpoint: Path, split: str) -> "PeriodicRows | None":
        """What the checkpoint's training run kept of its periodic rows on `split`, if anything."""
        path = checkpoint / PERIODIC_ROWS_FILE
        if not path.is_file() or (saved := json.loads(path.read_text()))["split"] != split:
            return None
        return PeriodicRows(
            split, passes.TargetLosses(**saved["losses"]), passes.Generations(**saved["generations"])
        )


def evaluate(
    model, tokenizer, plan: Plan, prefix: str, whole_split: bool = False, periodic: PeriodicRows | None = None
) -> Evaluation:
    """Loss and answers from one encoding of each row. Its prompt is never cut (max_length bounds
    training): the model answers the whole prompt, as it would a request. Batches never cross the
    periodic rows' end, so the whole split's head is those rows' own evaluation: with `periodic`,
    what this model gave on them, only the rest of the split is generated."""
    config, task = plan.config, plan.task
    examples = evaluation_rows(plan, whole_split)
    features = encoding.encode_examples(task, tokenizer, examples, None, prefix)
    max_new_tokens = task.generation_budget(tokenizer, plan.uncapped_train)
    prompt_lengths = [len(encoding.prompt_ids(feature)) for feature in features]
    batches = passes.row_batches(prompt_lengths, config.eval_batch_size, head=config.eval_examples)
    reused = periodic is not None and len(periodic.generations.texts) == config.eval_examples < len(examples)
    if reused:
        batches = [batch for batch in batches if batch[0] >= config.eval_examples]
    shared = passes.shared_prompt_start(tokenizer, prefix, features)
    losses, generations = passes.losses_and_generations(
        model, tokenizer, features, max_new_tokens, batches, shared, config.lookup()
    )
    if reused:
        losses = passes.TargetLosses.joined([periodic.losses, losses])
        generations = passes.Generations.joined([periodic.generations, generations])
    return scored(task, examples, losses, generations, max_new_tokens)


def evaluate_last(model, tokenizer, plan: Plan, prefix: str) -> dict:
    """A trial's last evaluation: the periodic one's metrics (on the rows every evaluation used,
    so the scheduler compares like with like) and the final measurements. When the periodic rows
    are the head of the whole split, as by default, they are scored from the whole split's
    generations rather than generated twice."""
    whole = evaluate(model, tokenizer, plan, prefix, whole_split=True)
    periodic_rows = plan.config.eval_examples
    if periodic_rows <= len(whole.examples):
        periodic = whole.head(plan.task, periodic_rows)
    else:
        periodic = evaluate(model, tokenizer, plan, prefix)
    return periodic.metrics | final_measurements(model, tokenizer, plan, prefix, whole)


def measure_speed(model, tokenizer, plan: Plan, prefix: str) -> dict:
    """Latency per request and per generated token, and generation speed, as one user waiting on
    one answer sees them: one request at a time, on fixed prompts, each generating exactly the
    task's budget of tokens so that the figure does not depend on how long the model's answers are.
    The median of SPEED_PROMPTS requests, after a warm-up request that pays for first-call setup.
    """
    validation = plan.splits["validation"]
    rows = validation.select(range(min(SPEED_PROMPTS, len(validation))))
    prompts = [prefix + plan.task.format_prompt(row) for row in rows]
    max_new_tokens = plan.task.generation_budget(tokenizer, plan.uncapped_train)

    def seconds(prompt: str) -> float:
        return passes.generate(
            model, tokenizer, [prompt], max_new_tokens, 1, fixed_length=True, lookup=plan.config.lookup()
        ).seconds

    seconds(prompts[0])
    latency = statistics.median(seconds(prompt) for prompt in prompts)
    return {
        "latency_s": latency,
        "latency_per_token_s": latency / max_new_tokens,
        "gen_tokens_per_s": max_new_tokens / max(latency, 1e-9),
    }


def final_measurements(
    model,
    tokenizer,
    plan: Plan,
    prefix: str,
    whole: Evaluation | None = None,
    periodic: PeriodicRows | None = None,
) -> dict:
    """Taken once per trial, on the model it ends with: what ranks it (quality on the whole
    validation split, `whole` when already evaluated) and its speed."""
    whole = whole or evaluate(model, tokenizer, plan, prefix, whole_split=True, periodic=periodic)
    return {
        FULL_VALIDATION_QUALITY: whole.metrics["quality"],
        "full_validation_examples": len(whole.per_example),
        **measure_speed(model, tokenizer, plan, prefix),
    }


def load_trainable_model(plan: Plan, model_path: str):
    """The base model wrapped by the trial's method, ready to train."""
    config = plan.config
    method = METHODS[config.method]
    base = models.load_model(model_path, quantize_4bit=method.quantize_4bit)
    if method.quantize_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=torch.cuda.is_available())
    torch.manual_seed(config.seed)
    context = BuildContext(plan.total_steps, model_path, plan.task.instruction)
    return method.wrap(base, config.hyperparameters, context)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total); PEFT counts its own models (it knows 4-bit packing and prompt encoders)."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


@dataclass(frozen=True)
class ModelToScore:
    """A model loaded to be scored on the whole of one split (test: only for the verdict)."""

    plan: Plan
    model: object
    tokenizer: object
    prefix: str = ""  # the few-shot examples in front of every prompt
    periodic: PeriodicRows | None = None  # a checkpoint's periodic rows on this split

    def evaluate(self) -> Evaluation:
        return evaluate(
            self.model, self.tokenizer, self.plan, self.prefix, whole_split=True, periodic=self.periodic
        )

    def final_measurements(self) -> dict:
        return final_measurements(self.model, self.tokenizer, self.plan, self.prefix, periodic=self.periodic)


def load_checkpoint(values: dict, checkpoint: Path, split: str) -> ModelToScore:
    """A trial's trained adapter (or model) from its checkpoint."""
    plan = prepare(values | {"eval_split": split})
    model_path = models.resolve(plan.config.model)
    method = METHODS[plan.config.method]
    model = method.load_trained(model_path, checkpoint / ADAPTER_DIR, method.quantize_4bit)
    return ModelToScore(
        plan, model, models.load_tokenizer(model_path), periodic=PeriodicRows.of(checkpoint, split)
    )


def load_base_model(values: dict, split: str) -> ModelToScore:
    """The untouched base model, prompted as a baseline trial prompts it (k-shot when `shots` is set)."""
    plan = prepare(values | {"method": BASELINE, "eval_split": split})
    model_path = models.resolve(plan.config.model)
    prefix = few_shot_prefix(plan.task, plan.splits["train"], plan.config.shots, plan.config.seed)
    return ModelToScore(plan, models.load_model(model_path), models.load_tokenizer(model_path), prefix)


def score_checkpoint(values: dict, checkpoint: Path, split: str = "test") -> Evaluation:
    return load_checkpoint(values, checkpoint, split).evaluate()


def score_base_model(values: dict, split: str = "test") -> Evaluation:
    return load_base_model(values, split).evaluate()


def save_checkpoint(
    directory: Path, method: Method, model, tokenizer, optimizer, scheduler, state: loop.TrainState
) -> None:
    method.save(model, tokenizer, directory / ADAPTER_DIR)
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
            "method_state": method.training_state(model),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        directory / OPTIMIZER_STATE,
    )


def restore_checkpoint(directory: Path, method: Method, model, optimizer, scheduler) -> loop.TrainState:
    model.load_state_dict(load_file(directory / TRAINABLE_STATE), strict=False)
    # Tensors and plain containers only: a checkpoint from someone else's sweep runs no code here.
    saved = torch.load(directory / OPTIMIZER_STATE, weights_only=True)
    method.restore_training_state(model, saved["method_state"])
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
            # Written aside, then renamed: analysis of a live sweep never reads half a record.
            files.write_atomically(self.path, json.dumps(self.record, indent=2, default=str))


def execute(
    values: dict,
    report: Report,
    resume_from: Path | None = None,
    record_dir: Path | None = None,
    identity: dict | None = None,
    share: measure.Share | None = None,
) -> dict:
    """Run one trial; returns the last metrics. Records, then raises, any failure.

    identity (trial id, node) goes into the record as it is. share: the part of the machine the
    trial holds (default: what the process sees), which its cost is charged for.
    """
    recorder = Recorder(record_dir, values, identity)
    share = share or measure.Share.whole_machine()
    meter = measure.Meter.resumed_from(resume_from)
    try:
        attempt = functools.partial(
            _execute, values, resume_from=resume_from, recorder=recorder, meter=meter, share=share
        )
        return _once_more_on_shared_gpu_oom(attempt, report, share.shares_a_gpu)
    except Exception as error:
        recorder.update("failed", error=describe_failure(error))
        raise


def _once_more_on_shared_gpu_oom(
    attempt: Callable[[Report], dict], report: Report, shares_a_gpu: bool
) -> dict:
    """On a GPU shared with other trials, running out of memory may be a neighbour's doing: the
    trial then runs once more, from where this process started, before it counts as the
    configuration's failure. Evaluations already reported are not reported again."""
    reported_steps: set[int] = set()

    def report_once(metrics: dict, checkpoint: Path | None) -> None:
        if metrics["step"] not in reported_steps:
            reported_steps.add(metrics["step"])
            report(metrics, checkpoint)

    try:
        return attempt(report_once)
    except torch.OutOfMemoryError:
        if not shares_a_gpu:
            raise
    # Outside the except block, so that the failed attempt's model and optimizer can be freed.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return attempt(report_once)


def _execute(
    values: dict,
    report: Report,
    resume_from: Path | None,
    recorder: Recorder,
    meter: measure.Meter,
    share: measure.Share,
) -> dict:
    run = TrialRun.start(prepare(values), report, recorder, meter, share)
    if not METHODS[run.plan.config.method].trains:  # the baseline: the untouched base model, k-shot
        return run.score_untouched_base()
    return run.train(resume_from)


# What a baseline reports of the training it did not do.
UNTRAINED = {
    "step": 0,
    "train_time_s": 0.0,
    "trainable_params": 0,
    "trainable_share": 0.0,
    "adapter_bytes": 0,
}


@dataclass
class Training:
    """What trains in one trial, and what its checkpoints save."""

    method: Method
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable_params: int
    total_params: int


@dataclass
class TrialRun:
    """One trial's run: what its steps read, and the steps by name. A trained trial evaluates,
    checkpoints, records and reports at every evaluation (on_evaluation)."""

    plan: Plan
    model_path: str
    tokenizer: object
    price_per_hour: float
    meter: measure.Meter
    recorder: Recorder
    report: Report
    last_metrics: dict = field(default_factory=dict)

    @staticmethod
    def start(plan: Plan, report: Report, recorder: Recorder, meter: measure.Meter, share: measure.Share):
        model_path = models.resolve(plan.config.model)
        price = measure.hourly_price(share, plan.config.price_per_hour)
        return TrialRun(plan, model_path, models.load_tokenizer(model_path), price, meter, recorder, report)

    def common_metrics(self) -> dict:
        return {
            "method": self.plan.config.method,
            **self.meter.spent(self.price_per_hour),
            "price_per_hour": self.price_per_hour,
            "peak_memory_mb": measure.peak_memory_mb(),
            "attention": models.attention_implementation(self.model_path),
        }

    def score_untouched_base(self) -> dict:
        config = self.plan.config
        model = models.load_model(self.model_path)
        prefix = few_shot_prefix(self.plan.task, self.plan.splits["train"], config.shots, config.seed)
        with self.meter.stopwatch.phase("eval"):
            metrics = evaluate_last(model, self.tokenizer, self.plan, prefix)
        metrics |= UNTRAINED | self.common_metrics() | {"status": "completed"}
        self.recorder.update("completed", metrics)
        self.report(metrics, None)
        return metrics

    def train(self, resume_from: Path | None) -> dict:
        plan, config = self.plan, self.plan.config
        training = self.set_up_training()
        features = encoding.encode_examples(
            plan.task, self.tokenizer, plan.splits["train"], config.max_length
        )
        state = (
            restore_checkpoint(
                resume_from, training.method, training.model, training.optimizer, training.scheduler
            )
            if resume_from
            else loop.TrainState()
        )
        on_eval = functools.partial(self.on_evaluation, training)
        if state.step >= plan.total_steps:
            on_eval(state)  # resumed from the final checkpoint: report the final result again
        loop.train(
            training.model, features, config, training.method, plan.total_steps,
            training.optimizer, training.scheduler, state, self.tokenizer.pad_token_id, on_eval,
        )  # fmt: skip
        return self.last_metrics

    def set_up_training(self) -> Training:
        model = load_trainable_model(self.plan, self.model_path)
        optimizer, scheduler = loop.make_optimizer(model, self.plan.config, self.plan.total_steps)
        method = METHODS[self.plan.config.method]
        return Training(method, model, optimizer, scheduler, *parameter_counts(model))

    def on_evaluation(self, training: Training, state: loop.TrainState) -> None:
        final = state.step == self.plan.total_steps
        metrics, periodic = self.evaluate(training.model, final)
        with tempfile.TemporaryDirectory() as scratch:
            checkpoint = Path(scratch)
            save_checkpoint(
                checkpoint, training.method, training.model, self.tokenizer,
                training.optimizer, training.scheduler, state,
            )  # fmt: skip
            if periodic:  # a trial's last evaluation measures the whole split itself
                periodic.save(checkpoint)
            metrics |= self.training_metrics(training, state, checkpoint, final) | self.common_metrics()
            # What it took to get here: a resumed trial adds to it rather than starting from zero.
            self.meter.save(metrics, checkpoint)
            self.record_and_report(metrics, checkpoint)
        self.last_metrics = metrics

    def evaluate(self, model, final: bool) -> tuple[dict, "PeriodicRows | None"]:
        """The last evaluation measures the whole split; a periodic one keeps its rows' losses and
        answers beside the checkpoint, for the kept checkpoint's later measurement to reuse."""
        with self.meter.stopwatch.phase("eval"):
            if final:
                return evaluate_last(model, self.tokenizer, self.plan, ""), None
            evaluation = evaluate(model, self.tokenizer, self.plan, "")
        periodic = PeriodicRows(self.plan.config.eval_split, evaluation.losses, evaluation.generations)
        return evaluation.metrics, periodic

    def training_metrics(
        self, training: Training, state: loop.TrainState, checkpoint: Path, final: bool
    ) -> dict:
        config = self.plan.config
        return {
            "step": state.step,
            EVALUATIONS: math.ceil(state.step / config.eval_every),
            "train_loss": state.window_loss(),
            "train_time_s": state.seconds,
            "train_tokens_per_s": state.tokens / max(state.seconds, 1e-9),
            "trainable_params": training.trainable_params,
            "trainable_share": training.trainable_params / training.total_params,
            "adapter_bytes": measure.size_on_disk(checkpoint / ADAPTER_DIR),
            "status": "completed" if final else "running",
        }

    def record_and_report(self, metrics: dict, checkpoint: Path) -> None:
        self.recorder.update(metrics["status"], metrics)
        print(progress_line(self.plan.config.method, self.plan.total_steps, metrics), flush=True)
        self.report(metrics, checkpoint)


def progress_line(method: str, total_steps: int, metrics: dict) -> str:
    """One line per evaluation: the trial's log in the Ray dashboard, and the terminal."""
    line = (
        f"{method} step {metrics['step']}/{total_steps}: quality {metrics['quality']:.4f}, "
        f"truncated {metrics['truncated_rate']:.0%}, val_loss {metrics['val_loss']:.3f}, "
        f"train_loss {metrics['train_loss']:.3f}, ${metrics['cost_usd']:.5f}"
    )
    if FULL_VALIDATION_QUALITY in metrics:
        line += (
            f"; whole validation {metrics[FULL_VALIDATION_QUALITY]:.4f}, latency {metrics['latency_s']:.3f}s"
        )
    return line


def describe_failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:500]


def tune_trainable(config: dict) -> None:
    """The Ray Tune function trainable."""
    import ray
    from ray import tune

    checkpoint = tune.get_checkpoint()
    context = tune.get_context()
    # The trial's directory in the sweep's storage (a local or shared path, as checkpoints reach
    # it), not get_trial_dir(): that is staging on the trial's node, synced only from the driver's.
    record_dir = Path(context.get_storage().trial_fs_path)
    identity = {
        "trial_id": context.get_trial_id(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_pid": os.getpid(),  # Tune reuses a worker process for trial after trial
    }
    held = context.get_trial_resources().required_resources
    share = measure.Share(gpus=held.get("GPU", 0.0), cpus=held.get("CPU", 0.0))

    def report(metrics: dict, directory: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    try:
        if checkpoint is None:
            execute(config, report, None, record_dir, identity, share)
        else:
            with checkpoint.as_directory() as resume_from:
                execute(config, report, Path(resume_from), record_dir, identity, share)
    except Exception as error:
        failure = {"status": "failed", "error": describe_failure(error), "quality": float("nan")}
        tune.report(failure | {"method": config.get("method")})
        if not isinstance(error, DETERMINISTIC_FAILURES):
            raise
