import json

import pytest

from trainables.tasks import get_task
from trainables.tasks.data import DataError, read_jsonl

QG = get_task("qg")
GOOD = {
    "history": "The user is planning a trip to Lisbon.",
    "question": "Is it safe?",
    "queries": ["Is Lisbon safe?"],
}


def _write(tmp_path, lines: list[bytes]):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _row(**changes) -> bytes:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (_row(question=None), "field 'question': missing"),
        (_row(history="   "), "field 'history': empty text"),
        (_row(queries=["Is Lisbon safe"]), "field 'queries[0]': 'Is Lisbon safe' does not end with '?'"),
        (_row(queries=["A?", "B?", "C?", "D?"]), "field 'queries': 4 queries, at most 3 allowed"),
        (_row(queries=[]), "field 'queries': expected a non-empty list"),
        (_row(question=7), "field 'question': expected text, got int"),
        (b'{"history": "x", "question": ', "bad JSON"),
        (b'{"history": "caf\xe9"}', "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_row_names_file_line_and_field(tmp_path, bad_line, expected):
    path = _write(tmp_path, [_row(), _row(question="And the weather?"), bad_line])
    with pytest.raises(DataError) as caught:
        read_jsonl(path, QG.validate_row)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such data file"):
        read_jsonl(tmp_path / "nope.jsonl", QG.validate_row)


def test_valid_rows_load_and_blank_lines_are_skipped(tmp_path):
    path = _write(tmp_path, [_row(), b"", _row(question="And the food?")])
    rows = read_jsonl(path, QG.validate_row)
    assert [row["question"] for row in rows] == ["Is it safe?", "And the food?"]
