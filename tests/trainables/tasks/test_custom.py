"""User-defined YAML tasks: loading, prompts, metrics from the registry, and errors naming the key."""

import json
import subprocess
import sys

import pytest

from trainables.tasks import get_task
from trainables.tasks.custom import TaskFileError

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
    assert scores == {"exact_match": 0.5, "jaccard": 0.5} and task.primary_metric == "exact_match"
    assert get_task(str(_task_file(tmp_path, metric="jaccard"))).primary_metric == "jaccard"


def test_entity_f1_tasks_train_on_json_and_parse_answers(tmp_path):
    rows = [{"message": "Anna from Kyiv", "channel": "x", "intent": {"NAME": "Anna", "CITY": "Kyiv"}}] * 8
    rows += [{"message": "Ion", "channel": "x", "intent": {"NAME": "Ion"}}] * 8
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
