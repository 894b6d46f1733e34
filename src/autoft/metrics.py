"""Classification metrics on predicted and true labels (1-D integer tensors).

Definitions follow the WILDS evaluators so that our objective equals the leaderboard number:
macro-F1 averages F1 over the classes present in y_true (sklearn's f1_score with
labels=unique(y_true), as wilds' F1 metric does); worst-group accuracy is the minimum accuracy over
the groups that have at least one example.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from autoft.names import METRIC_NAMES


def accuracy(y_pred: torch.Tensor, y_true: torch.Tensor, groups: Optional[torch.Tensor] = None) -> float:
    if len(y_true) == 0:
        raise ValueError("accuracy of an empty set")
    return (y_pred == y_true).float().mean().item()


def macro_f1(y_pred: torch.Tensor, y_true: torch.Tensor, groups: Optional[torch.Tensor] = None) -> float:
    classes = torch.unique(y_true)
    n = int(max(y_pred.max().item(), y_true.max().item())) + 1
    tp = torch.bincount(y_true[y_pred == y_true], minlength=n).double()
    pred_count = torch.bincount(y_pred, minlength=n).double()
    true_count = torch.bincount(y_true, minlength=n).double()
    denom = pred_count + true_count
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#pred + #true); 0 where the class never appears
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))
    return f1[classes].mean().item()


def worst_group_accuracy(y_pred: torch.Tensor, y_true: torch.Tensor, groups: Optional[torch.Tensor] = None) -> float:
    if groups is None:
        raise ValueError("worst-group accuracy needs a group id per example")
    correct = (y_pred == y_true).double()
    n_groups = int(groups.max().item()) + 1
    hits = torch.zeros(n_groups, dtype=torch.double).index_add_(0, groups, correct)
    counts = torch.bincount(groups, minlength=n_groups).double()
    present = counts > 0
    return (hits[present] / counts[present]).min().item()


# by name (autoft.names.METRIC_NAMES, in its order)
METRICS: dict[str, Callable[..., float]] = dict(zip(METRIC_NAMES, (accuracy, macro_f1, worst_group_accuracy),
                                                    strict=True))
# metrics a split can compute only when it carries a group id per example (Split.groups)
NEEDS_GROUPS = ("worst_group_accuracy",)


def bootstrap_interval(metric: str, y_preds: list[torch.Tensor], y_true: torch.Tensor,
                       groups: Optional[torch.Tensor] = None, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric over the evaluation examples.

    `y_preds` holds one prediction vector per seed of the same trial; each resample draws example
    indices with replacement once and scores every seed's predictions on them, so the interval is
    for the seed-averaged objective the search actually uses. Resamples that lose a whole group are
    still scored on the groups present (as the metric itself does)."""
    fn = METRICS[metric]
    n = len(y_true)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=g)
    if metric == "accuracy":  # vectorised: the mean of a 0/1 vector under resampling
        correct = torch.stack([(p == y_true).double() for p in y_preds]).mean(0)
        stats = correct[idx].mean(dim=1)
    else:
        stats = torch.tensor([
            sum(fn(p[i], y_true[i], None if groups is None else groups[i]) for p in y_preds) / len(y_preds)
            for i in idx])
    lo, hi = torch.quantile(stats.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double))
    return lo.item(), hi.item()
