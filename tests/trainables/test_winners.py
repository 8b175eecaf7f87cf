"""winners.json has one typed model: what the report writes, serving reads, and a bad file is
refused naming its field."""

import json

import pytest

from trainables import winners
from trainables.config import ConfigError

WINNER = {
    "id": "qg-lora-1a2b",
    "task": "qg",
    "method": "lora",
    "base_model": "embedded",
    "quantize_4bit": False,
    "adapter_path": "/sweep/1a2b-lora/checkpoint_000001/adapter",
}


def _written(tmp_path, content: dict) -> None:
    (tmp_path / winners.WINNERS_FILE).write_text(json.dumps(content))


def test_what_is_written_reads_back_the_same(tmp_path):
    comparison = {
        "against": "qg-ia3-9f8e", "difference": 0.1, "ci95": [0.05, 0.15], "distinguishable": True,
        "steps": 160, "seeds": 2, "against_steps": 40, "against_seeds": 1, "equal_budget": False,
        "real_difference": False, "meaning": "unequal budgets: qg-lora-1a2b trained 160 steps, qg-ia3-9f8e trained 40",
    }  # fmt: skip
    test = {
        "quality": 0.5,
        "quality_ci95": [0.4, 0.6],
        "examples": 12,
        "steps": 160,
        "comparisons": [comparison],
    }
    written = winners.Winners.model_validate({"winners": [WINNER | {"test": test | {"bertscore_f1": 0.9}}]})
    written.write(tmp_path)
    read = winners.read(tmp_path)
    assert read == written and read.schema_version == winners.SCHEMA_VERSION
    assert read.winners[0].test.comparisons[0].meaning.startswith("unequal budgets")
    assert read.winners[0].test.model_extra == {"bertscore_f1": 0.9}  # the task's own metrics ride along


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            {"winners": [{k: v for k, v in WINNER.items() if k != "adapter_path"}]},
            "winners.0.adapter_path: Field required",
        ),
        (
            {"winners": [WINNER | {"quantize_4bit": "maybe"}]},
            "winners.0.quantize_4bit: Input should be a valid boolean",
        ),
        ({"winners": [WINNER | {"adapter": "x"}]}, "winners.0.adapter: unknown option"),
        ({"schema_version": 99, "winners": [WINNER]}, "schema_version: .*newer than this code reads"),
        ({}, "winners: Field required"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_field(tmp_path, content, problem):
    _written(tmp_path, content)
    with pytest.raises(ConfigError, match=rf"{tmp_path}/winners.json: not a winners file: {problem}"):
        winners.read(tmp_path)


def test_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file; run the sweep or `python -m analysis.report"):
        winners.read(tmp_path)
