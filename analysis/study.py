"""Reading the sweep's Optuna study, kept in its experiment directory so that it outlives the
driver (sweeps.study creates it and the search writes it).

In an Optuna journal file the study survives Tuner.restore, an extension of the sweep (--extend)
continues it, warm-started from every earlier trial, and optuna.load_study or optuna-dashboard
opens it:

    optuna-dashboard <sweep dir>/optuna_study.journal
"""

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

STUDY_FILE = "optuna_study.journal"
STUDY_NAME = "search"


def storage(sweep_dir: Path) -> JournalStorage:
    """A journal file: one append-only file beside the trials, no database server; its file lock
    also works on NFS, where a sweep's storage may live on a cluster."""
    return JournalStorage(JournalFileBackend(str(sweep_dir / STUDY_FILE)))


def load(sweep_dir: Path) -> optuna.Study | None:
    """The sweep's study; None for a sweep without one (run before studies were kept)."""
    if not (sweep_dir / STUDY_FILE).is_file():
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=storage(sweep_dir))
