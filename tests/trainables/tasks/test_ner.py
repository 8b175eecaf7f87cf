import datetime
import json
from collections import Counter

import pytest

from trainables.tasks import get_task
from trainables.tasks.entities import entity_scores, parse_entities
from trainables.tasks.ner.documents import check_digit, mrz_lines
from trainables.tasks.ner.task import ENTITIES, format_prompt, format_target
from trainables.tasks.spec import PER_EXAMPLE

NER = get_task("ner")


@pytest.fixture(scope="module")
def splits():
    return NER.splits()


@pytest.mark.parametrize(
    ("generated", "parsed"),
    [
        ('{"GIVEN_NAME": "Anna"}', {"GIVEN_NAME": "Anna"}),
        (
            "Sure! {'LAST_NAME': 'MÜLLER', 'BIRTH_DATE': '01.02.1990'} hope that helps",
            {"LAST_NAME": "MÜLLER", "BIRTH_DATE": "01.02.1990"},
        ),
        ('{"GIVEN_NAME": "Anna"} {"LAST_NAME": "X"}', {"GIVEN_NAME": "Anna"}),
        ('noise { not json } then {"A": "b"}', {"A": "b"}),
        ('{"GIVEN_NAME": "Anna", "LAST_NAME": "MÜ', None),
        ("no entities here", None),
        ("[1, 2]", None),
        ('{"DOCUMENT_NUMBER": 12345}', {"DOCUMENT_NUMBER": "12345"}),
    ],
)
def test_parser_accepts_json_or_python_dicts_inside_text(generated, parsed):
    assert parse_entities(generated) == parsed


def test_metrics_on_a_hand_worked_case():
    entities = ["A", "B", "C"]
    gold = [{"A": "Anna", "B": "Berlin"}, {"A": "Ion", "C": "2030"}]
    predicted = [
        {"A": " anna ", "B": "Bonn", "C": "x"},  # A right (trim, case-fold); B wrong; C filled but absent
        None,  # unparsable: no slot filled
    ]
    # Slots: doc 1: A TP, B wrong, C FP -> 1 right of 3; doc 2: A, C missed, B TN -> 1 right of 3.
    scores = entity_scores(predicted, gold, entities)
    assert scores["accuracy"] == pytest.approx(2 / 6)
    assert scores["precision"] == pytest.approx(1 / 3)  # 1 TP of 3 filled slots
    assert scores["recall"] == pytest.approx(1 / 4)  # 1 TP of 4 gold entities
    assert scores["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert scores["document_accuracy"] == 0.0
    assert scores["format_valid_rate"] == 0.5
    assert scores["accuracy_A"] == 0.5 and scores["accuracy_B"] == 0.5 and scores["accuracy_C"] == 0.0
    # Per document: slot accuracy, and F1 contributions that average to the micro F1 over all slots.
    assert scores[PER_EXAMPLE]["accuracy"] == pytest.approx([1 / 3, 1 / 3])
    contributions = scores[PER_EXAMPLE]["f1"]
    assert sum(contributions) / 2 == pytest.approx(scores["f1"])
    assert contributions[0] > scores["f1"] > contributions[1]  # doc 1 holds the one true positive


def test_invented_entities_are_false_positives_and_counted():
    """An untouched model adds keys of its own (date_of_issue, sex): each is a slot filled wrongly."""
    gold = [{"A": "x", "B": "y"}, {"A": "z"}]
    predicted = [{"A": "x", "B": "y", "date_of_issue": "2020", "sex": "F"}, {"A": "z", "note": ""}]
    scores = entity_scores(predicted, gold, ["A", "B"])
    assert scores["invented_entities"] == 2  # an empty value fills nothing, invented or not
    assert scores["precision"] == pytest.approx(3 / 5)  # 3 TP of 5 filled slots, 2 of them invented
    assert scores["recall"] == 1.0 and scores["accuracy"] == 1.0  # every one of the entities is right
    assert scores["document_accuracy"] == 0.5  # the document that invents is not wholly right
    assert sum(scores[PER_EXAMPLE]["f1"]) / 2 == pytest.approx(scores["f1"])
    assert entity_scores(gold, gold, ["A", "B"])["invented_entities"] == 0


def test_f1_contributions_average_to_micro_f1_where_document_f1_would_not():
    gold = [{"A": "x", "B": "y", "C": "z"}, {"A": "x"}, {"B": "y", "C": "z"}]
    predicted = [{"A": "x", "B": "y", "C": "z"}, {"A": "q"}, {"B": "y"}]
    scores = entity_scores(predicted, gold, ["A", "B", "C"])
    assert scores["f1"] == pytest.approx(2 * 4 / (5 + 6))  # 4 TP, 5 filled, 6 expected
    assert sum(scores[PER_EXAMPLE]["f1"]) / 3 == pytest.approx(scores["f1"])
    document_f1 = [1.0, 0.0, 2 * 1 / (1 + 2)]
    assert sum(document_f1) / 3 != pytest.approx(scores["f1"])


def test_perfect_and_empty_answers():
    gold = [{"A": "x"}, {"B": "y"}]
    perfect = entity_scores(gold, gold, ["A", "B"])
    assert perfect["f1"] == perfect["accuracy"] == perfect["document_accuracy"] == 1.0
    empty = entity_scores([{}, {}], gold, ["A", "B"])
    assert empty["precision"] == empty["recall"] == empty["f1"] == 0.0
    assert empty["accuracy"] == 0.5  # the two absent slots are true negatives


def test_mrz_check_digits_follow_icao_9303():
    # ICAO 9303's specimen passport: L898902C36UTO7408122F1204159ZE184226B<<<<<10
    assert check_digit("L898902C3") == "6"
    assert check_digit("740812") == "2"
    assert check_digit("120415") == "9"
    assert check_digit("ZE184226B<<<<<") == "1"
    assert check_digit("L898902C36" + "7408122" + "1204159" + "ZE184226B<<<<<1") == "0"
    holder = {
        "number": "L898902C3", "birth": datetime.date(1974, 8, 12), "expiry": datetime.date(2012, 4, 15),
        "nationality_code": "UTO", "last": "ERIKSSON", "given": "ANNA MARIA", "sex": "F",
    }  # fmt: skip
    names, numbers = mrz_lines(holder, "passport", {"code": "UTO"})
    assert names == "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<"
    assert numbers.startswith("L898902C36UTO7408122F1204159<<<<<<<<<<<<<<") and len(numbers) == 44


def test_shipped_data_set(splits):
    documents = [*splits["train"], *splits["validation"], *splits["test"]]
    assert len(documents) >= 400
    assert len(splits["test"]) / len(documents) == pytest.approx(0.25, abs=0.01)
    assert set(Counter(d["document_type"] for d in documents)) == {
        "passport",
        "identity card",
        "residence permit",
        "driving licence",
    }
    assert len({d["country"] for d in documents}) >= 6
    for document in documents:
        carried = {name for name, value in document["entities"].items() if value}
        for name in carried - {"DOCUMENT_TYPE", "ISSUING_COUNTRY"}:
            assert document["entities"][name] in document["text"], (document["id"], name)
        if document["document_type"] == "driving licence":
            assert "NATIONALITY" not in carried
        if document["document_type"] == "residence permit":
            assert "BIRTH_PLACE" not in carried


def test_prompt_and_target_round_trip(splits):
    example = splits["train"][0]
    assert example["text"] in format_prompt(example)
    target = json.loads(format_target(example))
    assert list(target) == [name for name in ENTITIES if example["entities"].get(name)]
    assert NER.parse("junk " + format_target(example) + " more") == target


def test_scoring_the_gold_answers_is_perfect_and_garbage_is_invalid(splits):
    examples = list(splits["test"])[:10]
    perfect = NER.score([format_target(e) for e in examples], examples)
    assert perfect["f1"] == perfect["document_accuracy"] == perfect["format_valid_rate"] == 1.0
    garbage = NER.score(["no idea"] * len(examples), examples)
    assert garbage["format_valid_rate"] == 0.0 and garbage["recall"] == 0.0
