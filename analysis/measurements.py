"""The sweep's trials with every kept checkpoint's ranking figure: the ones ASHA stopped, or whose
best evaluation came before their last, are measured on the whole validation split first. This
picks what needs measuring from the sweep's files; trainables.evaluation.scoring runs the jobs."""

from pathlib import Path

import polars as pl

from analysis import load, rank
from trainables.evaluation import scoring
from trainables.record import FULL_VALIDATION_QUALITY, read_record


def unmeasured() -> pl.Expr:
    """Trained trials that ended, whose kept checkpoint has no final measurements yet."""
    trained = rank.is_trained() & pl.col("best_checkpoint").is_not_null()
    return rank.ended() & trained & pl.col("best_quality").is_null()


def measure_kept_checkpoints(frame: pl.DataFrame, workers: scoring.ScoringPool = scoring.IN_PROCESS) -> int:
    """Measures every kept checkpoint that unmeasured() selects; returns how many it measured."""
    todo = frame.filter(unmeasured()).select("trial_dir", "best_checkpoint")
    items = [
        scoring.kept_checkpoint_measurement(trial_dir, Path(best)) for trial_dir, best in todo.iter_rows()
    ]
    scoring.kept_or_computed(items, workers, "kept checkpoints on the whole validation split")
    return todo.height


def measured_trials(directory: Path, workers: scoring.ScoringPool = scoring.IN_PROCESS) -> pl.DataFrame:
    """The sweep's trials once every kept checkpoint has its ranking figure (the ones ASHA stopped
    are measured on the whole validation split first): what the report and the later stages rank."""
    trials = load.load(directory)
    return load.load(directory) if measure_kept_checkpoints(trials, workers) else trials


def ended_trial_measurement(trial_dir: Path, results: Path) -> scoring.KeptJob | None:
    """What a trial that has just ended still needs measured: its kept checkpoint, when its last
    evaluation did not measure it and nothing has since; else None. `results`: its result.json
    where Tune's logger writes it (a staging directory, synced to trial_dir later)."""
    best = load.best_kept(load.trial_curve(results, trial_dir), trial_dir)
    if best.is_empty():
        return None
    step, checkpoint = best.select("step", "checkpoint_dir_name").row(0)
    last = read_record(trial_dir)["metrics"]
    if last.get("step") == step and last.get(FULL_VALIDATION_QUALITY) is not None:
        return None
    measurement = scoring.kept_checkpoint_measurement(str(trial_dir), trial_dir / checkpoint)
    return measurement if measurement.saved() is None else None
