"""The trackers a sweep feeds: MLflow (--mlflow) and TensorBoard's event files, read back from the
shared smoke sweep with their own readers."""

import json
import struct
from pathlib import Path

import polars as pl
import pytest
from mlflow import MlflowClient
from tensorboardX.proto.event_pb2 import Event

from analysis import load
from sweeps import run, tracking
from trainables.methods import METHODS
from trainables.training.trial import ADAPTER_DIR, RECORD_FILE

pytestmark = pytest.mark.slow


def logged_history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((point.step, point.value) for point in client.get_metric_history(run_id, metric))


def files_in(directory: Path) -> dict[Path, bytes]:
    return {path.relative_to(directory): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_every_trial_is_an_mlflow_run_with_its_config_evaluations_and_adapter(
    smoke_sweep, smoke_storage, smoke_mlflow, tmp_path
):
    done, sweep_dir = smoke_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(smoke_mlflow)
    experiment = client.get_experiment_by_name("qg/smoke")
    assert experiment.artifact_location == (smoke_storage / tracking.ARTIFACTS_DIR / "qg/smoke").as_uri()
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    trials = load.load(sweep_dir)
    # Every stage's trials (the search with its baselines, finalists), one run each.
    assert sorted(runs) == sorted(trials["trial_id"]) and trials["finalist_rerun"].any()
    curves = load.curves(sweep_dir)
    for trial in trials.iter_rows(named=True):
        logged = runs[trial["trial_id"]]
        trial_dir = Path(trial["trial_dir"])
        assert logged.info.run_name == trial_dir.name
        config = run.trial_values(json.loads((trial_dir / "params.json").read_text()))
        assert logged.data.params == {key: str(value) for key, value in config.items()}
        assert logged.data.tags["outcome"].replace(" ", "_") == trial["status"]
        assert logged.info.status == ("FAILED" if trial["status"] == "failed" else "FINISHED")
        # One point per evaluation, at the trial's optimizer step, as its curve in the report.
        curve = curves.filter(pl.col("trial_dir") == trial["trial_dir"]).sort("step")
        assert curve.height >= 1
        for metric in ("quality", "val_loss"):
            steps, values = zip(*logged_history(client, logged.info.run_id, metric), strict=True)
            assert list(steps) == curve["step"].to_list()
            assert list(values) == pytest.approx(curve[metric].to_list())
        files = {artifact.path for artifact in client.list_artifacts(logged.info.run_id)}
        assert RECORD_FILE in files
        if not METHODS[trial["method"]].trains:  # the untouched model: no adapter to keep
            assert trial["best_checkpoint"] is None and files == {RECORD_FILE}
            continue
        # The kept checkpoint's adapter (the one served), at its path in the trial directory.
        kept = Path(trial["best_checkpoint"]) / ADAPTER_DIR
        artifact = f"{kept.parent.name}/{ADAPTER_DIR}"
        downloaded = client.download_artifacts(logged.info.run_id, artifact, str(tmp_path / trial_dir.name))
        assert files_in(kept) and files_in(Path(downloaded)) == files_in(kept)


def tensorboard_scalars(event_file: Path, tag: str) -> list[float]:
    """A scalar's values in order, from the TFRecord file TensorBoard reads: records of a length, its
    checksum, the serialized Event and the Event's checksum."""
    data, offset, values = event_file.read_bytes(), 0, []
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        values += [value.simple_value for value in event.summary.value if value.tag == tag]
    return values


def test_every_trial_writes_tensorboard_events_of_its_evaluations(smoke_sweep):
    _, sweep_dir = smoke_sweep
    curves = load.curves(sweep_dir)
    trial_dirs = load.trials(sweep_dir)["trial_dir"]
    assert trial_dirs.len() >= 3
    for trial_dir in trial_dirs:
        (event_file,) = Path(trial_dir).glob("events.out.tfevents.*")
        curve = curves.filter(pl.col("trial_dir") == trial_dir).sort("step")
        assert tensorboard_scalars(event_file, "ray/tune/val_loss") == pytest.approx(
            curve["val_loss"].to_list()
        )
