"""User-defined YAML tasks: loading, prompts, metrics from the registry, and errors naming the key."""

import json
import subprocess
import sys

import pytest

from sweeps import run, settings
from trainables import models
from trainables.config import ConfigError
from trainables.tasks import get_task
from trainables.tasks.custom import TaskFileError
from trainables.tasks.data import DataError
from trainables.tasks.spec import PER_EXAMPLE

TASK_FILE = """\
name: support_intents
train: data/train.jsonl
input_fields: [message, channel]
output_field: intent
prompt: |
  Classify the customer's message.
  ### Channel: {channel}
  ### Message:
  {message}
  ### Intent:
metric: {metric}
max_new_tokens: 8
"""
ROWS = [
    {"message": f"Please refund order {n}", "channel": "email", "intent": "refund"} for n in range(30)
] + [{"message": f"Where is parcel {n}?", "channel": "chat", "intent": "shipping"} for n in range(30)]


def _task_file(tmp_path, text: str = TASK_FILE, metric: str = "exact_match", rows=ROWS):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = tmp_path / "task.yaml"
    path.write_text(text.replace("{metric}", metric))
    return path


def test_a_task_file_loads_formats_and_scores(tmp_path):
    task = get_task(str(_task_file(tmp_path)))
    assert task.name == "support_intents" and task.instruction == "Classify the customer's message."
    splits = task.splits()
    assert len(splits["test"]) == 15 and len(splits["train"]) + len(splits["validation"]) == 45
    example = {"message": "Where is parcel 3?", "channel": "chat", "intent": "shipping"}
    assert task.format_prompt(example).endswith(
        "### Channel: chat\n### Message:\nWhere is parcel 3?\n### Intent:\n"
    )
    assert task.format_target(example) == "shipping"
    assert task.parse("  refund\nmore text") == "refund"
    scores = task.score(["Refund.\nnoise", "refund"], [{"intent": "refund"}, {"intent": "shipping"}])
    per_example = {"exact_match": [1.0, 0.0], "jaccard": [1.0, 0.0]}
    assert scores == {"exact_match": 0.5, "jaccard": 0.5, PER_EXAMPLE: per_example}
    assert task.primary_metric == "exact_match"
    assert get_task(str(_task_file(tmp_path, metric="jaccard"))).primary_metric == "jaccard"


def test_too_few_distinct_rows_to_split_is_refused_naming_the_file(tmp_path):
    rows = [{"message": "same", "channel": "x", "intent": "refund"}] * 8
    task = get_task(str(_task_file(tmp_path, rows=rows)))
    with pytest.raises(
        DataError, match=r"train\.jsonl: too few distinct rows to hold out validation and test"
    ):
        task.splits()


def test_entity_f1_tasks_train_on_json_and_parse_answers(tmp_path):
    rows = [
        {"message": f"Anna from Kyiv {i}", "channel": "x", "intent": {"NAME": "Anna", "CITY": "Kyiv"}}
        for i in range(8)
    ]
    rows += [{"message": f"Ion {i}", "channel": "x", "intent": {"NAME": "Ion"}} for i in range(8)]
    task = get_task(str(_task_file(tmp_path, metric="entity_f1", rows=rows)))
    example = task.splits()["train"][0]
    assert json.loads(task.format_target(example)) == {k: v for k, v in example["intent"].items() if v}
    scores = task.score(['{"NAME": "anna", "CITY": "Kyiv"}', "nothing"], [rows[0], rows[-1]])
    assert scores["precision"] == 1.0 and scores["recall"] == pytest.approx(2 / 3)
    assert scores["format_valid_rate"] == 0.5 and task.primary_metric == "f1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("metric: {metric}", "metric: f2"),
            "key 'metric': unknown metric 'f2'; known: bertscore, entity_f1",
        ),
        (("output_field: intent\n", ""), "key 'output_field': Field required"),
        (("max_new_tokens: 8", "max_new_tokens: 8\ntemperature: 1"), "key 'temperature': unknown key"),
        (("{channel}", "{chanel}"), "prompt: placeholder {chanel} is not one of input_fields"),
        (("train: data/train.jsonl", "train: data/missing.jsonl"), "key 'train': no such data file"),
        (("max_new_tokens: 8", "max_new_tokens: [8"), "not valid YAML"),
        (("name: support_intents", "name: ../escape"), "key 'name': String should match pattern"),
    ],
)
def test_errors_name_the_key_at_fault(tmp_path, change, message):
    path = _task_file(tmp_path, text=TASK_FILE.replace(*change))
    with pytest.raises(TaskFileError, match=message):
        get_task(str(path))


def test_sweep_cli_rejects_a_bad_task_file_with_exit_2(tmp_path):
    path = _task_file(tmp_path, text=TASK_FILE.replace("metric: {metric}", "metric: f2"))
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.run", str(path), "--storage", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("key 'metric': unknown metric 'f2'; known: bertscore, entity_f1, exact_match, jaccard")
    )
    assert not (tmp_path / "results").exists()


def _longest_intent(task, tokenizer) -> int:
    targets = [task.format_target(row) for row in task.splits()["train"]]
    return max(len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"])


def test_without_max_new_tokens_the_budget_is_derived_from_the_data(tmp_path, tiny_model):
    task = get_task(str(_task_file(tmp_path, text=TASK_FILE.replace("max_new_tokens: 8\n", ""))))
    tokenizer = models.load_tokenizer(tiny_model)
    longest = _longest_intent(task, tokenizer)
    assert task.generation_budget(tokenizer, task.splits()["train"]) == longest + 1 + 4


def test_a_budget_too_short_for_the_answers_stops_the_sweep_before_it_starts(tmp_path, tiny_model, capsys):
    tokenizer = models.load_tokenizer(tiny_model)
    longest = _longest_intent(get_task(str(_task_file(tmp_path))), tokenizer)
    fitting = _task_file(
        tmp_path, text=TASK_FILE.replace("max_new_tokens: 8", f"max_new_tokens: {longest + 1}")
    )
    cli = {"model": tiny_model, "storage": str(tmp_path / "results")}
    settings.check_generation_budget(settings.resolve(str(fitting), None, cli))

    short = _task_file(tmp_path, text=TASK_FILE.replace("max_new_tokens: 8", f"max_new_tokens: {longest}"))
    refusal = (
        f"{short.resolve()}: key 'max_new_tokens': {longest} tokens cannot hold the longest training target "
        f"({longest} tokens with this model's tokenizer, plus 1 for EOS)"
    )
    with pytest.raises(ConfigError) as refused:
        settings.check_generation_budget(settings.resolve(str(short), None, cli))
    assert str(refused.value) == refusal
    assert run.main([str(short), "--model", tiny_model, "--storage", cli["storage"]]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {refusal}"
    assert not (tmp_path / "results" / "support_intents").exists()  # no trial, no Ray experiment
