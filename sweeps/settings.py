"""Sweep settings: defaults, then the task's preset, then a YAML file, then command-line options.

Validated in one place; every problem is collected and reported on one line naming its field.
"""

import datetime
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from sweeps.objectives import NAMES as OBJECTIVE_NAMES
from trainables import models
from trainables.config import TrialConfig
from trainables.errors import ConfigError, describe
from trainables.methods import METHODS, refusals, search_dimensions, trained_methods
from trainables.registries import known_task, trial_config
from trainables.tasks import PRESETS, canonical_task, generation_budget, get_task, is_task_file

SMOKE = {
    "max_steps": 4,
    "epochs": None,
    "baseline_shots": [0],
    "trial": {
        "eval_every": 2,
        "eval_examples": 4,
        "full_eval_examples": 16,
        "train_examples": 32,
        "batch_size": 4,
    },
}
# Options the sweep sets on every trial itself; a `trial:` block may not override them.
SWEEP_OWNED = {"task", "model", "method", "max_steps", "epochs", "seed", "prompt_lookup"}


class _Ranges(BaseModel):
    """Where Optuna looks: one key per search dimension of the registered methods (see
    trainables/methods/), each method's checks applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*")
    @classmethod
    def _possible(cls, bounds, info: ValidationInfo):
        if problem := search_dimensions()[info.field_name].problem(bounds):
            raise ValueError(problem)
        return bounds

    @model_validator(mode="after")
    def _methods_agree(self) -> "_Ranges":
        if problems := [p for method in METHODS.values() for p in method.search_problems(dict(self))]:
            raise ValueError("; ".join(problems))
        return self


SearchRanges = create_model(
    "SearchRanges",
    __base__=_Ranges,
    __module__=__name__,  # where pickle finds the class: Tune pickles the searcher that holds the ranges
    **{
        key: (list[int | float] if dimension.categorical else tuple[float, float], dimension.default)
        for key, dimension in search_dimensions().items()
    },
)


class SweepSettings(BaseModel):
    """What a sweep is. Each field's description is its help on the command line, which
    sweeps.run generates from this model (fields in sweeps.run.NOT_ON_THE_COMMAND_LINE aside)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    model: str = Field(models.EMBEDDED, description="HF id or local path (default: the embedded model)")
    # Every method but those opt-in for a model this large (full fine-tuning from 1B parameters up).
    methods: list[str] = Field(
        default_factory=lambda values: default_methods(values.get("model")),
        description="comma-separated subset of the methods",
    )
    samples: int = Field(10, ge=1, description="number of PEFT trials (baselines come on top)")
    max_steps: int = Field(160, ge=1, description="optimizer steps per trial")
    epochs: float | None = Field(None, gt=0, description="epochs per trial instead of --max-steps")
    time_budget_s: float | None = Field(
        None, gt=0, description="stop starting trials after this many seconds"
    )
    concurrency: int = Field(2, ge=1, description="trials at once")
    cpus_per_trial: float = Field(1, gt=0, description="CPUs each trial holds")
    gpus_per_trial: float | None = Field(
        None,
        ge=0,
        description="GPUs each trial holds; fractions let small trials share a GPU (default: 1 when "
        "CUDA is visible, else 0)",
    )
    address: str | None = Field(
        None, description="join a running Ray cluster, e.g. auto after `ray start --head`"
    )
    storage: str = Field("./results", description="results root (a shared path on a cluster)")
    # One path component of safe characters: the sweep's directory under storage/task/, never elsewhere.
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="experiment name (default: a timestamp)",
    )
    resume: bool = Field(False, description="continue the named (or latest) sweep")
    seed: int = Field(0, description="seeds Optuna, data order and initialisation")
    smoke: bool = Field(False, description="a tiny budget, for tests and a first look")
    baseline_shots: list[int] = [0, 2]
    max_failures: int = Field(1, ge=0, description="retries of a trial that failed for a transient reason")
    grace_evals: int = Field(1, ge=1, description="evaluations before ASHA may stop a trial")
    objectives: list[str] = Field(
        ["quality"],
        description=f"what the search optimises, comma-separated: any of {', '.join(OBJECTIVE_NAMES)} "
        "(default quality); with several, Optuna samples multi-objectively and Pareto-aware successive "
        "halving stops trials",
    )
    scheduler: Literal["asha", "pareto"] | None = Field(
        None,
        description="early stopping: asha (on the first objective) or pareto (default: asha with one "
        "objective, pareto with several)",
    )
    budget_usd: float | None = Field(
        None, gt=0, description="start no more trials once spent + committed dollars would pass this"
    )
    extend: int | None = Field(
        None,
        ge=1,
        description="add N trials to the named (or latest) finished sweep, continuing its Optuna study",
        json_schema_extra={"metavar": "N"},
    )
    winners: int = Field(
        3,
        ge=1,
        description="adapters picked from the Pareto front by utility for serving, "
        "and the best on validation quality if not among them",
    )
    # Off by default: each seed beyond the first re-trains up to `winners` trials to their end.
    finalist_seeds: int = Field(
        1,
        ge=1,
        description="seeds per finalist (the top of the front re-trained) and per compared method, "
        "ranked on their mean",
    )
    # The verdict compares methods through runs of equal budget; without them it labels each
    # comparison of runs that trained for different lengths as such, and calls none of them real.
    compare_methods: bool = Field(
        True,
        description="after the search, train each method's best configuration to the whole budget, so "
        "that the verdict compares methods at equal budget",
    )
    # The answers are the same either way (trainables.decoding.lookup); off: to measure what it gains.
    prompt_lookup: bool = Field(
        True,
        description="evaluate with prompt-lookup decoding (a --config file's trial: prompt_lookup_tokens and "
        "prompt_lookup_ngram tune it)",
    )
    mlflow: str | None = Field(
        None,
        description="log every trial to this MLflow tracking URI (e.g. sqlite:///mlflow.db, http://host:5000)",
        json_schema_extra={"metavar": "URI"},
    )
    search: SearchRanges = SearchRanges()
    trial: dict[str, Any] = {}

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        # The baseline runs first in the search (baseline_shots), never as a searched method.
        unknown = [m for m in methods if m not in trained_methods()]
        if unknown or not methods:
            raise ValueError(f"unknown {unknown or 'empty'}; known: {', '.join(trained_methods())}")
        return list(dict.fromkeys(methods))

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, objectives: list[str]) -> list[str]:
        unknown = [name for name in objectives if name not in OBJECTIVE_NAMES]
        if unknown or not objectives:
            raise ValueError(f"unknown {unknown or 'empty'}; known: {', '.join(OBJECTIVE_NAMES)}")
        return list(dict.fromkeys(objectives))

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        return known_task(task)

    @field_validator("model")
    @classmethod
    def _absolute_local_model(cls, model: str) -> str:
        # Trials run inside their own directories, where a relative path means something else.
        local = Path(model).expanduser()
        return str(local.resolve()) if local.exists() else model

    @field_validator("trial")
    @classmethod
    def _valid_trial_options(cls, options: dict, info: ValidationInfo) -> dict:
        owned = sorted(SWEEP_OWNED & options.keys())
        if owned:
            raise ValueError(f"{', '.join(owned)} set by the sweep itself, not in trial")
        # Every trial of the sweep gets these options: each method's trials must accept them.
        problems = {}
        for method in info.data.get("methods") or METHODS:
            try:
                trial_config({"task": "qg", "method": method, **options})
            except ConfigError as error:
                problems[str(error).removeprefix("invalid config: ")] = None
        if problems:
            raise ValueError("; ".join(problems))
        return options

    @property
    def experiment_name(self) -> str:
        return self.name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")

    @property
    def task_dir(self) -> Path:
        return Path(self.storage).expanduser().resolve() / get_task(self.task).name

    def trial_constants(self) -> dict:
        """What every trial of the sweep shares."""
        return {
            "task": self.task,
            "model": self.model,
            "max_steps": self.max_steps,
            "epochs": self.epochs,
            "seed": self.seed,
            "prompt_lookup": self.prompt_lookup,
            **self.trial,
        }


def default_methods(model: str | None) -> list[str]:
    """The methods a sweep tries when --methods does not name them."""
    model = model or models.EMBEDDED
    return [
        name
        for name, method in METHODS.items()
        if method.in_default_sweep
        and (
            method.default_below_params is None
            or models.has_fewer_parameters(model, method.default_below_params)
        )
    ]


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def read_yaml(path: str) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
    return loaded


def resolve(task: str, yaml_path: str | None, cli: dict) -> SweepSettings:
    """Defaults < preset < YAML < command line; smoke shrinks the budget last."""
    if is_task_file(task):
        task = canonical_task(task)  # a bad task file fails here, naming its key
    values = _merge(PRESETS.get(task, {}), read_yaml(yaml_path) if yaml_path else {})
    values = _merge(values, {key: value for key, value in cli.items() if value is not None})
    if values.get("smoke"):
        values = _merge(values, SMOKE)
        values.setdefault("samples", len(values.get("methods") or default_methods(values.get("model"))))
    if values.get("mlflow"):
        values["mlflow"] = mlflow_uri_without_credentials(values["mlflow"])
    source = f"{yaml_path}: " if yaml_path else ""
    try:
        settings = SweepSettings.model_validate({**values, "task": task})
    except ValidationError as error:
        raise ConfigError(source + describe(error)) from None
    if problems := method_problems(settings):
        raise ConfigError(source + "invalid config: " + "; ".join(problems))
    check_environment(settings)
    return settings


def _writable(directory: Path) -> bool:
    """Tries for real: permission bits say little to root or on network filesystems."""
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def _unreachable(address: str) -> str | None:
    """Why host:port cannot be reached within seconds (Ray itself retries for a long while)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None  # "auto", "local" and ray:// addresses are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as error:
        return f"cannot reach a Ray cluster at '{address}' ({error.strerror or error})"
    return None


def mlflow_uri_without_credentials(uri: str) -> str:
    """The tracking URI without a user:password@ in it, which would show in errors and in the
    callback Tune pickles into the results folder: they go to the environment variables MLflow's
    client reads instead (an explicit MLFLOW_TRACKING_USERNAME / _PASSWORD wins)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    credentials = {"MLFLOW_TRACKING_USERNAME": parts.username, "MLFLOW_TRACKING_PASSWORD": parts.password}
    for variable, value in credentials.items():
        if value is not None:
            os.environ.setdefault(variable, urllib.parse.unquote(value))
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _mlflow_problem(uri: str) -> str | None:
    """Why MLflow cannot log to the URI: opening its store is what every stage's logger does first
    (a database store is created here; a server is not contacted)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        return "needs MLflow's client: pip install -e '.[mlflow]'"
    try:
        MlflowClient(tracking_uri=uri)
    # MLflow's own refusals (a file store without MLFLOW_ALLOW_FILE_STORE, an unknown scheme), and
    # the database's or the file system's: each means the sweep could not log, and says why.
    except Exception as error:
        return f"cannot log to '{uri}': {str(error).splitlines()[0]}"
    return None


def available_train_size(settings: SweepSettings) -> int:
    """Training examples the task offers a trial, before any train_examples cap."""
    return len(get_task(settings.task).splits()["train"])


def trial_budget(settings: SweepSettings, method: str, available: int) -> tuple[TrialConfig, int]:
    """A trial's config and its number of optimizer steps (which --epochs ties to the data size)."""
    config = trial_config(settings.trial_constants() | {"method": method})
    return config, config.total_steps(config.usable_train_size(available))


def method_problems(settings: SweepSettings) -> list[str]:
    """Each method's own limits (AdaLoRA's schedule), checked against the sweep's step budget."""
    available = available_train_size(settings)
    problems = []
    for method in settings.methods:
        config, total_steps = trial_budget(settings, method, available)
        problems += METHODS[method].problems(config.hyperparameters, total_steps)
    return problems


def check_generation_budget(settings: SweepSettings) -> None:
    """Refuses a task whose stated generation budget cannot hold its longest training target.

    The trials' own computation, with the sweep model's tokenizer (tokenizers differ by model).
    """
    generation_budget(settings.task, models.load_tokenizer(settings.model))


def check_methods_run_on_model(settings: SweepSettings) -> None:
    """Refuses a method that the model's architecture cannot run (IA3 finding no layers to scale, a
    model whose layers keep recurrent state), before Ray starts or any trial trains."""
    if refused := refusals(models.resolve(settings.model), settings.methods):
        raise ConfigError("; ".join(refused))


def check_environment(settings: SweepSettings) -> None:
    """The cheap checks that spare the user a failed sweep: model path, storage, cluster address."""
    problems = []
    if settings.address and (unreachable := _unreachable(settings.address)):
        problems.append(f"address: {unreachable}")
    if not_loadable := models.unloadable_reason(settings.model):
        problems.append(f"model: {not_loadable}")
    if not _writable(Path(settings.storage).expanduser().resolve()):
        problems.append(f"storage: '{settings.storage}' cannot be written")
    if settings.mlflow and (unusable := _mlflow_problem(settings.mlflow)):
        problems.append(f"mlflow: {unusable}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
