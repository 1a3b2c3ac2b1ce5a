"""Few-shot text classification, SetFit-style: contrastive tuning of the sentence encoder, then a
logistic-regression head on its embeddings.

The `setfit` library does the contrastive stage. Its pair generation enumerates every pair of the texts
it is given (`np.triu_indices(n)`: memory grows with n^2, the out-of-memory its users report on large
data), so the encoder is tuned on at most `BODY_TEXTS` texts, sampled evenly over the classes, and on at
most `fewshot_max_pairs` pairs: memory and time stay bounded whatever the data size. The head is then
fitted on the embeddings of *all* training texts, which is cheap.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from collections import defaultdict
from typing import Any

import numpy as np

from tunesmith.tasks.text_classification.embedding import EmbeddingHead, embed_texts, head_from_logistic

BODY_TEXTS = 2048  # n^2/2 pairs enumerated by setfit: ~2.1M index pairs, ~34 MB
DEFAULT_LEARNING_RATE = 2e-5  # setfit's default body learning rate


def body_sample(labels: list[Any], limit: int, seed: int) -> list[int]:
    """Indices of at most `limit` texts, as even over the classes as their sizes allow."""
    if len(labels) <= limit:
        return list(range(len(labels)))
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[tuple(label) if isinstance(label, list) else label].append(i)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[int] = []
    queues = sorted(by_class.values(), key=len)
    while len(chosen) < limit:  # round-robin: one text per class per round
        queues = [q for q in queues if q]
        for q in queues:
            if len(chosen) < limit:
                chosen.append(q.pop())
    return sorted(chosen)


def fit(
    base_model: str,
    tokenizer: Any,
    texts: list[str],
    labels: list[Any],
    n_classes: int,
    multi_label: bool,
    settings: Any,
    max_length: int,
    log: Any,
) -> tuple[EmbeddingHead, dict[str, Any]]:
    """Tune the encoder contrastively and fit the head; returns the model and what the run did."""
    import datasets
    import setfit
    from sklearn.linear_model import LogisticRegression

    from tunesmith.models import resolve_model

    logging.getLogger("setfit").setLevel(logging.WARNING)
    setfit.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    started = time.perf_counter()
    body = body_sample(labels, BODY_TEXTS, settings.seed)
    body_labels = [_multi_hot(labels[i], n_classes) if multi_label else labels[i] for i in body]
    iterations = settings.fewshot_iterations
    pairs = min(2 * iterations * len(body), settings.fewshot_max_pairs)
    steps = max(1, math.ceil(pairs / settings.batch_size))
    if settings.max_steps:  # the user's step limit bounds the contrastive steps as it bounds any other method's
        steps = min(steps, settings.max_steps)
        pairs = min(pairs, steps * settings.batch_size)
    log(f"Few-shot: contrastive tuning on {len(body)} texts, {pairs} pairs ({steps} steps); then a "
        f"logistic-regression head on all {len(texts)} training texts.")  # fmt: skip
    model = setfit.SetFitModel.from_pretrained(
        resolve_model(base_model), multi_target_strategy="one-vs-rest" if multi_label else None,
        trust_remote_code=settings.trust_remote_code,
    )  # fmt: skip
    from datasets import Dataset

    scratch = tempfile.mkdtemp(prefix="tunesmith-fewshot-")
    args = setfit.TrainingArguments(
        batch_size=settings.batch_size, num_epochs=1, num_iterations=iterations, max_steps=steps,
        body_learning_rate=settings.learning_rate or DEFAULT_LEARNING_RATE, seed=settings.seed,
        max_length=max_length, show_progress_bar=False, report_to="none",
        # setfit would otherwise checkpoint into ./checkpoints of whatever folder the user is in
        save_strategy="no", output_dir=str(scratch),
    )  # fmt: skip
    trainer = setfit.Trainer(
        model=model, args=args,
        train_dataset=Dataset.from_dict({"text": [texts[i] for i in body], "label": body_labels}),
    )  # fmt: skip
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.st_trainer.args.disable_tqdm = True  # sentence-transformers' own bars and printed logs
    trainer.st_trainer.remove_callback(PrinterCallback)
    trainer.st_trainer.remove_callback(ProgressCallback)
    if settings.max_minutes:
        from tunesmith.training import budget_callback

        trainer.st_trainer.add_callback(budget_callback(settings.max_minutes, checkpoint=False))
    try:  # the head is fitted below, on every training text
        trainer.train_embeddings([texts[i] for i in body], body_labels, args=args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    encoder, pooling, normalize = _encoder_of(model.model_body)
    dim = encoder.config.hidden_size
    probe = EmbeddingHead(encoder, torch_zeros(n_classes, dim), torch_zeros(n_classes), pooling, normalize)
    features = embed_texts(probe, tokenizer, texts, max_length)
    weight_balance = "balanced" if settings.class_weights else None
    if multi_label:
        targets = np.stack([_multi_hot(label, n_classes) for label in labels])
        rows = []
        for c in range(n_classes):
            column = targets[:, c]
            if column.min() == column.max():  # a label always on (or off): a constant, confident head row
                rows.append((np.zeros(dim), np.array([10.0 if column[0] else -10.0])))
                continue
            head = LogisticRegression(max_iter=2000, class_weight=weight_balance).fit(features, column)
            rows.append((head.coef_[0], head.intercept_))
        weight = torch_tensor(np.stack([w for w, _ in rows]))
        bias = torch_tensor(np.concatenate([b for _, b in rows]))
    else:
        head = LogisticRegression(max_iter=2000, class_weight=weight_balance).fit(features, np.asarray(labels))
        coef, intercept = _all_classes(head, n_classes)
        weight, bias = head_from_logistic(coef, intercept)
    model_out = EmbeddingHead(encoder, weight, bias, pooling, normalize)
    minutes = (time.perf_counter() - started) / 60
    steps_run = trainer.st_trainer.state.global_step  # fewer than `steps` when max_minutes stopped it
    return model_out, {"body_texts": len(body), "pairs": pairs, "steps": steps, "steps_run": steps_run,
                       "train_minutes": minutes}  # fmt: skip


def _all_classes(head: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients for every class, also those absent from the training texts (never predicted)."""
    if len(head.classes_) == n_classes:
        return head.coef_, head.intercept_
    coef = np.zeros((n_classes, head.coef_.shape[1]))
    intercept = np.full(n_classes, -1e4)
    if head.coef_.shape[0] == 1:  # two classes present: expand to their two softmax rows
        present = head.classes_
        coef[present[1]], intercept[present[1]] = head.coef_[0], head.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        coef[head.classes_], intercept[head.classes_] = head.coef_, head.intercept_
    return coef, intercept


def _multi_hot(label: Any, n_classes: int) -> list[int]:
    row = [0] * n_classes
    for i in label:
        row[i] = 1
    return row


def _encoder_of(body: Any) -> tuple[Any, str, bool]:
    """The transformers model inside a SentenceTransformer, its pooling, and whether it normalises."""
    modules = list(body)
    pooling = next((m for m in modules if type(m).__name__ == "Pooling"), None)
    mode = "mean" if pooling is None else getattr(pooling, "pooling_mode", None) or pooling.get_pooling_mode_str()
    if mode not in ("mean", "cls"):
        raise ValueError(f"Few-shot supports mean or CLS pooling; this encoder pools with {mode!r}.")
    normalize = any(type(m).__name__ == "Normalize" for m in modules)
    return modules[0].auto_model, mode, normalize


def torch_zeros(*shape: int) -> Any:
    import torch

    return torch.zeros(*shape)


def torch_tensor(array: np.ndarray) -> Any:
    import torch

    return torch.tensor(array, dtype=torch.float32)
