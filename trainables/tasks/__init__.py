"""TASKS registry: name -> Task. Adding a task is one module and one entry here.

A task can also be a user's YAML task file (see custom.py), named by its path.
"""

from pathlib import Path

from trainables.tasks import ner, qa, qg
from trainables.tasks.custom import is_task_file, load_task_file
from trainables.tasks.spec import Task

TASKS: dict[str, Task] = {task.name: task for task in (qg.TASK, ner.TASK, qa.TASK)}


def canonical_task(task: str) -> str:
    """How trials name the task: a registered name, or a task file's absolute path (trials run elsewhere)."""
    if is_task_file(task):
        path = Path(task).expanduser().resolve()
        load_task_file(path)
        return str(path)
    if task not in TASKS:
        raise KeyError(f"unknown task '{task}'; known tasks: {', '.join(sorted(TASKS))}, or a YAML task file")
    return task


def get_task(task: str) -> Task:
    canonical = canonical_task(task)
    return load_task_file(Path(canonical)) if is_task_file(canonical) else TASKS[canonical]


def generation_budget(task: str, tokenizer) -> int:
    """A task's generation budget with this tokenizer, measured on its whole train split as trials do."""
    spec = get_task(task)
    return spec.generation_budget(tokenizer, spec.splits()["train"])
