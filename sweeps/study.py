"""The sweep's Optuna study: created in its experiment directory before the search starts, and
checked against the objectives of a resumed or extended sweep (analysis.study reads it).

Ray Tune's OptunaSearch keeps its study in memory (pickled with Tune's searcher state) unless it is
given a storage: a journal file in the sweep's directory (analysis.study.storage) outlives it.
"""

import warnings
from pathlib import Path

import optuna

from analysis.study import STUDY_NAME, load, storage
from sweeps.objectives import Objective

__all__ = ["STUDY_NAME", "load", "open_study", "storage"]


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
