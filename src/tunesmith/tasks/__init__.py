"""Tasks: one sibling package each, behind the contract in `tasks/base.py`, registered in `tasks/catalog.py`."""

from tunesmith.tasks.base import Predictor, Summary, Task, TrainResult
from tunesmith.tasks.catalog import TASKS, get_task

__all__ = ["TASKS", "Predictor", "Summary", "Task", "TrainResult", "get_task"]
