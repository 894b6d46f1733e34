"""The task structure every dataset family builds: named splits plus class names and prompts.

A `Task` is plain data (no Hydra). Labels of a split live in the split's own label space; a split
whose classes are a subset or a regrouping of the task's classes (ImageNet-R/A, ObjectNet) carries
`class_map`, and its logits are projected onto its own classes before any metric (see
`project_logits`). Forgetting that projection is the classic source of silently wrong numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Split:
    """One labelled set of examples.

    dataset[i] returns (image, label) where image is a PIL image or a uint8 CHW tensor; the label
    is an int in this split's own label space.
    """

    name: str
    dataset: Dataset
    labels: np.ndarray  # int64 [N]; known without decoding any image
    groups: Optional[np.ndarray] = None  # int group id per example (worst-group metrics)
    group_names: Optional[Sequence[str]] = None
    # class_map[k] = task-class indices whose logits stand for this split's class k
    class_map: Optional[list[list[int]]] = None
    # optional official evaluator: (y_pred, y_true, indices into the split) -> dict of metrics,
    # e.g. the `wilds` dataset's own `eval` (the leaderboard rule)
    evaluator: Optional[Callable[[torch.Tensor, torch.Tensor, np.ndarray], dict]] = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_map) if self.class_map is not None else int(self.labels.max()) + 1


def project_logits(logits: torch.Tensor, class_map: Optional[list[list[int]]]) -> torch.Tensor:
    """Map task logits [N, C] to a split's own classes [N, K]: max over each class's task logits."""
    if class_map is None:
        return logits
    if all(len(c) == 1 for c in class_map):
        return logits[:, [c[0] for c in class_map]]
    return torch.stack([logits[:, c].max(dim=1).values for c in class_map], dim=1)


@dataclass
class Task:
    """A downstream task: what to fine-tune on, what to search on, what to report."""

    name: str
    classnames: list[str]
    templates: list[str]  # prompt templates with one '{}' (or '{c}') for the class name
    train: Split  # ID train
    id_val: Split  # selects the final epoch; never a test set
    ood_val: Split  # the search's objective; disjoint from every test set
    tests: dict[str, Split] = field(default_factory=dict)  # ID test and every OOD test
    metric: str = "accuracy"  # objective metric name (see autoft.evaluation.METRICS)
    higher_is_better: bool = True

    def prompts(self, classname: str) -> list[str]:
        return [format_prompt(t, classname) for t in self.templates]


def format_prompt(template: str, classname: str) -> str:
    return template.replace("{c}", classname).replace("{}", classname)
