"""The registered tasks, by their Hugging Face pipeline names. Adding a task is one line here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from tunesmith.errors import ConfigError
from tunesmith.tasks.base import Task
from tunesmith.tasks.question_answering import QuestionAnswering
from tunesmith.tasks.sentence_similarity import SentenceSimilarity
from tunesmith.tasks.text_classification import TextClassification
from tunesmith.tasks.text_generation import TextGeneration
from tunesmith.tasks.token_classification import TokenClassification


class Tasks(Mapping[str, Task]):
    """Tasks by name; an unknown name is a `ConfigError` that lists the available ones."""

    def __init__(self, *tasks: Task) -> None:
        self._tasks = {task.name: task for task in tasks}

    def __getitem__(self, name: str) -> Task:
        if name not in self._tasks:
            raise ConfigError(f"Unknown task {name!r}. Available tasks: {', '.join(self._tasks)}.")
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


TASKS = Tasks(TextClassification(), TokenClassification(), QuestionAnswering(), TextGeneration(), SentenceSimilarity())


def get_task(name: str) -> Task:
    """The task called `name`."""
    return TASKS[name]
