"""tunesmith: from a file of labeled examples to a fine-tuned, evaluated, registered transformer model."""

from tunesmith.api import evaluate, export_model, index, inspect_data, load_model, retrain, search, suggest, train, tune
from tunesmith.config import DataConfig, RunConfig, TrainConfig, load_config
from tunesmith.errors import ConfigError, DataError, ModelError, RegistryError, TunesmithError
from tunesmith.registry import ModelVersion, Registry
from tunesmith.tasks.text_classification.predictor import BaseClassifier, OnnxClassifier, Prediction, TextClassifier

__version__ = "0.1.0"

__all__ = [
    "BaseClassifier",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ModelError",
    "ModelVersion",
    "OnnxClassifier",
    "Prediction",
    "Registry",
    "RegistryError",
    "RunConfig",
    "TextClassifier",
    "TrainConfig",
    "TunesmithError",
    "evaluate",
    "export_model",
    "index",
    "inspect_data",
    "load_config",
    "load_model",
    "retrain",
    "search",
    "suggest",
    "train",
    "tune",
]
