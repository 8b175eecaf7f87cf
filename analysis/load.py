"""An experiment directory -> polars frames with explicit schemas.

trials: one row per trial, from each trial's self-describing record (works on a running sweep and
on failed trials), its status from the trial's own final word and Tune's experiment state.
curves: one row per evaluation, from Ray Tune's result.json files. The best evaluation of each
trial whose checkpoint is still on disk gives best_checkpoint, the one served; every objective is
taken there: its quality on the whole validation split (best_quality, the figure that ranks), its
latency, its size, and the cost of producing it.
"""

import contextlib
import fcntl
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from analysis.layout import (
    BASELINES_DIR,
    COMPARISON_DIR,
    EXTENSION_PREFIX,
    FINALISTS_DIR,
    SEARCH_STAGE,
)
from analysis.rank import is_trained
from trainables.errors import ConfigError
from trainables.methods import hyperparameter_names
from trainables.record import ADAPTER_DIR, FULL_VALIDATION_QUALITY, MEASURED_FILE, RECORD_FILE

# Each method's searched hyperparameters under their own names (lora.learning_rate), as trials carry them.
HYPERPARAMETERS = ["shots", *hyperparameter_names()]
# Tune's state of an experiment (one file per run of its driver; the newest is the current one).
EXPERIMENT_STATE = "experiment_state-*.json"
# Held by a sweep's driver while Tune runs its trials; the kernel drops it when the driver dies.
LIVE_LOCK = ".sweep.lock"
METRICS = {
    "quality": "quality",
    FULL_VALIDATION_QUALITY: FULL_VALIDATION_QUALITY,
    "full_validation_examples": "full_validation_examples",
    "cost_usd": "cost_usd",
    "train_time_s": "train_time_s",
    "wall_time_s": "wall_time_s",
    "eval_time_s": "eval_time_s",
    "latency_s": "latency_s",
    "latency_per_token_s": "latency_per_token_s",
    "tokens_per_s": "gen_tokens_per_s",
    "truncated_rate": "truncated_rate",
    "accepted_draft_length": "accepted_draft_length",
    "max_new_tokens": "max_new_tokens",
    "train_tokens_per_s": "train_tokens_per_s",
    "trainable_params": "trainable_params",
    "adapter_bytes": "adapter_bytes",
    "peak_memory_mb": "peak_memory_mb",
    "val_loss": "val_loss",
    "perplexity": "perplexity",
    "train_loss": "train_loss",
    "steps": "step",
}
TRIALS_SCHEMA = {
    "trial_id": pl.String,
    "method": pl.String,
    "status": pl.String,
    **dict.fromkeys(METRICS, pl.Float64),
    "error": pl.String,
    **dict.fromkeys(HYPERPARAMETERS, pl.Float64),
    "task": pl.String,
    "model": pl.String,
    "seed": pl.Int64,
    # A finalist's re-runs share it with the finalist: the same trial but for its seed.
    "config_without_seed": pl.String,
    "finalist_rerun": pl.Boolean,
    "stage": pl.String,  # SEARCH_STAGE, an extension's directory name, COMPARISON_DIR or FINALISTS_DIR
    "trial_dir": pl.String,
}
# Taken once per trial, on its kept checkpoint: column in the ranked frame <- column in trials.
FINAL_MEASUREMENTS = {
    "best_quality": FULL_VALIDATION_QUALITY,
    "full_validation_examples": "full_validation_examples",
    "latency_s": "latency_s",
    "latency_per_token_s": "latency_per_token_s",
    "tokens_per_s": "tokens_per_s",
}
# Reported with every checkpoint: in the ranked frame, what the evaluation of the served one reported.
AT_CHECKPOINT = ["cost_usd", "adapter_bytes"]
CURVES_SCHEMA = {
    "trial_id": pl.String,
    "method": pl.String,
    "step": pl.Int64,
    "quality": pl.Float64,
    "train_loss": pl.Float64,
    "val_loss": pl.Float64,
    **dict.fromkeys(AT_CHECKPOINT, pl.Float64),
    "checkpoint_dir_name": pl.String,
}
TUNE_SCHEMA = {"trial_dir": pl.String, "tune_status": pl.String, "tune_error": pl.String}


NON_FINITE = re.compile(rb"(?<=[:\[,])\s*(?:-?Infinity|NaN)(?=\s*[,}\]])")


class NotAnExperiment(ValueError):
    """The directory holds no trials that can be reported on."""


@contextlib.contextmanager
def running_sweep(directory: Path) -> Iterator[None]:
    """Marks the sweep live while the block runs: analysis then reads a trial without a final word
    as running, not lost. A lock, not a file's presence, so that a driver killed outright leaves no
    stale mark; a second driver on the same sweep is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LIVE_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"name: another driver is running the sweep in {directory}") from None
        yield


def is_live(directory: Path) -> bool:
    """True while a driver runs the sweep (running_sweep holds its lock)."""
    if not (directory / LIVE_LOCK).is_file():
        return False
    with open(directory / LIVE_LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _is_stage_dir(experiment: Path) -> bool:
    """Whether an experiment directory is a stage inside a sweep's, not the sweep's own search."""
    named = experiment.name in (BASELINES_DIR, FINALISTS_DIR, COMPARISON_DIR)
    return named or experiment.name.startswith(EXTENSION_PREFIX)


def _sweep_of(record: Path) -> Path:
    experiment = record.parent.parent
    return experiment.parent if _is_stage_dir(experiment) else experiment


def _stage_of(record: Path) -> str:
    experiment = record.parent.parent
    return experiment.name if _is_stage_dir(experiment) else SEARCH_STAGE


def _tune_error(trial_dir: Path, metadata: dict) -> str | None:
    """The last line of the error file Tune kept for the trial: the exception that ended it (on a
    live sweep the file may reach storage after the state that names it)."""
    path = trial_dir / metadata["error_filename"]
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1][:500] if lines else None


def _experiment_state(path: Path, live: bool) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        if live:  # the driver is rewriting it in place this instant: no word from Tune yet
            return {"trial_data": []}
        raise NotAnExperiment(f"{path}: not a readable Tune experiment state") from None


def tune_states(experiment_dir: Path, live: bool) -> pl.DataFrame:
    """Tune's word on each trial from the newest experiment state of each experiment under the
    directory (search, baselines/, finalists/): PENDING, RUNNING, PAUSED, TERMINATED (it returned,
    or the scheduler stopped it) or ERROR (it raised, its worker died or its node was lost: the
    reason is Tune's error file)."""
    rows = []
    for state_dir in {path.parent for path in experiment_dir.glob(f"**/{EXPERIMENT_STATE}")}:
        state = _experiment_state(max(state_dir.glob(EXPERIMENT_STATE)), live)
        for trial_json, metadata_json in state["trial_data"]:
            trial, metadata = json.loads(trial_json), json.loads(metadata_json)
            if trial["relative_logdir"] is None:  # never started: no directory, no record
                continue
            trial_dir = state_dir / trial["relative_logdir"]
            error = _tune_error(trial_dir, metadata) if metadata["error_filename"] else None
            rows.append({"trial_dir": str(trial_dir), "tune_status": trial["status"], "tune_error": error})
    return pl.DataFrame(rows, schema=TUNE_SCHEMA)


def trial_status(live: bool) -> pl.Expr:
    """completed or failed when the trial said so itself (a failure Tune is retrying on a live sweep
    aside), failed when Tune saw it die, stopped_early when Tune ended it first (ASHA, the time
    budget); otherwise running on a live sweep, lost on one whose driver is gone (no final word)."""
    own, tune = pl.col("status"), pl.col("tune_status")
    retried = pl.lit(live) & tune.is_in(["PENDING", "RUNNING", "PAUSED"])
    return (
        pl.when(own == "completed")
        .then(pl.lit("completed"))
        .when((tune == "ERROR") | ((own == "failed") & ~retried.fill_null(False)))
        .then(pl.lit("failed"))
        .when(tune == "TERMINATED")
        .then(pl.lit("stopped_early"))
        .otherwise(pl.lit("running" if live else "lost"))
        .alias("status")
    )


def _trial_row(path: Path) -> dict:
    record = json.loads(path.read_text())
    metrics, config = record["metrics"], record["config"]
    return {
        "trial_id": record.get("trial_id") or path.parent.name,
        "method": config.get("method"),
        "status": record["status"],  # the trial's own word; trials() adds Tune's
        **{column: metrics.get(key) for column, key in METRICS.items()},
        "error": record.get("error"),
        **{name: config.get(name) for name in HYPERPARAMETERS},
        "task": config.get("task"),
        "model": config.get("model"),
        "seed": config.get("seed"),
        "config_without_seed": json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True),
        "finalist_rerun": path.parent.parent.name == FINALISTS_DIR,
        "stage": _stage_of(path),
        "trial_dir": str(path.parent),
    }


def trials(experiment_dir: Path) -> pl.DataFrame:
    """Every trial of the sweep in the directory (search trials, baselines, each stage's) in a fixed
    schema; cost_usd is what the trial cost in all. Raises NotAnExperiment when the directory holds
    other sweeps than itself: their trials are not comparable (another task, model or budget)."""
    paths = sorted(experiment_dir.glob(f"**/{RECORD_FILE}"))
    if (sweeps := sorted({_sweep_of(path) for path in paths})) and sweeps != [experiment_dir]:
        raise NotAnExperiment(
            f"{experiment_dir}: not a sweep's directory but one holding {len(sweeps)} sweep(s); report "
            f"each on its own: {', '.join(map(str, sweeps))}"
        )
    live = is_live(experiment_dir)
    return (
        pl.DataFrame([_trial_row(path) for path in paths], schema=TRIALS_SCHEMA, strict=False)
        .join(tune_states(experiment_dir, live), on="trial_dir", how="left")
        .with_columns(trial_status(live), error=pl.coalesce("error", "tune_error"))
        .select(list(TRIALS_SCHEMA))
    )


def _strict_json(path: Path) -> io.BytesIO:
    """Ray writes NaN and Infinity (a failed trial's quality is NaN), which strict JSON rejects.
    On a live sweep the last line may be half written: only whole lines are read."""
    written = path.read_bytes()
    return io.BytesIO(NON_FINITE.sub(b" null", written[: written.rfind(b"\n") + 1]))


def trial_curve(results: Path, trial_dir: Path) -> pl.DataFrame:
    """Every evaluation in a trial's result.json (Tune's, wherever it is), as of the trial directory."""
    return pl.read_ndjson(_strict_json(results), schema=CURVES_SCHEMA).with_columns(
        trial_dir=pl.lit(str(trial_dir))
    )


def curves(experiment_dir: Path) -> pl.DataFrame:
    """Every evaluation of every trial, with the trial directory it came from."""
    files = sorted(path for path in experiment_dir.glob("**/result.json") if path.stat().st_size)
    frames = [trial_curve(path, path.parent) for path in files]
    return pl.concat(frames) if frames else pl.DataFrame(schema=CURVES_SCHEMA | {"trial_dir": pl.String})


def best_kept(curves: pl.DataFrame, experiment_dir: Path) -> pl.DataFrame:
    """Each trial's best evaluation whose checkpoint is still on disk under the directory (a sweep's
    or one trial's): the checkpoint it serves."""
    return (
        curves.join(_kept_checkpoints(experiment_dir), on=["trial_dir", "checkpoint_dir_name"], how="inner")
        .sort("quality", descending=True, nulls_last=True)
        .group_by("trial_dir", maintain_order=True)
        .first()
    )


def _kept_checkpoints(experiment_dir: Path) -> pl.DataFrame:
    kept = [
        {"trial_dir": str(adapter.parent.parent), "checkpoint_dir_name": adapter.parent.name}
        for adapter in experiment_dir.glob(f"**/checkpoint_*/{ADAPTER_DIR}")
    ]
    return pl.DataFrame(kept, schema={"trial_dir": pl.String, "checkpoint_dir_name": pl.String})


def _measured_checkpoints(experiment_dir: Path) -> pl.DataFrame:
    """What trainables.evaluation.scoring measured, by trial directory and checkpoint."""
    rows = []
    for path in experiment_dir.glob(f"**/{MEASURED_FILE}"):
        measured = json.loads(path.read_text())
        metrics = {
            column: measured["metrics"].get(METRICS[raw]) for column, raw in FINAL_MEASUREMENTS.items()
        }
        rows.append({"trial_dir": str(path.parent), "checkpoint_dir_name": measured["checkpoint"]} | metrics)
    schema = {"trial_dir": pl.String, "checkpoint_dir_name": pl.String} | dict.fromkeys(
        FINAL_MEASUREMENTS, pl.Float64
    )
    return pl.DataFrame(rows, schema=schema).rename(
        {column: f"measured_{column}" for column in FINAL_MEASUREMENTS}
    )


def load(experiment_dir: Path) -> pl.DataFrame:
    """trials + best_checkpoint (the best evaluation whose checkpoint is kept: the one served),
    subset_quality (its figure on the eval_examples rows) and every objective of that checkpoint:
    FINAL_MEASUREMENTS measured by the trial when it was its last evaluation (a baseline's only
    one), else by trainables.evaluation.scoring, null until then, and a trial without them is not a candidate;
    AT_CHECKPOINT as its evaluation reported them (cost_usd: what producing it cost), with the
    trial's whole cost as total_cost_usd. A baseline serves the base model: its own figures stand.
    """
    if not experiment_dir.is_dir():
        raise NotAnExperiment(f"{experiment_dir}: no such directory")
    frame = trials(experiment_dir)
    if frame.is_empty():
        raise NotAnExperiment(f"{experiment_dir}: no trials found (is it a sweep's experiment directory?)")
    best = best_kept(curves(experiment_dir), experiment_dir).select(
        "trial_dir",
        "checkpoint_dir_name",
        *(pl.col(column).alias(f"checkpoint_{column}") for column in AT_CHECKPOINT),
        subset_quality=pl.col("quality"),
        best_step=pl.col("step"),
        best_checkpoint=pl.concat_str(pl.col("trial_dir"), pl.lit("/"), pl.col("checkpoint_dir_name")),
    )
    # A baseline trial keeps no checkpoint: its figures are the trial's own, of its only model.
    baseline = ~is_trained()
    measured_by_trial = baseline | (pl.col("best_step") == pl.col("steps"))
    return (
        frame.join(best, on="trial_dir", how="left")
        .join(_measured_checkpoints(experiment_dir), on=["trial_dir", "checkpoint_dir_name"], how="left")
        .with_columns(total_cost_usd=pl.col("cost_usd"))
        .with_columns(
            *(
                pl.coalesce(f"measured_{column}", pl.when(measured_by_trial).then(pl.col(raw))).alias(column)
                for column, raw in FINAL_MEASUREMENTS.items()
            ),
            *(
                pl.when(baseline).then(pl.col(column)).otherwise(pl.col(f"checkpoint_{column}")).alias(column)
                for column in AT_CHECKPOINT
            ),
        )
        .drop(
            "checkpoint_dir_name",
            *(f"measured_{column}" for column in FINAL_MEASUREMENTS),
            *(f"checkpoint_{column}" for column in AT_CHECKPOINT),
        )
    )
