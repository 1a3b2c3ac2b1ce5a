"""Text classification: binary, multi-class and multi-label; fine-tuned, few-shot or zero-shot."""

from tunesmith.tasks.text_classification.task import TextClassification

__all__ = ["TextClassification"]
