"""The metric registry: shipped tasks score with these, and user-defined tasks name one of them."""

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean

from trainables.tasks.bertscore import bertscore
from trainables.tasks.entities import entity_scores, parse_entities
from trainables.tasks.spec import PER_EXAMPLE

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(ARTICLES.sub(" ", text.casefold().translate(PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def jaccard(prediction: str, reference: str) -> float:
    """The QA study's Jaccard similarity: common tokens over the token count of the longer answer,
    counted with multiplicity, so that repeating a right word ("no no no" against "no") is not a
    perfect answer."""
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not predicted and not expected:
        return 1.0
    common = sum((Counter(predicted) & Counter(expected)).values())
    return common / max(len(predicted), len(expected))


def means_and_values(per_example: dict[str, list[float]]) -> dict:
    """Each metric's mean (0 with no examples), with its per-example values under PER_EXAMPLE."""
    return {name: fmean(values) if values else 0.0 for name, values in per_example.items()} | {
        PER_EXAMPLE: per_example
    }


def answer_scores(predictions: list[str], references: list[str]) -> dict:
    pairs = list(zip(predictions, references, strict=True))
    return means_and_values(
        {"exact_match": [exact_match(p, r) for p, r in pairs], "jaccard": [jaccard(p, r) for p, r in pairs]}
    )


def bertscore_scores(predictions: list[str], references: list[str]) -> dict:
    precision, recall, f1 = bertscore(predictions, references)
    return means_and_values(
        {"bertscore_precision": precision, "bertscore_recall": recall, "bertscore_f1": f1}
    )


def entity_f1_scores(predictions: list[str], references: list[dict]) -> dict:
    """Slot metrics over every entity name that any reference carries."""
    entities = sorted({name for reference in references for name in reference})
    return entity_scores([parse_entities(text) for text in predictions], references, entities)


ANSWER_METRICS = ("exact_match", "jaccard")
BERTSCORE_METRICS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
# The reference study's slot metrics, and the entities a model invented (false positives).
ENTITY_METRICS = ("accuracy", "precision", "recall", "f1", "document_accuracy", "invented_entities")


@dataclass(frozen=True)
class Metric:
    score: Callable[[list[str], list], dict]  # a Task.score: metrics and PER_EXAMPLE values
    primary: str
    table: tuple[str, ...]  # what a table of methods shows of it (Task.table_metrics)
    structured_reference: bool = False  # the reference is a JSON object, not text


METRICS: dict[str, Metric] = {
    "exact_match": Metric(answer_scores, "exact_match", ANSWER_METRICS),
    "jaccard": Metric(answer_scores, "jaccard", ANSWER_METRICS),
    "bertscore": Metric(bertscore_scores, "bertscore_f1", BERTSCORE_METRICS),
    "entity_f1": Metric(entity_f1_scores, "f1", ENTITY_METRICS, structured_reference=True),
}
