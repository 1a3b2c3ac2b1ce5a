"""Sentence similarity: embedding models for semantic search, trained, exported and served like every task."""

from tunesmith.tasks.sentence_similarity.task import SentenceSimilarity

__all__ = ["SentenceSimilarity"]
