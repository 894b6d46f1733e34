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

from autoft.errors import UserError
from autoft.metrics import NEEDS_GROUPS


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
    templates: list[str]  # prompt templates: '{}' (or '{c}') or '{a_c}' for the class name (see format_prompt)
    train: Split  # ID train
    id_val: Split  # selects the final epoch; never a test set
    ood_val: Split  # the search's objective; disjoint from every test set
    tests: dict[str, Split] = field(default_factory=dict)  # ID test and every OOD test
    metric: str = "accuracy"  # objective metric name (see autoft.evaluation.METRICS)
    higher_is_better: bool = True
    # which of `tests` is the ID test (ImageNet's is `imagenet`, CIFAR-10's `cifar10`); every other
    # test is an OOD test. Results and tables carry it, so a renamed split is never counted as OOD.
    id_test: str = "id_test"
    # metrics the tables report on the ID test (default: the objective); FMoW reports its ID column
    # as average accuracy, as WILDS does, beside the worst-region objective
    id_test_metrics: Optional[list[str]] = None
    # class names the flyp term's captions use (one per class, in label order); None = `classnames`.
    # iWildCam's zero-shot head uses English names while the reference's captions use Latin ones.
    caption_classnames: Optional[list[str]] = None
    # OOD tests reported for comparison only, outside the OOD mean (CIFAR-10's optional
    # `cifar10.2_train`: the file the reference evaluates as CIFAR-10.2); results and tables carry them
    extra_tests: tuple = ()

    def __post_init__(self):
        if self.id_test not in self.tests:
            raise ValueError(f"task {self.name}: id_test '{self.id_test}' is not one of its tests {list(self.tests)}")
        if not set(self.extra_tests) <= set(self.tests) - {self.id_test}:
            raise ValueError(f"task {self.name}: extra_tests {list(self.extra_tests)} must be OOD tests among {list(self.tests)}")
        splits = {"train": self.train, "id_val": self.id_val, "ood_val": self.ood_val, **self.tests}
        empty = [k for k, s in splits.items() if len(s) == 0]
        if empty:  # e.g. an OOD-val subset whose source images are the whole ID test set
            raise UserError(f"task {self.name}: split(s) {empty} hold no examples; check the dataset folder and the "
                            f"subset sizes (dataset.task.ood_val_size, id_val_fraction)")
        if self.caption_classnames is None:
            self.caption_classnames = list(self.classnames)
        elif len(self.caption_classnames) != len(self.classnames):
            raise ValueError(f"task {self.name}: {len(self.caption_classnames)} caption class names for "
                             f"{len(self.classnames)} classes")

    def check_metrics(self) -> None:
        """Refuse, before any work, a metric that a split reporting it cannot compute: the objective on
        id_val, OOD-val and every OOD test; the ID-test metrics on the ID test. Worst-group accuracy
        needs groups (WILDS' regions, a folder dataset's domains); the embedded task has none."""
        scored = {"id_val": self.id_val, "ood_val": self.ood_val, **{k: self.tests[k] for k in self.ood_tests}}
        wanted = [(self.metric, "dataset.metric", scored),
                  *((m, "dataset.id_test_metrics", {self.id_test: self.tests[self.id_test]})
                    for m in (self.id_test_metrics or [self.metric]))]
        for metric, key, splits in wanted:
            lacking = [name for name, s in splits.items() if metric in NEEDS_GROUPS and s.groups is None]
            if lacking:
                raise UserError(f"{key}={metric}: the {self.name} split(s) {', '.join(lacking)} have no groups to "
                                f"take the worst of; use accuracy or macro_f1 for this dataset")

    @property
    def ood_tests(self) -> list[str]:
        return [k for k in self.tests if k != self.id_test]

    def prompts(self, classname: str) -> list[str]:
        return [format_prompt(t, classname) for t in self.templates]


def with_article(classname: str) -> str:
    """'a <name>' or 'an <name>', underscores turned into spaces: the article rule of the reference's
    templates (wise-ft `append_proper_article`: 'an' exactly when the name starts with a lower-case
    vowel), e.g. 'airport_hangar' -> 'an airport hangar', 'barn' -> 'a barn'."""
    name = classname.replace("_", " ")
    return ("an " if name[:1] in tuple("aeiou") else "a ") + name


def format_prompt(template: str, classname: str) -> str:
    """Fill a template: '{}' and '{c}' take the class name as it is; '{a_c}' takes it with its
    indefinite article and underscores turned into spaces (`with_article`)."""
    if "{a_c}" in template:
        template = template.replace("{a_c}", with_article(classname))
    return template.replace("{c}", classname).replace("{}", classname)
