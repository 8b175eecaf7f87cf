"""Entity dictionaries: parsing a model's answer and scoring it slot by slot.

Shared by the NER task and by the `entity_f1` metric of user-defined tasks.
"""

import ast
import json
from collections.abc import Sequence
from statistics import fmean

from trainables.tasks.spec import PER_EXAMPLE


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


def f1_contributions(true_positives: list[int], filled: list[int], expected: list[int]) -> list[float]:
    """One value per document whose mean is exactly the micro F1 over all slots, for bootstrapping it.

    Micro F1 = 2·ΣTP / (Σfilled + Σexpected) is a ratio of sums, so a document's own F1 would not
    average to it. Its linearisation (the ratio's influence function) does:
    F1 + (2·TP_d - F1·(filled_d + expected_d)) / mean(filled + expected). A bootstrap of the mean of
    these values has the ratio's first-order (delta-method) variance, as a bootstrap of the ratio
    itself would. A single value may fall outside [0, 1]; only their mean is a score.
    """
    slots = [f + e for f, e in zip(filled, expected, strict=True)]
    mean_slots = sum(slots) / len(slots) if slots else 0.0
    if not mean_slots:
        return [0.0] * len(slots)
    f1 = 2 * sum(true_positives) / sum(slots)
    return [f1 + (2 * tp - f1 * n) / mean_slots for tp, n in zip(true_positives, slots, strict=True)]


def entity_scores(
    predicted: Sequence[dict[str, str] | None], gold: Sequence[dict[str, str]], entities: Sequence[str]
) -> dict:
    """The reference study's slot metrics over every (document, entity) pair.

    A slot is a true positive when both sides carry the entity with the same value (after trimming
    and case-folding), a true negative when neither does. Accuracy is (TP + TN) over all slots;
    precision is TP over the slots the model filled, recall TP over the slots the gold fills;
    document accuracy is the share of documents whose every slot is right and that invent no
    entity. A filled key that is
    none of the entities (an untouched model's `date_of_issue`) is a slot the model filled wrongly:
    a false positive in precision, counted as invented_entities. An unparsable answer (None) fills
    no slot. Per example (PER_EXAMPLE): F1's per-document contributions and the document's slot
    accuracy.
    """
    true_negative = documents_right = invented = 0
    right_per_entity = dict.fromkeys(entities, 0)
    true_positives, filled, expected, slot_accuracy = [], [], [], []  # one entry per document
    known = set(entities)
    for answer, reference in zip(predicted, gold, strict=True):
        answer = {key: value for key, value in (answer or {}).items() if _normalised(value)}
        document_invented = len(answer.keys() - known)
        invented += document_invented
        document_true_positive = document_right = 0
        document_filled, document_expected = document_invented, 0
        for entity in entities:
            guess, truth = _normalised(answer.get(entity)), _normalised(reference.get(entity))
            document_filled += bool(guess)
            document_expected += bool(truth)
            right = guess == truth
            document_true_positive += right and bool(truth)
            true_negative += right and not truth
            right_per_entity[entity] += right
            document_right += right
        true_positives.append(document_true_positive)
        filled.append(document_filled)
        expected.append(document_expected)
        slot_accuracy.append(document_right / len(entities) if entities else 0.0)
        documents_right += document_right == len(entities) and not document_invented
    true_positive = sum(true_positives)
    documents = len(gold)
    precision = true_positive / sum(filled) if sum(filled) else 0.0
    recall = true_positive / sum(expected) if sum(expected) else 0.0
    return {
        "accuracy": (true_positive + true_negative) / (documents * len(entities)) if documents else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "document_accuracy": documents_right / documents if documents else 0.0,
        "format_valid_rate": fmean(answer is not None for answer in predicted) if predicted else 0.0,
        "invented_entities": invented,
        **{
            f"accuracy_{entity}": right / documents if documents else 0.0
            for entity, right in right_per_entity.items()
        },
        PER_EXAMPLE: {
            "f1": f1_contributions(true_positives, filled, expected),
            "accuracy": slot_accuracy,
        },
    }
