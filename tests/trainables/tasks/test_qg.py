from collections import Counter
from pathlib import Path

import pytest

from trainables.tasks import get_task
from trainables.tasks.qg.task import (
    format_prompt,
    format_target,
    is_valid_format,
    parse_queries,
    penalised_f1,
)
from trainables.tasks.spec import PER_EXAMPLE

QG = get_task("qg")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def splits():
    return QG.splits()


@pytest.mark.parametrize(
    ("generated", "queries"),
    [
        ("Is Lisbon safe?", ["Is Lisbon safe?"]),
        (
            "Is Lisbon safe? - What currency is used in Lisbon?",
            ["Is Lisbon safe?", "What currency is used in Lisbon?"],
        ),
        ("  A? -B?-  C? \nrambling on - D?", ["A?", "B?", "C?"]),
        ("", []),
        (" - ", ["-"]),
        (
            "How old is a four-year-old? - Is it well-known?",
            ["How old is a four-year-old?", "Is it well-known?"],
        ),
    ],
)
def test_parse_queries(generated, queries):
    assert parse_queries(generated) == queries


@pytest.mark.parametrize(
    ("queries", "valid"),
    [
        (["Is Lisbon safe?"], True),
        (["A?", "B?", "C?"], True),
        (["A?", "B?", "C?", "D?"], False),
        ([], False),
        (["Is Lisbon safe"], False),
        (["?"], False),
    ],
)
def test_format_rules(queries, valid):
    assert is_valid_format(queries) is valid


@pytest.mark.parametrize(
    ("f1", "generated", "reference", "expected"),
    [(0.9, 1, 1, 0.9), (0.9, 3, 1, 0.8), (0.9, 2, 3, 0.9), (0.5, 3, 2, 0.45), (0.9, 0, 1, 0.9)],
)
def test_surplus_query_penalty(f1, generated, reference, expected):
    assert penalised_f1(f1, generated, reference) == pytest.approx(expected)


def test_score_on_hand_worked_outputs():
    example = {
        "history": "h",
        "question": "q",
        "queries": ["Is Lisbon safe?", "What currency is used in Lisbon?"],
    }
    exact = QG.score([format_target(example)], [example])
    assert exact["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert exact["bertscore_f1_penalised"] == pytest.approx(1.0, abs=1e-4)
    assert exact["format_valid_rate"] == 1.0
    assert exact["mean_queries"] == 2.0 and exact["surplus_queries"] == 0.0

    surplus = QG.score([format_target(example) + " - Is Porto safe?"], [example])
    assert surplus["bertscore_f1_penalised"] == pytest.approx(surplus["bertscore_f1"] - 0.05)
    assert surplus["surplus_queries"] == 1.0

    empty_and_junk = QG.score(["", "no question mark here"], [example, example])
    assert empty_and_junk["format_valid_rate"] == 0.0
    assert empty_and_junk["bertscore_f1"] < 0.5
    per_example = empty_and_junk[PER_EXAMPLE]["bertscore_f1_penalised"]
    assert per_example[0] == 0.0 and sum(per_example) / 2 == pytest.approx(
        empty_and_junk["bertscore_f1_penalised"]
    )


def test_prompt_holds_instruction_history_and_question_and_target_joins_queries(splits):
    example = splits["train"][0]
    prompt = format_prompt(example)
    assert QG.instruction in prompt
    assert example["history"] in prompt and example["question"] in prompt
    assert example["queries"][0] not in prompt
    assert parse_queries(format_target(example)) == example["queries"]


def test_shipped_data_set_meets_its_brief(splits):
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    examples = [*train, *validation, *test]
    assert len(examples) >= 1000
    assert len({e["topic"] for e in examples}) >= 40
    assert len({e["question"] for e in examples}) == len(examples)
    counts = Counter(len(e["queries"]) for e in examples)
    assert counts[1] + counts[2] > 0.75 * len(examples) and counts[3] > 0.05 * len(examples)
    assert len(test) / len(examples) == pytest.approx(0.25, abs=0.01)
    assert {e["id"] for e in test}.isdisjoint(e["id"] for e in [*train, *validation])
    assert len(validation) > 0
