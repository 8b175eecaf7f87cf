"""Loading task data from JSONL through `datasets`, after validating every row.

Validation happens before `datasets` sees the file so that an error names the file, the line
and the field, which the JSON builder of `datasets` cannot do.
"""

import json
from collections.abc import Callable
from pathlib import Path

import datasets


class DataError(ValueError):
    """A data file is malformed; the message names file, line and field."""


class FieldError(ValueError):
    """A row's field is wrong; `read_jsonl` adds the file and line."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")
        self.field = field


RowValidator = Callable[[dict], None]
CARVED_TEST_SHARE = 0.25


def require_text(row: dict, field: str) -> str:
    value = row.get(field)
    if field not in row:
        raise FieldError(field, "missing")
    if not isinstance(value, str):
        raise FieldError(field, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(field, "empty text")
    return value


def read_jsonl(path: Path, validate_row: RowValidator) -> list[dict]:
    """Every row of a JSONL file, validated; raises DataError at the first bad line."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    rows = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: bad JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            try:
                validate_row(row)
            except FieldError as error:
                raise DataError(f"{where}: {error}") from None
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def write_splits(out_dir: Path, splits: dict[str, list[dict]]) -> None:
    """One `<split>.jsonl` per split, UTF-8, one object per line: what the data set generators ship."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        (out_dir / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")


def load_split(path: Path, validate_row: RowValidator) -> datasets.Dataset:
    read_jsonl(path, validate_row)
    return datasets.load_dataset("json", data_files=str(path), split="train")


def load_splits(
    train_file: Path, test_file: Path | None, validate_row: RowValidator, validation_share: float, seed: int
) -> datasets.DatasetDict:
    """train / validation / test; validation is carved out of train, test is never touched here.

    Without a test file, a quarter of the train file becomes the test split, under a fixed seed so
    that it is the same for every trial whatever the trial's own seed.
    """
    train = load_split(train_file, validate_row)
    if test_file is None:
        held_out = train.train_test_split(test_size=CARVED_TEST_SHARE, seed=0, shuffle=True)
        train, test = held_out["train"], held_out["test"]
    else:
        test = load_split(test_file, validate_row)
    carved = train.train_test_split(test_size=validation_share, seed=seed, shuffle=True)
    return datasets.DatasetDict(train=carved["train"], validation=carved["test"], test=test)
