"""What a task is: its data, how an example becomes a prompt and a target, and how outputs are scored."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from trainables.tasks.data import RowValidator, load_splits

PACKAGED_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Task:
    name: str
    data_dir: Path
    instruction: str
    validate_row: RowValidator
    format_prompt: Callable[[dict], str]
    format_target: Callable[[dict], str]
    parse: Callable[[str], Any]
    score: Callable[[list[str], list[dict]], dict[str, float]]
    primary_metric: str
    max_new_tokens: int

    def splits(self, validation_share: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
        return load_splits(self.data_dir, self.validate_row, validation_share, seed)
