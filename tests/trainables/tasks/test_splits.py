"""The shipped splits are clean: fixed, disjoint by group, and the embedded model reads train only."""

import random

import pytest

from trainables.embedded import names
from trainables.tasks import TASKS, get_task
from trainables.tasks.data import group_key, held_out_groups

SPLITS = ("train", "validation", "test")
# What each shipped task's parser should give back for a gold row.
GOLD = {
    "qg": lambda row: row["queries"],
    "ner": lambda row: {name: value for name, value in row["entities"].items() if value},
    "qa": lambda row: row["answer"],
}


@pytest.fixture(scope="module")
def shipped_splits():
    return {name: task.splits() for name, task in TASKS.items()}


def _groups(task, split) -> set[str]:
    return {group_key(row, task.group_field) for row in split}


def test_every_shipped_task_has_a_gold_parser_case():
    assert set(GOLD) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_group_is_in_two_splits(name, shipped_splits):
    task, splits = TASKS[name], shipped_splits[name]
    groups = {split: _groups(task, splits[split]) for split in SPLITS}
    assert all(groups[split] for split in SPLITS)
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]


def test_qg_validation_and_test_topics_and_queries_are_unseen_in_train(shipped_splits):
    splits = shipped_splits["qg"]
    train_topics = {row["topic"] for row in splits["train"]}
    train_queries = {query for row in splits["train"] for query in row["queries"]}
    for split in ("validation", "test"):
        assert not {row["topic"] for row in splits[split]} & train_topics
        assert not {query for row in splits[split] for query in row["queries"]} & train_queries


def test_qa_holds_out_whole_paragraphs(shipped_splits):
    splits = shipped_splits["qa"]
    train_paragraphs = {row["context"] for row in splits["train"]}
    for split in ("validation", "test"):
        assert not {row["context"] for row in splits[split]} & train_paragraphs


@pytest.mark.parametrize("name", sorted(TASKS))
def test_validation_is_the_same_rows_on_every_load(name, shipped_splits):
    again = get_task(name).splits()["validation"]
    assert again["id"] == shipped_splits[name]["validation"]["id"]


def test_held_out_groups_ignore_row_order_and_duplicates():
    keys = [f"group-{i}" for i in range(40)] * 3
    shuffled = random.Random(1).sample(keys, len(keys))
    chosen = held_out_groups(keys, 0.1, salt="validation")
    assert chosen == held_out_groups(shuffled, 0.1, salt="validation")
    assert len(chosen) == 4
    assert chosen != held_out_groups(keys, 0.1, salt="test")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_targets_round_trip_through_the_parser(name, shipped_splits):
    task = TASKS[name]
    for split in SPLITS:
        for row in shipped_splits[name][split]:
            assert task.parse(task.format_target(row)) == GOLD[name](row), (split, row["id"])


def test_pretraining_reads_train_only(shipped_splits):
    corpus = set(names.row_documents())
    for name, task in TASKS.items():
        splits = shipped_splits[name]
        assert {names.row_document(task, row) for row in splits["train"]} <= corpus
        for split in ("validation", "test"):
            assert not {names.row_document(task, row) for row in splits[split]} & corpus, (name, split)
