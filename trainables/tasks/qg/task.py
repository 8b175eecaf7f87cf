"""QG: conversation summary + latest user question -> 1 to 3 self-contained search queries."""

import re
from statistics import fmean

from trainables.tasks.bertscore import bertscore
from trainables.tasks.data import FieldError, require_text
from trainables.tasks.metrics import BERTSCORE_METRICS
from trainables.tasks.spec import PER_EXAMPLE, Task, packaged_files

MAX_QUERIES = 3
QUERY_SEPARATOR = " - "
QUERY_BOUNDARY = re.compile(r"(?<=\?)\s*-\s*")
SURPLUS_QUERY_PENALTY = 0.05
INSTRUCTION = (
    "Turn the user's latest question into one to three short search queries. "
    "Each query must make sense without the conversation and end with a question mark. "
    "Use one query unless the question asks about several things, and separate queries with ' - '."
)


def validate_row(row: dict) -> None:
    require_text(row, "history")
    require_text(row, "question")
    queries = row.get("queries")
    if queries is None:
        raise FieldError("queries", "missing")
    if not isinstance(queries, list) or not queries:
        raise FieldError("queries", "expected a non-empty list of questions")
    if len(queries) > MAX_QUERIES:
        raise FieldError("queries", f"{len(queries)} queries, at most {MAX_QUERIES} allowed")
    for position, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise FieldError(f"queries[{position}]", "empty or not text")
        if not query.rstrip().endswith("?"):
            raise FieldError(f"queries[{position}]", f"'{query}' does not end with '?'")


def format_prompt(example: dict) -> str:
    return (
        f"### Instruction:\n{INSTRUCTION}\n"
        f"### Conversation so far:\n{example['history']}\n"
        f"### Latest question:\n{example['question']}\n"
        "### Search queries:\n"
    )


def format_target(example: dict) -> str:
    return QUERY_SEPARATOR.join(example["queries"])


def parse_queries(generated: str) -> list[str]:
    """The queries on the first line of a generation; later lines are the model rambling on.

    Queries are split only where one ends: a " - " after a "?", so hyphenated words stay whole.
    """
    lines = generated.strip().splitlines()
    if not lines:
        return []
    return [query.strip() for query in QUERY_BOUNDARY.split(lines[0]) if query.strip()]


def is_valid_format(queries: list[str]) -> bool:
    return 1 <= len(queries) <= MAX_QUERIES and all(q.endswith("?") and len(q) > 1 for q in queries)


def penalised_f1(f1: float, generated_count: int, reference_count: int) -> float:
    """The reference study's penalty: 0.05 off F1 for every query beyond the reference's count."""
    return f1 - SURPLUS_QUERY_PENALTY * max(0, generated_count - reference_count)


def score(generations: list[str], examples: list[dict]) -> dict:
    predicted = [parse_queries(text) for text in generations]
    references = [example["queries"] for example in examples]
    precision, recall, f1 = bertscore(
        [QUERY_SEPARATOR.join(queries) for queries in predicted],
        [QUERY_SEPARATOR.join(queries) for queries in references],
    )
    penalised = [
        penalised_f1(value, len(pred), len(ref))
        for value, pred, ref in zip(f1, predicted, references, strict=True)
    ]
    return {
        "bertscore_precision": fmean(precision),
        "bertscore_recall": fmean(recall),
        "bertscore_f1": fmean(f1),
        "bertscore_f1_penalised": fmean(penalised),
        "mean_queries": fmean(len(queries) for queries in predicted),
        # What the penalty counts: queries beyond the reference's count, per example.
        "surplus_queries": fmean(
            max(0, len(pred) - len(ref)) for pred, ref in zip(predicted, references, strict=True)
        ),
        "format_valid_rate": fmean(is_valid_format(queries) for queries in predicted),
        PER_EXAMPLE: {"bertscore_f1_penalised": penalised},
    }


TASK = Task(
    name="qg",
    **packaged_files("qg"),
    instruction=INSTRUCTION,
    inputs=("history", "question"),
    validate_row=validate_row,
    format_prompt=format_prompt,
    format_target=format_target,
    parse=parse_queries,
    score=score,
    primary_metric="bertscore_f1_penalised",
    table_metrics=(*BERTSCORE_METRICS, "surplus_queries"),
    group_field="topic",
)
