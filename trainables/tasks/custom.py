"""User-defined tasks: a YAML file names the data, the fields, a prompt template and a metric.

    name: support_intents          # results go to <storage>/support_intents/
    train: data/train.jsonl        # relative to this file
    test: data/test.jsonl          # optional: without it a fixed quarter of train is the test split
    input_fields: [message]
    output_field: intent
    prompt: |
      Classify the customer's message.
      ### Message:
      {message}
      ### Intent:
    metric: exact_match            # exact_match, jaccard, bertscore, entity_f1
    max_new_tokens: 16             # optional: checked against the data; default derived from it
    single_line: true              # optional: the answer is the generation's first line
    instruction: ...               # optional: prompt tuning's init text; default the prompt's first line
    group_field: doc_id            # optional: rows sharing it stay in one split (default: each row alone)

With `entity_f1` the output field is a JSON object of entity name -> value, the model is trained
to answer with it as JSON, and answers are parsed as the NER task parses them.
"""

import json
import re
import string
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.errors import ConfigError
from trainables.tasks.data import FieldError, require_text
from trainables.tasks.entities import parse_entities
from trainables.tasks.metrics import METRICS
from trainables.tasks.spec import Task

TASK_FILE_SUFFIXES = (".yaml", ".yml")
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TaskFileError(ConfigError):
    """A task file is invalid; the message names the file and the key at fault."""


class TaskFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    train: Path
    test: Path | None = None
    input_fields: list[str] = Field(min_length=1)
    output_field: str
    prompt: str = Field(min_length=1)
    metric: str
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    single_line: bool = True
    instruction: str | None = None
    group_field: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'; known: {', '.join(sorted(METRICS))}")
        return metric

    @field_validator("input_fields")
    @classmethod
    def _field_names(cls, fields: list[str]) -> list[str]:
        if bad := [field for field in fields if not FIELD_NAME.match(field)]:
            raise ValueError(f"not a field name: {', '.join(map(repr, bad))}")
        return fields

    @model_validator(mode="after")
    def _prompt_uses_inputs(self) -> "TaskFile":
        try:
            placeholders = [
                name for _, name, _, _ in string.Formatter().parse(self.prompt) if name is not None
            ]
        except ValueError as error:
            raise ValueError(
                f"prompt: not a valid template ({error}); write literal braces as {{{{ and }}}}"
            ) from None
        if unknown := [name for name in placeholders if name not in self.input_fields]:
            raise ValueError(f"prompt: placeholder {{{unknown[0]}}} is not one of input_fields")
        if unused := [field for field in self.input_fields if field not in placeholders]:
            raise ValueError(f"prompt: input field '{unused[0]}' has no {{{unused[0]}}} placeholder")
        if self.output_field in self.input_fields:
            raise ValueError(f"output_field: '{self.output_field}' is also an input field")
        return self


def is_task_file(task: str) -> bool:
    return task.endswith(TASK_FILE_SUFFIXES)


def _describe(path: Path, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key; known: {', '.join(TaskFile.model_fields)}"
        problems.append(f"key '{key}': {message}" if key else message)
    return f"{path}: " + "; ".join(problems)


def _read(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TaskFileError(f"{path}: cannot read task file ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TaskFileError(f"{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(loaded, dict):
        raise TaskFileError(f"{path}: expected a mapping of task keys")
    return loaded


def load_task_file(path: Path) -> Task:
    """The Task a YAML file defines; data paths are relative to the file."""
    try:
        spec = TaskFile.model_validate(_read(path))
    except ValidationError as error:
        raise TaskFileError(_describe(path, error)) from None
    files = {"train": path.parent / spec.train, "test": path.parent / spec.test if spec.test else None}
    for key, file in files.items():
        if file is not None and not file.is_file():
            raise TaskFileError(f"{path}: key '{key}': no such data file {file}")
    metric = METRICS[spec.metric]

    def validate_row(row: dict) -> None:
        for field in spec.input_fields:
            require_text(row, field)
        if metric.structured_reference:
            value = row.get(spec.output_field)
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise FieldError(
                    spec.output_field, "expected a JSON object of name -> text (metric entity_f1)"
                )
        else:
            require_text(row, spec.output_field)
        if spec.group_field is not None and spec.group_field not in row:
            raise FieldError(spec.group_field, "missing (named by group_field)")

    def format_target(example: dict) -> str:
        value = example[spec.output_field]
        if metric.structured_reference:
            # `datasets` gives every row every key of the column (None where absent).
            return json.dumps({key: text for key, text in value.items() if text}, ensure_ascii=False)
        return value

    def parse(generated: str):
        if metric.structured_reference:
            return parse_entities(generated) or {}
        text = generated.strip()
        return text.splitlines()[0].strip() if spec.single_line and text else text

    def score(generations: list[str], examples: list[dict]) -> dict[str, float]:
        references = [example[spec.output_field] for example in examples]
        if metric.structured_reference:
            references = [{key: text for key, text in value.items() if text} for value in references]
            return metric.score(generations, references)
        return metric.score([parse(text) for text in generations], references)

    first_line = spec.prompt.split("{", 1)[0].strip().splitlines()
    return Task(
        name=spec.name,
        train_file=files["train"],
        test_file=files["test"],
        instruction=spec.instruction or (first_line[0] if first_line else spec.name),
        inputs=tuple(spec.input_fields),
        validate_row=validate_row,
        format_prompt=lambda example: spec.prompt.format_map({f: example[f] for f in spec.input_fields}),
        format_target=format_target,
        parse=parse,
        score=score,
        primary_metric=metric.primary,
        table_metrics=metric.table,
        group_field=spec.group_field,
        max_new_tokens=spec.max_new_tokens,
        task_file=path,
    )
