"""Writes the shipped QG data set from the hand-written topics in topics.py.

python -m trainables.tasks.qg.generate [OUT_DIR] [--seed N]

Deterministic: the same topics and seed give byte-identical files (a test checks the shipped
files against this script). Each topic yields single-aspect questions (one query), questions
about two or three aspects at once (split into two or three queries) and comparisons of two
entities (one query per entity). Questions lean on the history through pronouns. A quarter of
the topics go to test whole, so test topics and entities never appear in train.
"""

import itertools
import random
from pathlib import Path

from trainables.tasks.data import generator_cli
from trainables.tasks.data import write_splits as write_jsonl_splits
from trainables.tasks.qg.topics import TOPICS

SEED = 20261123
TEST_SHARE = 0.25
PER_TOPIC = {"single": 10, "pair": 8, "triple": 3, "compare": 3}
LEAD_INS = ["", "Thanks. ", "Okay, ", "One more thing: ", "Also, "]
PAIR_TEMPLATES = ["What about the {a} and the {b} {ref}?", "Could you also check the {a} and the {b} {ref}?"]
TRIPLE_TEMPLATES = [
    "Can you find the {a}, the {b} and the {c} {ref}?",
    "What do you know about the {a}, {b} and {c} {ref}?",
]
COMPARE_TEMPLATES = ["How do the two compare on {a}?", "Which of them is better when it comes to {a}?"]
COMPARE_SUMMARY = "The user is choosing between {e1} and {e2} for {phrase}."
DEFAULT_OUT = Path(__file__).resolve().parent / "data"


def _with_lead_in(lead_in: str, question: str) -> str:
    if not lead_in or lead_in.endswith(". "):
        return lead_in + question
    return lead_in + question[0].lower() + question[1:]


def _candidates(topic: dict) -> dict[str, list[tuple[str, list[int]]]]:
    """Question text and the aspect indices it asks about, per kind of example."""
    aspects = topic["aspects"]
    nouns = [noun for _, noun, _ in aspects]
    ref = topic["ref"]
    return {
        "single": [
            (_with_lead_in(lead, ask), [i]) for i, (ask, _, _) in enumerate(aspects) for lead in LEAD_INS
        ],
        "pair": [
            (t.format(a=nouns[i], b=nouns[j], ref=ref), [i, j])
            for i, j in itertools.combinations(range(len(aspects)), 2)
            for t in PAIR_TEMPLATES
        ],
        "triple": [
            (t.format(a=nouns[i], b=nouns[j], c=nouns[k], ref=ref), [i, j, k])
            for i, j, k in itertools.combinations(range(len(aspects)), 3)
            for t in TRIPLE_TEMPLATES
        ],
        "compare": [(t.format(a=noun), [i]) for i, noun in enumerate(nouns) for t in COMPARE_TEMPLATES],
    }


def _example(topic: dict, kind: str, question: str, aspect_ids: list[int], rng: random.Random) -> dict:
    templates = [topic["aspects"][i][2] for i in aspect_ids]
    if kind == "compare":
        first, second = rng.sample(topic["entities"], 2)
        history = COMPARE_SUMMARY.format(e1=first, e2=second, phrase=topic["phrase"])
        queries = [templates[0].format(e=first), templates[0].format(e=second)]
    else:
        entity = rng.choice(topic["entities"])
        history = rng.choice(topic["summaries"]).format(e=entity)
        queries = [t.format(e=entity) for t in templates]
    queries = [q[0].upper() + q[1:] for q in queries]
    return {"topic": topic["name"], "history": history, "question": question, "queries": queries}


def build_examples(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    seen_questions: set[str] = set()
    examples = []
    for topic in TOPICS:
        for kind, candidates in _candidates(topic).items():
            rng.shuffle(candidates)
            fresh = [c for c in candidates if c[0] not in seen_questions][: PER_TOPIC[kind]]
            for question, aspect_ids in fresh:
                seen_questions.add(question)
                examples.append(_example(topic, kind, question, aspect_ids, rng))
    rng.shuffle(examples)
    for number, example in enumerate(examples):
        example["id"] = f"qg-{number:04d}"
    return examples


def split_by_topic(examples: list[dict], seed: int = SEED) -> dict[str, list[dict]]:
    """A quarter of the topics, and so their entities, appear only in test."""
    names = [topic["name"] for topic in TOPICS]
    test_topics = set(random.Random(seed).sample(names, round(len(names) * TEST_SHARE)))
    return {
        "test": [example for example in examples if example["topic"] in test_topics],
        "train": [example for example in examples if example["topic"] not in test_topics],
    }


def write_splits(out_dir: Path, seed: int = SEED) -> None:
    write_jsonl_splits(out_dir, split_by_topic(build_examples(seed), seed))


if __name__ == "__main__":
    cli = generator_cli(__doc__, DEFAULT_OUT, SEED)
    args = cli.parse_args()
    write_splits(args.out_dir, args.seed)
