"""What a task is: its data, how an example becomes a prompt and a target, and how outputs are scored."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from trainables.tasks.data import RowValidator, load_splits

PACKAGED_DATA = Path(__file__).resolve().parent / "data"


def packaged_files(task: str) -> dict[str, Path]:
    return {
        "train_file": PACKAGED_DATA / task / "train.jsonl",
        "test_file": PACKAGED_DATA / task / "test.jsonl",
    }


@dataclass(frozen=True)
class Task:
    name: str
    train_file: Path
    test_file: Path | None  # None: a fixed quarter of the train file is the test split
    instruction: str
    inputs: tuple[str, ...]  # the text fields a prompt is made of (what a served task request sends)
    validate_row: RowValidator
    format_prompt: Callable[[dict], str]
    format_target: Callable[[dict], str]
    parse: Callable[[str], Any]
    score: Callable[[list[str], list[dict]], dict[str, float]]
    primary_metric: str
    max_new_tokens: int
    optional_inputs: tuple[str, ...] = ()

    def splits(self, validation_share: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
        return load_splits(self.train_file, self.test_file, self.validate_row, validation_share, seed)
