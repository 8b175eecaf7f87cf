"""The registries a trial config is checked against, bound at the boundary: trainables/config.py
knows none of them (validating a dict imports no PEFT, datasets or bert-score); what runs trials
or checks a sweep's options parses through here."""

from trainables.config import Registries, TrialConfig, check_task
from trainables.methods import METHODS
from trainables.tasks import canonical_task

KNOWN = Registries(methods=METHODS, canonical_task=canonical_task)


def trial_config(values: dict) -> TrialConfig:
    """The typed config of a trial, checked against the registered methods and tasks."""
    return TrialConfig.parse(values, KNOWN)


def known_task(task: str) -> str:
    return check_task(task, canonical_task)
