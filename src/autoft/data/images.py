"""Image datasets on disk, shared by the dataset families: decoding, folder listings, example ids.

Every dataset here returns `(PIL RGB image, int label)` and knows a stable *example id* per item
(`example_ids()`): the identity used to prove that the search's OOD-val subset never touches a test
set. Corruption benchmarks (ImageNet-C, CIFAR-10-C) give each corrupted image the id of its source
image, so that an OOD-val image derived from a test image is caught as an overlap.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from autoft.errors import UserError
from autoft.io import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def prepare_command(dataset: str, root) -> str:
    """The check to run; root None: `dataset` already carries what locates the data (a folder
    dataset's `<config> dataset.task.root=<folder>`)."""
    where = f" --root {root}" if root is not None else ""
    return f"python scripts/prepare_data.py --dataset {dataset}{where}"


def require(path, dataset: str, root, what: str) -> Path:
    """`path` must exist; otherwise a UserError says where we looked and how to prepare the data."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: looked for {path}. Prepare it with: {prepare_command(dataset, root)} "
                        f"(or set data_root / dataset.task.root to where it is)")
    return path


def load_rgb(path, dataset: str = "", root=None) -> Image.Image:
    """Decode an image fully into RGB; a missing or corrupt file is a UserError naming the file."""
    hint = f" Check the dataset with: {prepare_command(dataset, root)} --verify-images" if dataset else ""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise UserError(f"image file missing: {path}.{hint}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"corrupt image file: {path} ({type(e).__name__}: {e}). Re-download or replace it.{hint}") from None


def _encode(paths: Sequence[str]) -> np.ndarray:
    # fixed-width bytes: a million paths cost tens of MB, and DataLoader workers share them
    # without the copy-on-read of Python string lists
    return np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_) if len(paths) else np.zeros(0, dtype="S1")


class ImageFiles(Dataset):
    """Image files under `root` with integer labels.

    ids: one example id per file (default: '<id_prefix>:<relative path>').
    crop_border: pixels removed from every side after decoding (ObjectNet's red frame).
    """

    def __init__(self, root, relpaths: Sequence[str] | np.ndarray, labels: np.ndarray, id_prefix: str = "",
                 ids: Optional[np.ndarray] = None, crop_border: int = 0, dataset: str = "", data_root=None):
        self.root = str(root)
        self.relpaths = relpaths if isinstance(relpaths, np.ndarray) and relpaths.dtype.kind == "S" else _encode(list(relpaths))
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.relpaths):
            raise ValueError("one label per file")
        self.id_prefix, self.crop_border = id_prefix, crop_border
        self._ids = None if ids is None else np.asarray(ids)
        self.dataset, self.data_root = dataset, data_root

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.relpaths[i].decode("utf-8"))

    def __getitem__(self, i: int):
        image = load_rgb(self.path(i), self.dataset, self.data_root)
        if self.crop_border:
            b, (w, h) = self.crop_border, image.size
            image = image.crop((b, b, w - b, h - b))
        return image, int(self.labels[i])

    def example_ids(self) -> np.ndarray:
        if self._ids is not None:
            return self._ids
        return np.array([f"{self.id_prefix}:{p.decode('utf-8')}" for p in self.relpaths], dtype=object)

    def cache_source(self) -> dict:
        """What the image cache (autoft.data.image_cache) keys these images by: the folder, a hash of
        the file list in order, the crop."""
        files = hashlib.sha1(b"\0".join(self.relpaths.tolist())).hexdigest()
        return {"kind": "files", "dataset": self.dataset, "root": os.path.abspath(self.root), "files": files,
                "crop_border": self.crop_border}

    def cache_stamp(self, sample: int = 1024) -> str:
        """Size and modification time of up to `sample` evenly spaced files (the first and last
        included): a replaced or re-extracted dataset changes it; stating all 1.28M ImageNet files at
        every start would take minutes on a network file system."""
        picks = np.unique(np.linspace(0, len(self) - 1, min(sample, len(self))).astype(np.int64)) if len(self) else []
        stats = []
        for i in picks:
            try:
                st = os.stat(self.path(int(i)))
                stats.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append(None)
        return hashlib.sha1(json.dumps(stats).encode()).hexdigest()

    def select(self, indices: np.ndarray) -> "ImageFiles":
        """The same files restricted to `indices` (a new dataset, no wrapper)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageFiles(self.root, self.relpaths[indices], self.labels[indices], self.id_prefix,
                          None if self._ids is None else self._ids[indices], self.crop_border, self.dataset, self.data_root)


class TensorImageDataset(Dataset):
    """In-memory images (uint8 [N, 3, H, W]) with int labels; returns (uint8 CHW tensor, int)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("TensorImageDataset needs uint8 [N, C, H, W] images and N labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class ArrayImages(Dataset):
    """uint8 images [N, H, W, 3] in memory (CIFAR pickles and .npy files) with labels and ids."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        self.images, self.labels, self.ids = images, np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=object)
        if not len(self.images) == len(self.labels) == len(self.ids):
            raise ValueError("one label and one id per image")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(np.ascontiguousarray(self.images[i])), int(self.labels[i])

    def example_ids(self) -> np.ndarray:
        return self.ids

    def cache_source(self) -> dict:
        """What the image cache keys these images by: a hash of their pixels (the arrays are the source)."""
        if not hasattr(self, "_digest"):
            self._digest = hashlib.sha1(np.ascontiguousarray(self.images)).hexdigest()
        return {"kind": "arrays", "shape": list(self.images.shape), "sha1": self._digest}

    def cache_stamp(self) -> str:
        return ""  # the pixels themselves are in the key

    def select(self, indices: np.ndarray) -> "ArrayImages":
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[indices], self.labels[indices], self.ids[indices])


def example_ids(dataset) -> np.ndarray:
    """Example ids of a dataset built here (ImageFiles, ArrayImages)."""
    if not hasattr(dataset, "example_ids"):
        raise TypeError(f"{type(dataset).__name__} has no example ids; build it with autoft.data.images")
    return np.asarray(dataset.example_ids(), dtype=object)


# ------------------------------------------------------------------------------------------------
# class-folder listings (ImageNet and its variants), optionally cached on disk

@dataclass
class FolderListing:
    relpaths: list[str]  # '<class folder>/<file>' relative to the listed directory
    labels: np.ndarray  # int64 index into `classes`
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # files per class folder


def _stamp(directory: Path, classes: Sequence[str]) -> list:
    # a directory's mtime changes whenever an entry is added, removed or renamed in it
    out = [directory.stat().st_mtime_ns]
    for c in classes:
        p = directory / c
        out.append(p.stat().st_mtime_ns if p.is_dir() else -1)
    return out


def list_class_folders(directory, classes: Optional[Sequence[str]] = None, index_dir=None,
                       extensions: Sequence[str] = IMAGE_EXTENSIONS) -> FolderListing:
    """Images in `directory/<class>/...` (files sorted by name within a class).

    classes: the class folders to read, in label order (folders not listed are ignored; listed
    folders that are absent contribute nothing). None: every sub-folder, sorted by name.
    index_dir: if set, the listing is kept there and reused while no class folder has changed
    (listing ImageNet train, 1.28M files, on a network file system takes a while).
    """
    directory = Path(directory)
    if classes is None:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    classes = list(classes)
    cache = None
    if index_dir:
        key = hashlib.sha1(json.dumps([str(directory.resolve()), classes, list(extensions)]).encode()).hexdigest()[:16]
        cache = Path(index_dir) / f"listing-{key}.npz"
        stamp = _stamp(directory, classes)
        if cache.is_file():
            try:
                blob = np.load(cache, allow_pickle=False)
                if json.loads(str(blob["stamp"])) == stamp:
                    relpaths = [p.decode("utf-8") for p in blob["relpaths"]]
                    labels = blob["labels"].astype(np.int64)
                    counts = dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist()))
                    return FolderListing(relpaths, labels, classes, counts)
            except Exception:  # a damaged index is rebuilt, never trusted
                pass
    relpaths, labels, counts = [], [], {}
    exts = tuple(e.lower() for e in extensions)
    for k, c in enumerate(classes):
        folder = directory / c
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(exts)) if folder.is_dir() else []
        relpaths += [f"{c}/{n}" for n in names]
        labels += [k] * len(names)
        counts[c] = len(names)
    listing = FolderListing(relpaths, np.asarray(labels, dtype=np.int64), classes, counts)
    if cache is not None:  # the temporary name ends in .npz, or np.savez would append it
        atomic_write(cache, lambda tmp: np.savez(tmp, relpaths=_encode(relpaths), labels=listing.labels,
                                                 stamp=np.array(json.dumps(stamp))), suffix=".tmp.npz")
    return listing


# ------------------------------------------------------------------------------------------------
# what `scripts/prepare_data.py` reports

@dataclass
class CheckReport:
    """The outcome of checking one dataset on disk."""

    dataset: str
    root: str
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)  # exact steps for what cannot be downloaded
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem (entries skipped, unused domains)

    @property
    def complete(self) -> bool:
        return not self.problems

    def good(self, msg: str) -> None:
        self.ok.append(msg)

    def bad(self, msg: str) -> None:
        self.problems.append(msg)

    def count(self, what: str, found: int, expected: Optional[int]) -> bool:
        if expected is None or found == expected:
            self.good(f"{what}: {found} examples")
            return True
        self.bad(f"{what}: {found} examples, expected {expected}")
        return False

    def files(self, paths: Sequence, what: str, verify_images: bool, limit: int = 20, progress: bool = False) -> None:
        """Every path must exist (and decode, with verify_images); names each missing/corrupt file."""
        missing = [str(p) for p in paths if not os.path.isfile(p)]
        corrupt = []
        if verify_images:
            from concurrent.futures import ThreadPoolExecutor

            from tqdm import tqdm

            def problem(p) -> Optional[str]:
                try:
                    load_rgb(p)
                except UserError as e:
                    return str(e)
                return None

            present = [p for p in paths if os.path.isfile(p)]
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoding releases the GIL
                found = pool.map(problem, present, chunksize=64)
                corrupt = [m for m in tqdm(found, total=len(present), desc=f"decoding {what}", unit="img",
                                           disable=not progress, leave=False) if m]
        for name, items in (("missing", missing), ("corrupt", corrupt)):
            if items:
                shown = "\n    ".join(items[:limit])
                more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
                self.bad(f"{what}: {len(items)} {name} image file(s):\n    {shown}{more}")
        if not missing and not corrupt:
            self.good(f"{what}: all {len(paths)} image files present" + (" and decodable" if verify_images else ""))

    def render(self) -> str:
        lines = [f"== {self.dataset} under {self.root}: {'complete' if self.complete else 'INCOMPLETE'}"]
        lines += [f"  ok       {m}" for m in self.ok]
        lines += [f"  note     {m}" for m in self.notes]
        lines += [f"  PROBLEM  {m}" for m in self.problems]
        if self.manual:
            lines.append("  manual steps:")
            lines += [f"    {i + 1}. {m}" for i, m in enumerate(self.manual)]
        return "\n".join(lines)
