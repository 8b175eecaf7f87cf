"""Shared fixtures: a tiny random-weight model built in seconds, and an isolated cache."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tests import architectures
from trainables import embedded
from trainables.evaluation import scoring


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's cache (and so never the cached default model)."""
    cache = tmp_path_factory.mktemp("cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PEFT_SWEEPS_CACHE", str(cache))
    yield cache
    patcher.undo()


@pytest.fixture(scope="module")
def local_ray():
    """A Ray runtime on this machine for the module's tests (2 CPUs, no dashboard)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@dataclasses.dataclass(frozen=True)
class CountingWorkers(scoring.ScoringPool):
    """The sweep's scoring workers (real Ray tasks), counting the jobs they submit."""

    submitted: list = dataclasses.field(default_factory=list)

    def submit(self, job):
        self.submitted.append(job)
        return super().submit(job)


@pytest.fixture
def counting_workers():
    """Scoring workers as a sweep on 2 cores has them (a core a job, two at once), counting."""
    return CountingWorkers({"cpu": 1, "gpu": 0}, concurrency=2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Directory of a random-weight Llama with its own tokenizer; loads like any HF model."""
    return str(embedded.build(embedded.TINY_SPEC, tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def smoke_storage(tmp_path_factory) -> Path:
    """smoke_sweep's results root."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def smoke_mlflow(smoke_storage) -> str:
    """The MLflow tracking URI smoke_sweep logs to: a database in its results root."""
    return f"sqlite:///{smoke_storage / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_sweep(tiny_model, smoke_storage, smoke_mlflow) -> tuple[subprocess.CompletedProcess, Path]:
    """One real `python -m sweeps.run qg --smoke` on the tiny model, its finalists re-trained with a
    second seed (the equal-budget comparison skipped), shared by the tests that read it. It searches quality and cost (the multi-objective
    sampler and Pareto-aware early stopping) within a dollar budget it does not reach, and logs its
    trials to MLflow (smoke_mlflow)."""
    storage = smoke_storage
    command = [
        sys.executable,
        "-m",
        "sweeps.run",
        "qg",
        "--smoke",
        "--model",
        tiny_model,
        "--finalist-seeds",
        "2",
        # Its finalists are the search's trials again with seed 1; the equal-budget comparison,
        # which would train those same runs first, has a sweep of its own (tests/sweeps/test_comparison.py).
        "--no-compare-methods",
        "--objectives",
        "quality,cost",
        "--budget-usd",
        "100",
        "--mlflow",
        smoke_mlflow,
    ]
    done = subprocess.run(
        [*command, "--storage", str(storage), "--name", "smoke", "--concurrency", "2"],
        capture_output=True,
        text=True,
        # The sweep, finalist re-runs and verdict take a few minutes alone; room for a busy machine.
        timeout=1200,
    )
    return done, storage / "qg" / "smoke"


# Session fixtures that take minutes to build: under pytest-xdist, the tests that use one share a
# worker, so that it is built once rather than once per worker.
COSTLY_SHARED_FIXTURES = ("smoke_sweep", "winners_dir")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [name for name in COSTLY_SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))
    if getattr(config.option, "loadgroup", False):  # what xdist sets on its workers
        for item in items:
            _tag_with_group(item)


def _tag_with_group(item) -> None:
    """What xdist's loadgroup scheduler reads: the test's group after an @ in its id. xdist 3.8 writes
    it into `item._nodeid`, which pytest 9.2 no longer reads (ids are structured, in `item._id`), so
    every costly fixture was built once per worker. A parametrized test's id then shows a stray `]`."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
        item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


@pytest.fixture(scope="session")
def architecture_model(tiny_model, tmp_path_factory):
    """model type -> the directory of a random-weight model of it (tests/architectures.py), built once."""
    built = {}

    def model(model_type: str) -> str:
        if model_type not in built:
            built[model_type] = architectures.build(
                model_type, tiny_model, tmp_path_factory.mktemp(model_type)
            )
        return built[model_type]

    return model
