"""The shipped data sets are exactly what their generators write, and generators are deterministic."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.tasks import get_task

GENERATORS = {task: f"trainables.tasks.{task}.generate" for task in ("qg", "ner", "qa")}


def _generate(module: str, out_dir: Path, *options: str) -> Path:
    subprocess.run([sys.executable, "-m", module, str(out_dir), *options], check=True)
    return out_dir


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_shipped_files_are_exactly_what_the_generator_writes(task, tmp_path):
    written = _generate(GENERATORS[task], tmp_path)
    shipped = get_task(task).train_file.parent
    for split in ("train", "test"):
        assert filecmp.cmp(written / f"{split}.jsonl", shipped / f"{split}.jsonl", shallow=False)


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_generator_is_deterministic_for_a_seed(task, tmp_path):
    first = _generate(GENERATORS[task], tmp_path / "first", "--seed", "7")
    again = _generate(GENERATORS[task], tmp_path / "again", "--seed", "7")
    other = _generate(GENERATORS[task], tmp_path / "other", "--seed", "8")
    assert filecmp.cmp(first / "train.jsonl", again / "train.jsonl", shallow=False)
    assert not filecmp.cmp(first / "train.jsonl", other / "train.jsonl", shallow=False)
