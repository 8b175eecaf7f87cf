"""What a task is: its data, how an example becomes a prompt and a target, and how outputs are scored."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from trainables.errors import ConfigError
from trainables.tasks.data import RowValidator, load_splits

TASKS_DIR = Path(__file__).resolve().parent
# Room beyond the longest training target: test answers may run a little longer.
BUDGET_MARGIN_SHARE = 0.1
BUDGET_MARGIN_MIN_TOKENS = 4
# The key of a score's per-example values: metric name -> one value per example, in input order,
# whose mean is that metric. The primary metric's are what test verdicts bootstrap.
PER_EXAMPLE = "per_example"


def packaged_files(task: str) -> dict[str, Path]:
    return {
        "train_file": TASKS_DIR / task / "data" / "train.jsonl",
        "test_file": TASKS_DIR / task / "data" / "test.jsonl",
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
    # -> metric name -> value, and PER_EXAMPLE -> at least the primary metric's per-example values.
    score: Callable[[list[str], list[dict]], dict]
    primary_metric: str
    # The task's own metrics that a table of methods shows beside the primary one (the studies' columns).
    table_metrics: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    # Rows sharing this field's value stay in one split (a QG topic, a QA paragraph); None: each row alone.
    group_field: str | None = None
    # A YAML task's stated generation budget; None (every shipped task): derived from the data.
    max_new_tokens: int | None = None
    task_file: Path | None = None  # the YAML file a user's task comes from, which errors name

    def generation_budget(self, tokenizer, train_rows: Iterable[dict]) -> int:
        """New tokens a generation may use: enough for the longest training target and its EOS.

        Measured with the model's own tokenizer, since tokenizers split the same text differently.
        A stated budget is checked, not trusted: one that cuts every long answer scores 0 silently.
        """
        targets = [self.format_target(row) for row in train_rows]
        longest = max(len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"])
        needed = longest + 1  # the EOS that ends the answer
        if self.max_new_tokens is None:
            return needed + max(BUDGET_MARGIN_MIN_TOKENS, math.ceil(BUDGET_MARGIN_SHARE * longest))
        if self.max_new_tokens < needed:
            raise ConfigError(
                f"{self.task_file or self.name}: key 'max_new_tokens': {self.max_new_tokens} tokens cannot "
                f"hold the longest training target ({longest} tokens with this model's tokenizer, plus 1 for EOS)"
            )
        return self.max_new_tokens

    def splits(self) -> datasets.DatasetDict:
        return load_splits(self.train_file, self.test_file, self.validate_row, self.group_field)
