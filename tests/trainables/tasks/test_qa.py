import json
from collections import Counter

import pytest

from trainables.tasks import get_task
from trainables.tasks.data import DataError, read_jsonl
from trainables.tasks.metrics import exact_match, jaccard, normalise_answer
from trainables.tasks.qa.task import FORMATS, format_prompt, validate_row
from trainables.tasks.spec import PER_EXAMPLE

QA = get_task("qa")
GOOD = {
    "format": "extractive",
    "question": "Which river?",
    "context": "It lies on the Vell.",
    "answer": "Vell",
}


@pytest.fixture(scope="module")
def splits():
    return QA.splits()


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Vell.", "vell"),
        ("  A  stone   Bridge! ", "stone bridge"),
        ("Yes", "yes"),
        ("an apple, the pear", "apple pear"),
    ],
)
def test_normalisation(text, normalised):
    assert normalise_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "reference", "em", "jac"),
    [
        ("Yes.", "yes", 1.0, 1.0),
        ("a stone bridge", "stone bridge", 1.0, 1.0),
        ("the old stone bridge", "a stone bridge", 0.0, 2 / 3),  # {old, stone, bridge} vs {stone, bridge}
        ("31 years", "31", 0.0, 1 / 2),
        ("no", "yes", 0.0, 0.0),
        ("", "", 1.0, 1.0),
        ("", "yes", 0.0, 0.0),
        # The study's definition counts tokens with multiplicity: 1 common token of the longer 3.
        ("no no no", "no", 0.0, 1 / 3),
        ("stone stone bridge", "stone bridge bridge", 0.0, 2 / 3),
    ],
)
def test_exact_match_and_jaccard_hand_worked(prediction, reference, em, jac):
    assert exact_match(prediction, reference) == em
    assert jaccard(prediction, reference) == pytest.approx(jac)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"format": "essay"}, "field 'format': 'essay' is not one of"),
        ({"answer": "Rhine"}, "field 'answer': an extractive answer must be a span"),
        ({"context": None}, "field 'context': missing"),
        ({"format": "yes_no", "answer": "maybe"}, "field 'answer': 'maybe' is not yes or no"),
        ({"format": "multiple_choice", "choices": ["Vell"]}, "field 'choices': expected a list of 2 to"),
        (
            {"format": "multiple_choice", "choices": ["Oder", "Elbe"]},
            "field 'answer': 'Vell' is not one of the",
        ),
    ],
)
def test_bad_rows_name_the_field(tmp_path, changes, problem):
    row = {key: value for key, value in {**GOOD, **changes}.items() if value is not None}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"^{path}:2: {problem}"):
        read_jsonl(path, validate_row)


def test_prompts_carry_context_and_labelled_choices():
    example = {**GOOD, "format": "multiple_choice", "choices": ["Oder", "Vell"], "question": "Which?"}
    prompt = format_prompt(example)
    assert "### Paragraph:\nIt lies on the Vell.\n" in prompt
    assert "### Choices:\n(A) Oder (B) Vell\n" in prompt and prompt.endswith("### Answer:\n")
    assert "### Paragraph" not in format_prompt({**example, "context": None})


def test_shipped_data_set(splits):
    examples = [*splits["train"], *splits["validation"], *splits["test"]]
    assert len(examples) >= 800
    counts = Counter(example["format"] for example in examples)
    assert set(counts) == set(FORMATS) and min(counts.values()) >= 0.2 * len(examples)
    assert len(splits["test"]) / len(examples) == pytest.approx(0.25, abs=0.01)
    # A paragraph's questions all sit in one split, so test paragraphs are unseen in training.
    seen = {example["context"] for example in [*splits["train"], *splits["validation"]]}
    assert seen.isdisjoint(example["context"] for example in splits["test"])


def test_scores_per_format(splits):
    examples = list(splits["test"])
    perfect = QA.score([example["answer"] + "\nrambling" for example in examples], examples)
    assert perfect["exact_match"] == perfect["jaccard"] == 1.0
    assert {f"exact_match_{kind}" for kind in FORMATS} <= perfect.keys()
    yes = QA.score(["yes"] * len(examples), examples)
    assert yes["exact_match_yes_no"] == pytest.approx(
        sum(e["answer"] == "yes" for e in examples if e["format"] == "yes_no")
        / sum(e["format"] == "yes_no" for e in examples)
    )
    assert yes["exact_match_extractive"] == 0.0
    assert yes[PER_EXAMPLE]["exact_match"] == [float(e["answer"] == "yes") for e in examples]
