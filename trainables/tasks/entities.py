"""Entity dictionaries: parsing a model's answer and scoring it slot by slot.

Shared by the NER task and by the `entity_f1` metric of user-defined tasks.
"""

import ast
import json
from collections.abc import Sequence
from statistics import fmean


def parse_entities(generated: str) -> dict[str, str] | None:
    """The first JSON object or Python-style dict in a generation; None when there is none.

    Surrounding text is tolerated. Each closing brace is tried in turn, so a dict followed by
    more braces (the model rambling on) still parses.
    """
    start = generated.find("{")
    while start != -1:
        end = generated.find("}", start)
        while end != -1:
            candidate = generated[start : end + 1]
            parsed = _as_dict(candidate)
            if parsed is not None:
                return parsed
            end = generated.find("}", end + 1)
        start = generated.find("{", start + 1)
    return None


def _as_dict(candidate: str) -> dict[str, str] | None:
    for reader in (json.loads, ast.literal_eval):
        try:
            value = reader(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return {str(key): "" if item is None else str(item) for key, item in value.items()}
    return None


def _normalised(value: str | None) -> str:
    return (value or "").strip().casefold()


def entity_scores(
    predicted: Sequence[dict[str, str] | None], gold: Sequence[dict[str, str]], entities: Sequence[str]
) -> dict[str, float]:
    """The reference study's slot metrics over every (document, entity) pair.

    A slot is a true positive when both sides carry the entity with the same value (after trimming
    and case-folding), a true negative when neither does. Accuracy is (TP + TN) over all slots;
    precision is TP over the slots the model filled, recall TP over the slots the gold fills;
    document accuracy is the share of documents whose every slot is right. An unparsable answer
    (None) fills no slot.
    """
    true_positive = true_negative = filled = expected = documents_right = 0
    right_per_entity = dict.fromkeys(entities, 0)
    for answer, reference in zip(predicted, gold, strict=True):
        answer = {key: value for key, value in (answer or {}).items() if _normalised(value)}
        all_right = True
        for entity in entities:
            guess, truth = _normalised(answer.get(entity)), _normalised(reference.get(entity))
            filled += bool(guess)
            expected += bool(truth)
            right = guess == truth
            true_positive += right and bool(truth)
            true_negative += right and not truth
            right_per_entity[entity] += right
            all_right &= right
        documents_right += all_right
    documents = len(gold)
    precision = true_positive / filled if filled else 0.0
    recall = true_positive / expected if expected else 0.0
    return {
        "accuracy": (true_positive + true_negative) / (documents * len(entities)) if documents else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "document_accuracy": documents_right / documents if documents else 0.0,
        "format_valid_rate": fmean(answer is not None for answer in predicted) if predicted else 0.0,
        **{
            f"accuracy_{entity}": right / documents if documents else 0.0
            for entity, right in right_per_entity.items()
        },
    }
