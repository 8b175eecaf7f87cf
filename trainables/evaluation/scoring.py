"""Scores the trials did not take themselves, kept beside each trial.

- The final measurements (quality on the whole validation split, latency) of a kept checkpoint
  whose trial did not measure it: ASHA stopped the trial, or its best evaluation came before its
  last. Without them a trial is not a candidate, since that figure is the one that ranks.
- Per-example test scores of the candidates a verdict compares, and of the untouched base model
  (a sweep scores the latter in its search's tail, sweeps.early_measurements).

Each result is written into the trial's directory under the name of the checkpoint it belongs to,
so rebuilding a report reuses it and a later checkpoint (a resumed sweep) replaces it.

The driver only submits the scoring: the jobs import the training code (trainables.training.trial) where
they run, so the driver never loads PEFT or the model classes.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainables import files
from trainables.methods import BASELINE, METHODS
from trainables.record import MEASURED_FILE, read_record
from trainables.terminal import CLEAR_LINE, fitted

if TYPE_CHECKING:
    from trainables.training.trial import ModelToScore

TEST_SCORES_FILE = "test_scores.json"
EVALUATION_SECONDS = "evaluation_seconds"  # the time a kept result took to evaluate, loading aside
BASELINE_CHECKPOINT = "untouched"  # a baseline keeps no checkpoint: the base model itself is scored


@dataclass(frozen=True)
class ScoringPool:
    """Where the scoring runs. In a sweep, as Ray tasks that each hold what a trial holds
    (`resources`, as for tune.with_resources), at most `concurrency` at a time like the trials, so
    the checkpoints are scored side by side on the cluster's GPUs or cores instead of one after
    another in the driver. Without Ray (python -m analysis.report), in this process.

    One ScoringPool serves a whole sweep: the jobs its search starts (sweeps.early_measurements) stay
    in flight while the verdict begins, which waits for them rather than starting them again, so
    that no slot idles between the search's scoring and the verdict's."""

    resources: dict | None = None
    concurrency: int = 1
    # Started and not yet kept, by where the result goes (KeptJob.key): (its ObjectRef, the item).
    in_flight: dict = field(default_factory=dict, compare=False, repr=False)

    def run(self, items: list[KeptJob], what: str) -> list[dict]:
        """Each item's result, computed and kept (KeptJob.keep), in the items' order. Jobs already
        in flight count towards `concurrency` and are waited for. A job this call started that
        fails raises; one the search started that fails is reported, and started again if this
        call needs it."""
        import ray

        if not items:
            return []
        print(f"scoring {len(items)} {what}", flush=True)
        if self.resources is None or not ray.is_initialized():
            return [item.keep(item.compute()) for item in items]
        wanted = {item.key: index for index, item in enumerate(items)}
        to_start = [item for item in items if item.key not in self.in_flight]
        started_here: set = set()
        results: dict[int, dict] = {}
        while len(results) < len(items):
            while to_start and len(self.in_flight) < self.concurrency:
                item = to_start.pop(0)
                self.start(item)
                started_here.add(item.key)
            item, finished = self._next_finished()
            result = _keep(item, finished, fatal=item.key in started_here)
            if result is None:
                if item.key in wanted:
                    to_start.append(item)
            elif item.key in wanted:
                results[wanted[item.key]] = result
                _show_progress(len(results), len(items), what)
        return [results[index] for index in range(len(items))]

    def start(self, item: KeptJob) -> None:
        """Starts computing `item` as a Ray task, unless it is already in flight."""
        if item.key not in self.in_flight:
            self.in_flight[item.key] = (self.submit(item.compute), item)

    def keep_finished(self) -> None:
        """Keeps the results of the jobs in flight that have finished, without waiting for the
        others. A failed one is dropped, with a line on stderr: the verdict computes it again."""
        import ray

        if not self.in_flight:
            return
        references = self._references()
        finished, _ = ray.wait(list(references), num_returns=len(references), timeout=0)
        for reference in finished:
            _, item = self.in_flight.pop(references[reference])
            _keep(item, reference, fatal=False)

    def submit(self, job: Callable[[], dict]):
        """The job as a Ray task holding a trial's resources: its result's ObjectRef."""
        import ray

        remote = ray.remote(_call).options(num_cpus=self.resources["cpu"], num_gpus=self.resources["gpu"])
        return remote.remote(job)

    def _next_finished(self) -> tuple[KeptJob, object]:
        """Waits for a job in flight to finish: its item and its ObjectRef, no longer in flight."""
        import ray

        references = self._references()
        (ready,), _ = ray.wait(list(references), num_returns=1)
        _, item = self.in_flight.pop(references[ready])
        return item, ready

    def _references(self) -> dict:
        """The ObjectRef of each job in flight -> its key."""
        return {reference: key for key, (reference, _) in self.in_flight.items()}


def _call(job: Callable[[], dict]) -> dict:
    return job()


def _keep(item: KeptJob, reference, fatal: bool) -> dict | None:
    """The finished job's result, kept; if it failed, raises when `fatal`, else says so on stderr
    and returns None."""
    import ray

    try:
        return item.keep(ray.get(reference))
    except ray.exceptions.RayError as error:
        if fatal:
            raise
        print(f"scoring {item.path.parent.name} failed: {error}", file=sys.stderr)
        return None


def _show_progress(done: int, total: int, what: str) -> None:
    line = f"  scored {done}/{total} {what}"
    if sys.stdout.isatty():  # one line, redrawn in place, as the sweep's status line
        print(CLEAR_LINE + fitted(line), end="\n" if done == total else "", flush=True)
    else:
        print(line, flush=True)


IN_PROCESS = ScoringPool()


@dataclass(frozen=True)
class KeptJob:
    """A result kept in `path`, valid while it belongs to `checkpoint`."""

    path: Path
    checkpoint: str
    compute: Callable[[], dict]

    @property
    def key(self) -> tuple[Path, str]:
        return self.path, self.checkpoint

    def saved(self) -> dict | None:
        """The kept result, while it belongs to the checkpoint; a file that does not parse (a write
        cut short before writes were atomic) counts as missing, and is computed again."""
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return saved if isinstance(saved, dict) and saved.get("checkpoint") == self.checkpoint else None

    def keep(self, result: dict) -> dict:
        kept = {"checkpoint": self.checkpoint} | result
        files.write_atomically(self.path, json.dumps(kept, default=str))
        return kept


def kept_or_computed(items: list[KeptJob], workers: ScoringPool, what: str) -> list[dict]:
    """Each item's kept result; the missing ones are computed by `workers` and kept."""
    saved = [item.saved() for item in items]
    missing = [index for index, result in enumerate(saved) if result is None]
    computed = workers.run([items[index] for index in missing], what)
    for index, result in zip(missing, computed, strict=True):
        saved[index] = result
    return saved


def _config(trial_dir: str) -> dict:
    return read_record(trial_dir)["config"]


def kept_checkpoint_measurement(trial_dir: str, checkpoint: Path) -> KeptJob:
    return KeptJob(
        Path(trial_dir) / MEASURED_FILE,
        checkpoint.name,
        functools.partial(_final_measurements, trial_dir, checkpoint),
    )


def _final_measurements(trial_dir: str, checkpoint: Path) -> dict:
    from trainables.training import trial

    loaded = trial.load_checkpoint(_config(trial_dir), checkpoint, "validation")
    started = time.perf_counter()
    metrics = loaded.final_measurements()
    return {"metrics": metrics, EVALUATION_SECONDS: time.perf_counter() - started}


def _loaded_for_test(row: dict) -> ModelToScore:
    from trainables.training import trial

    config = _config(row["trial_dir"])
    if not METHODS[row["method"]].trains:
        return trial.load_base_model(config, split="test")
    return trial.load_checkpoint(config, Path(row["best_checkpoint"]), split="test")


def _test_scores(row: dict) -> dict:
    loaded = _loaded_for_test(row)
    started = time.perf_counter()
    evaluation = loaded.evaluate()
    metrics = {key: value for key, value in evaluation.metrics.items() if key != "sample_output"}
    return {
        "metrics": metrics,
        "per_example": evaluation.per_example,
        EVALUATION_SECONDS: time.perf_counter() - started,
    }


def evaluation_seconds(sweep_dir: Path) -> float:
    """Seconds the verdict's scoring spent evaluating (its models' loading not counted), summed
    over every result it kept in the sweep's trial directories."""
    kept = [*sweep_dir.glob(f"**/{MEASURED_FILE}"), *sweep_dir.glob(f"**/{TEST_SCORES_FILE}")]
    return sum(json.loads(path.read_text()).get(EVALUATION_SECONDS, 0.0) for path in kept)


def test_scoring(row: dict) -> KeptJob:
    """A leaderboard row's test metrics and per-example primary metric, kept beside its trial: a
    trained trial's kept checkpoint, or the base model as a baseline trial prompted it (its shots)."""
    trained = METHODS[row["method"]].trains
    checkpoint = Path(row["best_checkpoint"]).name if trained else BASELINE_CHECKPOINT
    return KeptJob(
        Path(row["trial_dir"]) / TEST_SCORES_FILE, checkpoint, functools.partial(_test_scores, row)
    )


def baseline_test_scoring(trial_dir: Path) -> KeptJob | None:
    """The test scores of a baseline trial, which every verdict compares its winners with, unless
    already kept."""
    scoring = test_scoring({"trial_dir": str(trial_dir), "method": BASELINE, "best_checkpoint": None})
    return None if scoring.saved() else scoring


def scores_on_test(rows: dict[str, dict], workers: ScoringPool = IN_PROCESS) -> dict[str, dict]:
    """Each named leaderboard row's test scores (test_scoring), computed where not kept."""
    # The slowest first (a request's latency stands for what a row costs), so that the last to
    # finish is a short one rather than a long one running alone while the other slots idle.
    slowest_first = sorted(rows, key=lambda name: -(rows[name].get("latency_s") or 0.0))
    items = [test_scoring(rows[name]) for name in slowest_first]
    scored = dict(
        zip(slowest_first, kept_or_computed(items, workers, "candidates on the test split"), strict=True)
    )
    return {name: scored[name] for name in rows}
