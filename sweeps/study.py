"""The sweep's Optuna study, kept in its experiment directory so that it outlives the driver.

Ray Tune's OptunaSearch keeps its study in memory (pickled with Tune's searcher state) unless it is
given a storage. In an Optuna journal file the study survives Tuner.restore, an extension of the
sweep (--extend) continues it, warm-started from every earlier trial, and optuna.load_study or
optuna-dashboard opens it:

    optuna-dashboard <sweep dir>/optuna_study.journal
"""

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sweeps.objectives import Objective

STUDY_FILE = "optuna_study.journal"
STUDY_NAME = "search"


def storage(sweep_dir: Path) -> JournalStorage:
    """A journal file: one append-only file beside the trials, no database server; its file lock
    also works on NFS, where a sweep's storage may live on a cluster."""
    return JournalStorage(JournalFileBackend(str(sweep_dir / STUDY_FILE)))


def open_study(sweep_dir: Path, objectives: list[Objective], sampler: optuna.samplers.BaseSampler) -> None:
    """Creates the sweep's study, or checks the one an earlier run left, before OptunaSearch loads it
    (it creates with load_if_exists). Each objective's name is stored as its metric name, which
    optuna-dashboard and Optuna's plots show."""
    directions = ["maximize" if objective.larger_is_better else "minimize" for objective in objectives]
    study = optuna.create_study(
        storage=storage(sweep_dir),
        sampler=sampler,
        study_name=STUDY_NAME,
        directions=directions,
        load_if_exists=True,
    )
    names = [objective.name for objective in objectives]
    if study.metric_names is None:
        with warnings.catch_warnings():
            # Experimental since Optuna 3.2, and still how Optuna names a study's objectives.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    elif study.metric_names != names:
        raise ValueError(f"objectives: the sweep's study optimises {study.metric_names}, not {names}")


def load(sweep_dir: Path) -> optuna.Study | None:
    """The sweep's study; None for a sweep without one (run before studies were kept)."""
    if not (sweep_dir / STUDY_FILE).is_file():
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=storage(sweep_dir))
