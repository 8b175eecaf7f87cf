"""NER: OCR text of an identity document -> a JSON object of the (up to) 9 entities it carries."""

import json

from trainables.tasks.data import FieldError, require_text
from trainables.tasks.entities import entity_scores, parse_entities
from trainables.tasks.metrics import ENTITY_METRICS
from trainables.tasks.spec import Task, packaged_files

ENTITIES = (
    "GIVEN_NAME",
    "LAST_NAME",
    "NATIONALITY",
    "BIRTH_DATE",
    "BIRTH_PLACE",
    "EXPIRY_DATE",
    "DOCUMENT_TYPE",
    "DOCUMENT_NUMBER",
    "ISSUING_COUNTRY",
)
INSTRUCTION = (
    "Extract the entities from the OCR text of an identity document. Answer with one JSON object "
    f"whose keys are those of {', '.join(ENTITIES)} that the document carries."
)


def validate_row(row: dict) -> None:
    require_text(row, "text")
    entities = row.get("entities")
    if not isinstance(entities, dict):
        raise FieldError("entities", "expected a JSON object of entity name -> value")
    for name, value in entities.items():
        if name not in ENTITIES:
            raise FieldError(f"entities.{name}", f"unknown entity; known: {', '.join(ENTITIES)}")
        if not isinstance(value, str) or not value.strip():
            raise FieldError(f"entities.{name}", "empty or not text")


def format_prompt(example: dict) -> str:
    return f"### Instruction:\n{INSTRUCTION}\n### Document text:\n{example['text']}\n### Entities:\n"


def format_target(example: dict) -> str:
    entities = example["entities"]
    # `datasets` gives every row every entity key (None where absent); the target names only the present.
    return json.dumps({name: entities[name] for name in ENTITIES if entities.get(name)}, ensure_ascii=False)


def parse(generated: str) -> dict[str, str]:
    """The entity dict in a generation; an unparsable answer means no entities."""
    return parse_entities(generated) or {}


def score(generations: list[str], examples: list[dict]) -> dict:
    gold = [{name: value for name, value in example["entities"].items() if value} for example in examples]
    return entity_scores([parse_entities(text) for text in generations], gold, ENTITIES)


TASK = Task(
    name="ner",
    **packaged_files("ner"),
    instruction=INSTRUCTION,
    inputs=("text",),
    validate_row=validate_row,
    format_prompt=format_prompt,
    format_target=format_target,
    parse=parse,
    score=score,
    primary_metric="f1",
    table_metrics=ENTITY_METRICS,
    group_field="id",
)
