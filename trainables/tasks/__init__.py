"""TASKS registry: name -> Task. Adding a task is one module and one entry here.

A task can also be a user's YAML task file (see custom.py), named by its path.
"""

from pathlib import Path

from trainables.tasks.custom import is_task_file, load_task_file
from trainables.tasks.ner import preset as ner_preset
from trainables.tasks.ner import task as ner
from trainables.tasks.qa import preset as qa_preset
from trainables.tasks.qa import task as qa
from trainables.tasks.qg import preset as qg_preset
from trainables.tasks.qg import task as qg
from trainables.tasks.spec import Task

TASKS: dict[str, Task] = {task.name: task for task in (qg.TASK, ner.TASK, qa.TASK)}
# A shipped task's sweep defaults: only what differs from SweepSettings' own.
PRESETS: dict[str, dict] = {"qg": qg_preset.PRESET, "ner": ner_preset.PRESET, "qa": qa_preset.PRESET}


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
