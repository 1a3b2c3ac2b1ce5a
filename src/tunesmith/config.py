"""Settings of a run as pydantic models: one home for each default and its reason.

Settings come from three layers, later ones winning: the defaults below, an optional YAML file,
and command-line overrides (`--set train.learning_rate=5e-5`, or the CLI's named flags). The fully
resolved `RunConfig` is saved inside every model artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.errors import ConfigError
from tunesmith.paths import check_name

DEFAULT_MODEL = "embedded:all-MiniLM-L6-v2"

TRIALS = 20  # trials a search finishes by default: `tune` in the CLI and the Python API


class _Settings(BaseModel):
    # Unknown keys are typos, not extensions: reject them with the list of valid ones.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Settings):
    train: str | None = Field(None, description="Training file (CSV, TSV, JSONL, JSON or Parquet).")
    validation: str | None = Field(None, description="Optional validation file; otherwise split from train.")
    test: str | None = Field(None, description="Optional test file; otherwise split from train.")
    text_column: str | None = Field(
        None, description="Column holding the text, or several separated by commas (read as one text, joined by "
        "' | '); detected when not given (paired columns such as sentence1/sentence2 are read together)."
    )
    label_column: str | None = Field(None, description="Column holding the label(s); detected when not given.")
    multi_label: bool | None = Field(
        None, description="Several labels per row. Detected from list values or a delimiter when not given."
    )
    label_delimiter: str | None = Field(
        None, description="Separator of labels in one cell for multi-label data, e.g. ',' or ';'."
    )
    score_range: tuple[float, float] | None = Field(
        None, description="sentence-similarity scored pairs: the scale of the score column, e.g. [0, 5] as STS-B; "
        "a score outside it is an error. None: [0, 1], or [0, 5] when a score is above 1."
    )
    validation_size: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.1, description="Share of the data held out for validation when no validation file is given."
    )
    test_size: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.1, description="Share of the data held out for testing when no test file is given."
    )
    train_on_small_validation: bool = Field(
        True,
        description="single-label text-classification: when the validation split is cut from the training file and "
        "has fewer than 50 rows (too few to stop on or to choose a checkpoint by), train on those rows too; the test split "
        "still measures the model. `tune` turns it off: its trials are compared on validation.",
    )
    drop_duplicates: bool = Field(
        True, description="Drop exact duplicate (text, label) rows before splitting, so none leak across splits."
    )
    overlength: Literal["truncate", "drop"] = Field(
        "truncate",
        description="text-generation: conversations longer than max_length are cut at it (truncate) or left out "
        "(drop); a conversation whose answer would be cut away entirely is always left out.",
    )
    inspect: bool = Field(
        True,
        description="Before training, run `tunesmith inspect`'s quick checks (near-duplicates, leaks between the "
        "given files, junk rows, personal data; seconds) and print what they find.",
    )


class TrainConfig(_Settings):
    base_model: str = Field(
        DEFAULT_MODEL,
        description="'embedded:all-MiniLM-L6-v2' (offline default, English), 'embedded:multilingual-e5-small' "
        "(offline, ~100 languages; chosen by itself when this is left unset and most of the training text's letters "
        "are not Latin), a local Hugging Face folder, or a hub id.",
    )
    epochs: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Passes over the training data. None: 8, raised on small data so that training makes at "
        "least 300 optimisation steps; for text classification with 500+ training examples a class (and no "
        "batch size set), 3 epochs of 32. Early stopping or a time budget may end it sooner.",
    )
    method: Literal["full", "lora", "adalora", "ia3", "frozen", "fewshot", "baseline", "prefix"] = Field(
        "full",
        description="What trains: 'full' (every weight), 'lora' / 'adalora' / 'ia3' (peft adapters + the head; "
        "the artifact stores only the adapter), 'frozen' (only the head), 'fewshot' (SetFit-style contrastive "
        "tuning + a logistic-regression head, for a few examples per class; text classification only), "
        "'baseline' (the TF-IDF + logistic regression model alone, registered and served like any other; text "
        "classification only). Text classification with at most 16 training examples a class (on average) and no "
        "method set trains 'fewshot', measured the most accurate there. See docs/methods.md.",
    )
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="Peak AdamW learning rate. None: 1e-4 for full fine-tuning (MiniLM-sized encoders want more "
        "than BERT-base's usual 2e-5), 1e-3 for lora/adalora, 3e-3 for ia3/frozen, 2e-5 for fewshot.",
    )
    lora_r: Annotated[int, Field(ge=1)] = Field(8, description="LoRA rank (AdaLoRA: the target average rank).")
    lora_alpha: Annotated[int, Field(ge=1)] = Field(16, description="LoRA scaling: updates are scaled by alpha/r.")
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.1, description="Dropout on the LoRA path.")
    fewshot_iterations: Annotated[int, Field(ge=1)] = Field(
        20, description="Few-shot: positive and negative pairs drawn per training text (SetFit's num_iterations)."
    )
    fewshot_max_pairs: Annotated[int, Field(ge=2)] = Field(
        10_000,
        description="Few-shot: at most this many pairs in the contrastive stage, whatever the data size (time "
        "and memory stay bounded; the head is still fitted on every training text).",
    )
    target_modules: list[str] | None = Field(
        None,
        description="Layers the adapter is put on, by name (e.g. ['query', 'value']). None: peft's default for "
        "the architecture (BERT: query and value; IA3 also the feed-forward output).",
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(
        16,
        description="Training texts per optimisation step. 16 beat 32 on Banking77 (0.920 vs 0.907 test "
        "accuracy at 5 epochs): more, smaller steps suit small encoders and small datasets.",
    )
    eval_batch_size: Annotated[int, Field(ge=1)] = Field(64, description="Texts per forward pass when evaluating.")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="Share of the optimisation steps spent ramping the learning rate up linearly."
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.01, description="AdamW weight decay.")
    max_length: Annotated[int, Field(ge=8)] | None = Field(
        None,
        description="Token limit per text. None: the longest training text, capped at the model's limit. "
        "Batches are padded only to their own longest text, so a generous limit costs little.",
    )
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        3,
        description="Evaluations without improvement of the validation metric before stopping; 0 turns it off. "
        "Off by itself when the validation split has fewer than 50 rows (it would stop on noise).",
    )
    evaluations: Annotated[int, Field(ge=1)] = Field(
        10,
        description="Evaluations (and checkpoints) per run, spread evenly over the planned steps, whatever "
        "ends the run: the epochs, max_steps or max_minutes. The best one is kept.",
    )
    eval_sample: Annotated[int, Field(ge=10)] = Field(
        2000,
        description="Validation rows scored at each evaluation during training (a seeded sample when the split is "
        "larger); the final model is scored on the whole split.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="'auto' trains with bf16 autocast where the CPU or GPU supports it (about 2x faster on "
        "AVX512-BF16 CPUs at the same accuracy), fp32 otherwise.",
    )
    group_by_length: bool = Field(
        True, description="Batch texts of similar length together so little time goes to padding."
    )
    freeze_embeddings: bool | None = Field(
        None,
        description="Keep the word-embedding matrix fixed during full fine-tuning: its gradient and optimizer "
        "update cover every vocabulary row at each step, most of a small encoder's per-step cost on short texts. "
        "None: the task's default, frozen for text classification (1.15-1.18x faster steps on short texts, equal "
        "or better accuracy: docs/planning.md), trained for the other tasks.",
    )
    attention_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="Dropout on the attention probabilities while training (BERT-style encoders come with 0.1). 0 "
        "by default: PyTorch's fused attention kernel takes no dropout on a CPU, and with it a step falls back to a "
        "slower path (1.88x slower at 384 tokens, as in QA; 1.28x at 128; no change at 16-64) for no measured "
        "accuracy gain: docs/planning.md. The other dropouts stay as the model has them; --method fewshot (SetFit "
        "loads the model itself, on short texts where it makes no difference) keeps the model's.",
    )
    class_weights: bool = Field(False, description="Weigh the loss by inverse class frequency, for imbalanced data.")
    classifier_pooling: Literal["auto", "mean", "cls", "pooler"] = Field(
        "auto",
        description="What a text classifier's linear head reads (full and frozen fine-tuning): 'cls' (the first "
        "token's vector), 'mean' (the mean of the token vectors), 'pooler' (the architecture's own head: for BERT, "
        "[CLS] through its pooler layer). 'auto': for a sentence-transformers model (the embedded default), 'cls' "
        "on multi-label data (GoEmotions in 15 minutes: macro-F1 0.439 against 0.383) and its own pooling with "
        "--method frozen; otherwise the architecture's own head. docs/planning.md has the measurements.",
    )
    max_steps: Annotated[int, Field(ge=1)] | None = Field(None, description="Stop after this many steps.")
    max_minutes: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Training time budget. The steps that fit are planned from the measured speed, and warmup, "
        "decay and evaluations are laid over them; the best checkpoint is kept.",
    )
    seed: int = Field(42, description="Seed of weight initialisation, shuffling and dropout.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a hub model. Off: only enable it for models you trust."
    )


class RunConfig(_Settings):
    name: str | None = Field(None, description="Registry name of the model; defaults to the data file's stem.")
    task: str = Field(
        "text-classification",
        description="What the model learns: text-classification, token-classification (named entities), "
        "question-answering (extractive), or text-generation (instruction tuning of a causal LM).",
    )
    seed: int = Field(42, description="Seed of the data split.")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    lineage: dict[str, Any] | None = Field(
        None,
        description="Set by `tunesmith retrain`: the version retrained from, the strategy, and the rows and files mixed "
        "(with fingerprints); kept in tunesmith.json and shown by `tunesmith models show`.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        # Checked where it enters (YAML, --set, the Python API): the name becomes `runs/NAME/` and `models/NAME/`.
        return None if name is None else check_name(name, "model name")


def _parse_scalar(text: str) -> Any:
    """Numbers, booleans and null as YAML reads them ("3e-5", "true", "null"); anything else stays a string,
    so a value such as "|" or "a: b" is not taken for YAML syntax."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool | int | float) or (value is None and text.strip().lower() in ("null", "~", "none")):
        return value
    return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides such as ``train.learning_rate=5e-5`` to a nested dict."""
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for key, value in items:
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Cannot set {key!r}: {part!r} is a value, not a section.")
        node[leaf] = value
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """Split 'section.key=value' into its dotted key and its value."""
    if "=" not in item:
        raise ConfigError(f"Override {item!r} is not of the form section.key=value, e.g. train.epochs=3.")
    key, _, value = item.partition("=")
    return key.strip(), _parse_scalar(value.strip())


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Build a `RunConfig` from defaults, an optional YAML file and dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping, found {type(loaded).__name__}.")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None


def _describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _section_of(err["loc"][:-1])
            valid = ", ".join(sorted(section.model_fields)) if section else ""
            lines.append(f"Unknown setting {where!r}. Valid settings here: {valid}.")
        else:
            lines.append(f"Setting {where!r}: {err['msg']} (got {err.get('input')!r}).")
    return " ".join(lines)


def _section_of(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def dump_config(config: RunConfig) -> str:
    """The resolved settings as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
