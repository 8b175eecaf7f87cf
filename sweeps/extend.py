"""--extend N: N more trials for a finished sweep, continuing its Optuna study.

Each extension is a Tune experiment of its own in the sweep's directory (extension-1, extension-2,
...), beside the search it extends: the old trials stay where they are and are not rerun, Tune's
restore of each stage is unchanged, and analysis reads every stage's trials as the sweep's. The
sampler is warm-started from every earlier trial because it samples from the same study
(sweeps.study), which holds them all.

An extension's trials must be comparable with the old ones, so they take everything that defines
the sweep (task, model, methods, budget per trial, objectives, search ranges) from the settings the
sweep saved when it started; the command line sets only how this run goes (RUN_OPTIONS).
"""

import json
from pathlib import Path

from pydantic import ValidationError

from analysis.load import EXTENSION_PREFIX
from sweeps.settings import SweepSettings
from trainables import files
from trainables.errors import ConfigError, describe

SETTINGS_FILE = "sweep_settings.json"
# What an extension's command line decides; the rest is the sweep's own.
RUN_OPTIONS = (
    "extend", "budget_usd", "concurrency", "time_budget_s", "address", "cpus_per_trial", "gpus_per_trial",
    "max_failures", "storage", "name", "resume", "mlflow",
)  # fmt: skip


def save_settings(settings: SweepSettings, sweep_dir: Path) -> None:
    """Written when the sweep starts; a resumed or extended sweep leaves it as it is."""
    path = sweep_dir / SETTINGS_FILE
    if not path.exists():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        files.write_atomically(path, settings.model_dump_json(indent=2, exclude=set(RUN_OPTIONS)))


def extension_settings(command: SweepSettings, sweep_dir: Path) -> SweepSettings:
    """The sweep's saved settings with this command's RUN_OPTIONS."""
    path = sweep_dir / SETTINGS_FILE
    if not path.is_file():
        raise ConfigError(
            f"extend: {sweep_dir} has no {SETTINGS_FILE} (a sweep from before --extend existed)"
        )
    try:
        saved = json.loads(path.read_text())
        return SweepSettings.model_validate(
            saved | {option: getattr(command, option) for option in RUN_OPTIONS}
        )
    except (json.JSONDecodeError, TypeError) as error:
        raise ConfigError(f"extend: {path} is not the settings a sweep saves ({error})") from None
    except ValidationError as error:
        raise ConfigError(f"extend: {path}: {describe(error)}") from None


def extension_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's extensions, oldest first."""
    found = [path for path in sweep_dir.glob(f"{EXTENSION_PREFIX}*") if path.is_dir()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(EXTENSION_PREFIX)))


def next_extension_dir(sweep_dir: Path) -> Path:
    return sweep_dir / f"{EXTENSION_PREFIX}{len(extension_dirs(sweep_dir)) + 1}"
