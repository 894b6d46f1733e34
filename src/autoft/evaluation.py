"""Evaluating a classifier on splits: logits in a fixed order, projected onto each split's own
classes, then the split's metrics (and its official evaluator when it has one)."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from autoft.data.base import Split, project_logits
from autoft.data.loading import Normalizer
from autoft.metrics import METRICS


@torch.no_grad()
def predict(model, batches: Iterable, normalizer: Normalizer, device: torch.device) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) for uint8 image batches in the given order.

    Always in fp32, whatever precision training uses: CLIP logits are about 100 x cosine, and bf16
    rounds values near 100 to steps of 0.5 (near 30, of 0.125), which flips near-ties between
    classes and so moves every metric, the search's objective included."""
    model.eval()
    out = []
    for images, *_ in batches:
        logits, _ = model(normalizer(images))
        out.append(logits.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def batch_features(model, batches: Iterable, normalizer: Normalizer) -> list[torch.Tensor]:
    """The normalised image features of each batch (fp32, on the model's device), in `predict`'s
    batches: a linear head's logits follow from them (`linear_logits`) without another pass of the
    image tower."""
    model.eval()
    return [model(normalizer(images))[1].float() for images, *_ in batches]


@torch.no_grad()
def linear_logits(features: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits [N, C] (fp32, CPU) = features @ weight^T + bias, batch by batch as the classifier's head
    computes them inside `predict`: the same numbers for the same batches."""
    return torch.cat([F.linear(f, weight, bias).float().cpu() for f in features])


def tensor_batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield (images[start: start + batch_size],)


def split_metrics(logits: torch.Tensor, split: Split, indices: Optional[np.ndarray] = None) -> dict[str, float]:
    """Metrics of task logits on a split (or the subset `indices` of it, in that order)."""
    indices = np.arange(len(split)) if indices is None else np.asarray(indices)
    y_true = torch.as_tensor(split.labels[indices], dtype=torch.long)
    y_pred = project_logits(logits, split.class_map).argmax(dim=1)
    groups = torch.as_tensor(split.groups[indices], dtype=torch.long) if split.groups is not None else None
    out = {"accuracy": METRICS["accuracy"](y_pred, y_true), "macro_f1": METRICS["macro_f1"](y_pred, y_true)}
    if groups is not None:
        out["worst_group_accuracy"] = METRICS["worst_group_accuracy"](y_pred, y_true, groups)
    if split.evaluator is not None:
        out.update({k: float(v) for k, v in split.evaluator(y_pred, y_true, indices).items()})
    return out
