"""--mlflow URI: every trial of the sweep as an MLflow run, through Ray Tune's MLflow integration.

Ray's MLflowLoggerCallback runs on the driver: it creates the experiment, one run per trial, logs
the trial's config as parameters and each reported result as metrics, and ends the run. This
subclass names each run after its trial directory, logs the searched config itself (a finalist's
travels inside a grid value), logs metrics at the trial's optimizer step (the learning curves'
x axis) and, at the trial's end, its kept checkpoint's adapter and its record as artifacts.
Ray's `save_artifact` would upload the whole trial directory, optimizer state included.

Each stage of the sweep (search with its baselines, extensions, finalists) runs a Tuner of its own with
one such callback; all of them log to the same MLflow experiment, `<task>/<sweep name>`.
"""

from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient
from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.mlflow import MLflowLoggerCallback

from sweeps.progress import outcome
from trainables.record import ADAPTER_DIR, RECORD_FILE

SQLITE = "sqlite:///"  # then the database file's path, relative or (a fourth slash) absolute
ARTIFACTS_DIR = "mlflow_artifacts"
# Tune adds the trial's whole config to every result; it is logged once, as the run's parameters.
NOT_METRICS = ("config",)


def experiment_name(sweep_dir: Path) -> str:
    """The MLflow experiment of a sweep: its path under the results root."""
    return f"{sweep_dir.parent.name}/{sweep_dir.name}"


class MlflowTrials(MLflowLoggerCallback):
    """One MLflow run per trial of a stage: parameters, metrics per evaluation, adapter."""

    def __init__(self, tracking_uri: str, sweep_dir: Path, stage: str, trial_values: Callable[[dict], dict]):
        super().__init__(tracking_uri, experiment_name=experiment_name(sweep_dir))
        self.stage = stage
        self.sweep_dir = str(sweep_dir)
        self.trial_values = trial_values  # Tune's config -> the trial's own (module-level: pickled)

    def setup(self, *args, **kwargs):
        if self.tracking_uri.startswith(SQLITE):
            self._create_beside_database(Path(self.tracking_uri.removeprefix(SQLITE)))
        super().setup(*args, **kwargs)

    def _create_beside_database(self, database: Path) -> None:
        """MLflow puts a database store's artifacts in ./mlruns of whatever directory the sweep
        runs from; the experiment keeps them beside its database instead (not in the sweep's
        directory, where the analysis would take the copies for trials)."""
        client = MlflowClient(self.tracking_uri)
        if client.get_experiment_by_name(self.experiment_name) is None:
            artifacts = database.resolve().parent / ARTIFACTS_DIR / self.experiment_name
            client.create_experiment(self.experiment_name, artifact_location=artifacts.as_uri())

    def log_trial_start(self, trial):
        if trial in self._trial_runs:  # a retried trial goes on in its run
            return
        values = self.trial_values(trial.config)
        tags = self.tags | {
            "stage": self.stage,
            "method": str(values.get("method")),
            "trial_id": trial.trial_id,
            "sweep_dir": self.sweep_dir,
        }
        run = self.mlflow_util.start_run(run_name=Path(trial.path).name, tags=tags)
        self._trial_runs[trial] = run.info.run_id
        self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=values)

    def log_trial_result(self, iteration, trial, result):
        metrics = {key: value for key, value in result.items() if key not in NOT_METRICS}
        step = result.get("step", result[TRAINING_ITERATION])  # a failure's report has no step
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step)

    def log_trial_end(self, trial, failed=False):
        run_id = self._trial_runs[trial]
        client = MlflowClient(self.tracking_uri)
        trial_dir = Path(trial.path)
        # The adapter of the checkpoint Tune kept (num_to_keep=1), at its path in the trial directory;
        # a baseline keeps none, a `full` trial's is its whole model.
        for adapter in sorted(trial_dir.glob(f"checkpoint_*/{ADAPTER_DIR}")):
            client.log_artifacts(run_id, str(adapter), artifact_path=f"{adapter.parent.name}/{ADAPTER_DIR}")
        if (trial_dir / RECORD_FILE).is_file():
            client.log_artifact(run_id, str(trial_dir / RECORD_FILE))
        # A deterministic failure is reported as a result, and Tune sees that trial complete.
        ended = "failed" if failed else outcome(trial.last_result or {})
        client.set_tag(run_id, "outcome", ended)
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if ended == "failed" else "FINISHED")
