"""The trial config knows no registry: the methods and tasks it is checked against are passed in."""

import subprocess
import sys

import pytest

from trainables.config import ConfigError, Hyperparameters, Registries, TrialConfig


def test_validating_a_config_imports_neither_peft_nor_the_task_data():
    heavy = ("peft", "torch", "datasets", "bert_score")
    code = f"import sys; from trainables.config import TrialConfig; print(sorted(set({heavy}) & sys.modules.keys()))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


class _Ranked(Hyperparameters):
    rank: int = 8


class _Method:
    name, hyperparameters = "ranked", _Ranked


def test_a_config_is_checked_against_the_registries_it_is_given():
    known = Registries(methods={"ranked": _Method}, canonical_task={"t": "t"}.__getitem__)
    config = TrialConfig.parse({"task": "t", "method": "ranked", "ranked.rank": 4}, known)
    assert config.hyperparameters.rank == 4
    with pytest.raises(ConfigError, match=r"method: unknown method 'lora'; known: ranked"):
        TrialConfig.parse({"task": "t", "method": "lora"}, known)
