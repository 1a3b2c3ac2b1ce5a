"""Token classification (named-entity recognition): IOB/BIOES/BILOU tags or character spans in, entities out."""

from tunesmith.tasks.token_classification.task import TokenClassification

__all__ = ["TokenClassification"]
