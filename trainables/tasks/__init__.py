"""TASKS registry: name -> Task. Adding a task is one module and one entry here."""

from trainables.tasks import qg
from trainables.tasks.spec import Task

TASKS: dict[str, Task] = {task.name: task for task in (qg.TASK,)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
