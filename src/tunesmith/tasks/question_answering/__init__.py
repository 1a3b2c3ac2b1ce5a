"""Extractive question answering: the answer to a question as a span of its context."""

from tunesmith.tasks.question_answering.task import QuestionAnswering

__all__ = ["QuestionAnswering"]
