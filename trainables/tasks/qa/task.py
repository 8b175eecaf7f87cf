"""QA in the four UnifiedQA formats: yes/no, multiple-choice, extractive and abstractive."""

from statistics import fmean

from trainables.tasks.data import FieldError, require_text
from trainables.tasks.metrics import ANSWER_METRICS, answer_scores, exact_match
from trainables.tasks.spec import Task, packaged_files

FORMATS = ("yes_no", "multiple_choice", "extractive", "abstractive")
NEEDS_CONTEXT = {"extractive", "abstractive"}
MAX_CHOICES = 8
INSTRUCTION = (
    "Answer the question about the paragraph. Answer yes or no to a yes/no question, repeat the "
    "right choice when choices are given, and otherwise answer in a few words."
)


def validate_row(row: dict) -> None:
    kind = require_text(row, "format")
    if kind not in FORMATS:
        raise FieldError("format", f"'{kind}' is not one of {', '.join(FORMATS)}")
    require_text(row, "question")
    answer = require_text(row, "answer")
    if kind in NEEDS_CONTEXT or row.get("context") is not None:
        context = require_text(row, "context")
        if kind == "extractive" and answer not in context:
            raise FieldError("answer", "an extractive answer must be a span of the context")
    if kind == "yes_no" and answer not in ("yes", "no"):
        raise FieldError("answer", f"'{answer}' is not yes or no")
    if kind == "multiple_choice":
        choices = row.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES:
            raise FieldError("choices", f"expected a list of 2 to {MAX_CHOICES} choices")
        if not all(isinstance(choice, str) and choice.strip() for choice in choices):
            raise FieldError("choices", "every choice must be non-empty text")
        if answer not in choices:
            raise FieldError("answer", f"'{answer}' is not one of the choices")


def format_prompt(example: dict) -> str:
    prompt = f"### Instruction:\n{INSTRUCTION}\n"
    if example.get("context"):
        prompt += f"### Paragraph:\n{example['context']}\n"
    prompt += f"### Question:\n{example['question']}\n"
    if example.get("choices"):
        labelled = (f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(example["choices"]))
        prompt += f"### Choices:\n{' '.join(labelled)}\n"
    return prompt + "### Answer:\n"


def format_target(example: dict) -> str:
    return example["answer"]


def parse_answer(generated: str) -> str:
    """The first line of a generation; later lines are the model rambling on."""
    lines = generated.strip().splitlines()
    return lines[0].strip() if lines else ""


def score(generations: list[str], examples: list[dict]) -> dict:
    answers = [parse_answer(text) for text in generations]
    scores = answer_scores(answers, [example["answer"] for example in examples])
    for kind in FORMATS:
        pairs = [(a, e["answer"]) for a, e in zip(answers, examples, strict=True) if e["format"] == kind]
        if pairs:
            scores[f"exact_match_{kind}"] = fmean(exact_match(answer, truth) for answer, truth in pairs)
    return scores


TASK = Task(
    name="qa",
    **packaged_files("qa"),
    instruction=INSTRUCTION,
    inputs=("question",),
    optional_inputs=("context", "choices"),
    validate_row=validate_row,
    format_prompt=format_prompt,
    format_target=format_target,
    parse=parse_answer,
    score=score,
    primary_metric="exact_match",
    table_metrics=ANSWER_METRICS,
    group_field="context",
)
