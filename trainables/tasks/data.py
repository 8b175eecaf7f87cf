"""Loading task data from JSONL through `datasets`, after validating every row.

Validation happens before `datasets` sees the file so that an error names the file, the line
and the field, which the JSON builder of `datasets` cannot do.
"""

import argparse
import hashlib
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
VALIDATION_SHARE = 0.1


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


def group_key(row: dict, group_field: str | None) -> str:
    """What must not straddle two splits: the row's group field, or the whole row when there is none."""
    if group_field is None:
        return json.dumps(row, sort_keys=True, ensure_ascii=False)
    return str(row[group_field])


def held_out_groups(keys: list[str], share: float, salt: str) -> set[str]:
    """A fixed share of the groups, chosen by a hash of each key: the same whatever the seed or row order."""
    groups = sorted(set(keys), key=lambda key: hashlib.sha256(f"{salt}:{key}".encode()).hexdigest())
    return set(groups[: max(1, round(share * len(groups)))])


def _carve(split: datasets.Dataset, group_field: str | None, share: float, salt: str):
    keys = [group_key(row, group_field) for row in split]
    held_out = held_out_groups(keys, share, salt)
    kept = [i for i, key in enumerate(keys) if key not in held_out]
    carved = [i for i, key in enumerate(keys) if key in held_out]
    return split.select(kept), split.select(carved)


def load_splits(
    train_file: Path, test_file: Path | None, validate_row: RowValidator, group_field: str | None
) -> datasets.DatasetDict:
    """train / validation / test, with no group (a QG topic, a QA paragraph) in two of them.

    Validation is a fixed share of the train file's groups, chosen by hash, so it is the same rows
    for every trial and seed; test is the test file, never touched here. Without a test file, a
    fixed share of the groups becomes the test split the same way.
    """
    train = load_split(train_file, validate_row)
    if test_file is None:
        train, test = _carve(train, group_field, CARVED_TEST_SHARE, salt="test")
    else:
        test = load_split(test_file, validate_row)
    train, validation = _carve(train, group_field, VALIDATION_SHARE, salt="validation")
    if not len(train):
        raise DataError(
            f"{train_file}: too few distinct {group_field or 'rows'} to hold out validation"
            f"{'' if test_file else ' and test'} and still train; add examples"
        )
    return datasets.DatasetDict(train=train, validation=validation, test=test)


def generator_cli(doc: str, default_out: Path, seed: int) -> argparse.ArgumentParser:
    """A shipped data set's generator's command line: where to write (by default over the shipped
    files) and its seed."""
    cli = argparse.ArgumentParser(description=doc.splitlines()[0])
    cli.add_argument("out_dir", nargs="?", type=Path, default=default_out)
    cli.add_argument("--seed", type=int, default=seed)
    return cli
