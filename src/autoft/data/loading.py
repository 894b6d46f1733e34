"""How images reach the model: the one image path shared by training, search and evaluation.

Every split is turned into uint8 CHW tensors at the model's resolution by one deterministic
transform (OpenAI's: shorter side resized with PIL's bicubic filter, then centre-cropped); normalisation to
the model's mean/std happens on the device. `image_view` gives a split's (uint8 image, label) pairs
from its on-disk image cache where one exists or may be built (autoft.data.image_cache,
trainer.image_cache), else decoded live; both give the same bytes. The search touches the same few
thousand examples in every trial, so `read_all` reads them once per process into one uint8 tensor
(kept on the device when it fits). Fine-tuning uses no data augmentation, so the OOD-val objective is
always measured with the evaluation transform.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from autoft.data.base import Split
from autoft.data.image_cache import CachedBatches, CachedImages, CachePolicy, CacheSpec, lookup, spec_for


def to_uint8(image, size: int) -> torch.Tensor:
    """PIL image or uint8 CHW tensor -> uint8 [3, size, size], exactly as OpenAI's CLIP preprocessing
    (open_clip's eval transform for the `openai` tags) up to its final normalisation: PIL bicubic
    resize of the shorter side to `size`, centre crop, then RGB. PIL's bicubic kernel differs from
    torch's tensor kernel, so tensors go through PIL too (tests/test_models.py checks the equality)."""
    if not isinstance(image, Image.Image):
        if tuple(image.shape[-2:]) == (size, size):
            return (image[None] if image.ndim == 2 else image).expand(3, -1, -1).contiguous()
        image = TF.to_pil_image(image)
    if image.size != (size, size):
        image = TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, [size, size])
    return TF.pil_to_tensor(image.convert("RGB")).contiguous()


class UInt8View(Dataset):
    """A split's examples (optionally a subset) as (uint8 image, label) at one resolution."""

    def __init__(self, split: Split, size: int, indices: Optional[Sequence[int]] = None):
        self.split, self.size = split, size
        self.indices = np.arange(len(split)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.split.dataset[int(self.indices[i])]
        return to_uint8(image, self.size), int(label)


def split_spec(split: Split, size: int, dataset: str, indices: Optional[Sequence[int]] = None) -> Optional[CacheSpec]:
    """The identity of a whole split's cache, or of a subset's own (named '<split>-subset'); None for
    datasets held as tensors (nothing to decode) and subsets of datasets that cannot select."""
    if indices is None:
        return spec_for(split.dataset, dataset, split.name, size)
    if not hasattr(split.dataset, "select"):
        return None
    return spec_for(split.dataset.select(np.asarray(indices, dtype=np.int64)), dataset, f"{split.name}-subset", size)


def image_view(split: Split, size: int, indices: Optional[Sequence[int]] = None,
               policy: Optional[CachePolicy] = None, progress: bool = True) -> tuple[Dataset, str]:
    """(a subset of) a split as (uint8 image, label) pairs, and where they come from: 'cache' or 'live'.

    The split's own cache serves any subset of it. Without one, a whole split is cached on first use
    (policy auto, when the disk has room) and a subset (the search's pool) gets a cache of its own;
    datasets held as tensors, and policy off, are read live."""
    live = UInt8View(split, size, indices)
    whole = split_spec(split, size, policy.dataset) if policy and policy.mode != "off" else None
    if whole is None:
        return live, "live"
    cache = lookup(whole, lambda: UInt8View(split, size), policy, build_missing=indices is None, progress=progress)
    rows = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    if cache is not None:
        return CachedImages(cache, rows, split.labels[rows]), "cache"
    subset = None if indices is None else split_spec(split, size, policy.dataset, rows)
    cache = None if subset is None else lookup(subset, lambda: live, policy, build_missing=True, progress=progress)
    if cache is None:
        return live, "live"
    return CachedImages(cache, np.arange(len(rows)), split.labels[rows]), "cache"


def loader(split: Split, size: int, batch_size: int, shuffle: bool = False, num_workers: int = 0,
           seed: int = 0, indices: Optional[Sequence[int]] = None, drop_last: bool = False,
           sampler=None, view: Optional[Dataset] = None) -> DataLoader:
    """Batches of (uint8 images, labels); a fixed order unless shuffle (seeded). `view`: the pairs to
    batch (from `image_view`); default the split's live images."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(view, CachedImages):  # whole batches per read (CachedBatches); the same order as below
        order = sampler or (RandomSampler(view, generator=generator) if shuffle else SequentialSampler(view))
        return DataLoader(CachedBatches(view), batch_size=None, sampler=BatchSampler(order, batch_size, drop_last),
                          num_workers=num_workers, persistent_workers=num_workers > 0,
                          pin_memory=torch.cuda.is_available())
    return DataLoader(view if view is not None else UInt8View(split, size, indices), batch_size=batch_size,
                      shuffle=shuffle and sampler is None, sampler=sampler, num_workers=num_workers,
                      generator=generator, drop_last=drop_last, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())


def read_all(view: Dataset, num_workers: int = 0, batch_size: int = 256, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of a view in memory: (uint8 [N, 3, S, S], int64 labels [N]); a cached view is read
    (each image checked), a live one decoded on `num_workers` processes."""
    if isinstance(view, CachedImages):
        return view.all(), torch.as_tensor(view.labels, dtype=torch.long)
    images = torch.empty((len(view), 3, view.size, view.size), dtype=torch.uint8)
    labels, pos = torch.empty(len(view), dtype=torch.long), 0
    # worker processes only pay off when there is real decoding to spread
    batches = DataLoader(view, batch_size=batch_size, num_workers=num_workers if len(view) >= 2000 else 0)
    for x, y in tqdm(batches, desc=desc or "decoding", leave=False, disable=len(view) < 5000 or not os.isatty(2)):
        images[pos: pos + len(x)] = x
        labels[pos: pos + len(x)] = y
        pos += len(x)
    return images, labels


class Normalizer:
    """uint8 batches -> float, normalised on the device (one fused op instead of a CPU transform)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.device = device
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return ((images.float() - self.mean) * self.inv_std).contiguous(memory_format=self.format)


class TensorBatches:
    """Shuffled batches from in-memory uint8 tensors. Epoch e's order depends only on (seed, e), so a
    resumed run sees exactly the batches an uninterrupted one would. With world_size > 1 each rank
    yields its own slice of every global batch of `batch_size`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if len(images) < batch_size:
            raise ValueError(f"{len(images)} examples cannot fill a batch of {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.rank, self.local = rank, batch_size // world_size

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 100_003 + e))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            lo = start + self.rank * self.local
            idx = order[lo: lo + self.local].to(self.images.device)
            yield self.images[idx], self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        e = 0
        while True:
            yield from self.epoch(e)
            e += 1
