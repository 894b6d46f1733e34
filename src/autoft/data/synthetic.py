"""A synthetic task of random images: no download, any size. For benchmarks (speed does not depend
on what the pixels show) and for tests of the data path; its accuracies mean nothing."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from autoft.data.base import Split, Task
from autoft.errors import UserError


class RandomImages(Dataset):
    """Deterministic random uint8 images [3, size, size]; image i is generated from (seed, i)."""

    def __init__(self, n: int, size: int, num_classes: int, seed: int):
        self.n, self.size, self.seed = n, size, seed
        self.labels = np.arange(n, dtype=np.int64) % num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.randint(0, 256, (3, self.size, self.size), generator=g, dtype=torch.uint8), int(self.labels[i])


def synthetic_task(num_classes: int = 10, image_size: int = 224, n_train: int = 2560, n_val: int = 256,
                   n_ood_val: int = 512, n_test: int = 256, seed: int = 0) -> Task:
    sizes = dict(image_size=image_size, n_train=n_train, n_val=n_val, n_ood_val=n_ood_val, n_test=n_test)
    for k, v in {**sizes, "num_classes": num_classes}.items():
        low = 2 if k == "num_classes" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"dataset.task.{k}={v}: must be an integer >= {low}")
    def split(name: str, n: int, stream: int) -> Split:
        data = RandomImages(n, image_size, num_classes, seed * 10 + stream)
        return Split(name, data, data.labels)

    return Task(name="synthetic", classnames=[f"class {i}" for i in range(num_classes)],
                templates=["a photo of a {}.", "a picture of a {}."],
                train=split("train", n_train, 0), id_val=split("id_val", n_val, 1),
                ood_val=split("ood_val", n_ood_val, 2), tests={"id_test": split("id_test", n_test, 3)})
