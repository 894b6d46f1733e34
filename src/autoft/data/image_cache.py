"""The preprocessed image cache: a split's images as the model sees them, decoded once, kept on disk.

A cache holds, for every example of a split (or of a subset of one: the search's pool), the exact
output of `autoft.data.loading.to_uint8` (OpenAI's CLIP preprocessing up to its normalisation;
fine-tuning uses no augmentation, so training and evaluation share it) in one memory-mapped uint8
array. Decoding and resizing a 1024x768 JPEG costs about 30 ms of a core; reading its 150 KB back
costs about 0.2 ms, so a cached run is fed by a few cores instead of dozens (scripts/bench_loader.py).

One folder per cache under `trainer.image_cache_dir`, named `<dataset>-<split>-<size>px-<key>`,
key = hash of (format, the source's identity: its file list or array contents, the preprocessing):

    images.npy     uint8 [N, 3, S, S] in numpy's .npy format, opened memory-mapped
    crc32.npy      uint32 [N]: zlib.crc32 of each image's bytes, checked on every read
    manifest.json  written last: dataset, split, source (root, file-list hash, a stamp of the files),
                   preprocessing, shape, checksum (sha256 of the crc32 array); no manifest, no cache

- Built atomically: in `<name>.partial/`, under an exclusive lock (`<name>.lock`), renamed into place
  when complete. DataLoader workers, search workers and DDP ranks wait for the one builder, then map
  the same file: the OS page cache shares its pages, no process holds a split in its own memory.
  Readers look only at `<name>/`, so a partial build is never read (`read` decodes live instead).
- Resumable: rows are flushed before they are marked done (done.npy); a build killed (even by
  SIGKILL) continues where it stopped, after checking the crc32 of the rows it had written; one
  killed after its manifest only finishes its rename. The lock dies with its holder (flock), and the
  build's decoding processes die with it too (they would otherwise keep the lock forever), so the
  next run, or a process already waiting, takes over. What a killed rename or a killed atomic write
  left behind (`<name>.stale-*`, temporary files) is removed by the next build; the result is
  byte-identical to an uninterrupted build (tests/test_image_cache_faults.py kills builds at each step).
- Never silently wrong: opening checks the manifest, the file sizes, the checksum of the crc32
  array and the stamp (size, mtime) of a sample of the source files; a failed check names the
  folder and the reason, and the cache is rebuilt (`auto`) or refused (`read`). A read image that
  does not match its crc32 is refused, naming the cache and the row.
- A full disk fails before any decoding: the array is allocated up front (posix_fallocate) after a
  free-space check; the message says how much is needed and what to do; the partial folder is removed.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial as bind
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import PIL
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autoft.errors import UserError
from autoft.io import atomic_write, atomic_write_text
from autoft.names import IMAGE_CACHE_MODES as MODES

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes: every cache then gets a new key
FREE_MARGIN = 1.05  # a build needs its size plus 5 % free, so that a cache never fills a disk to the last byte
FLUSH_ROWS = 2048   # rows written between two checkpoints of a build (done.npy)
CACHE_FILES = ("images.npy", "crc32.npy", "manifest.json")  # what a complete cache folder holds, nothing else


def _reached(point: str) -> None:
    """A named step of a build (locking, locked, allocating, rows, filled, manifest-tmp, manifest,
    renaming). Does nothing; tests/test_image_cache_faults.py replaces it in a builder process to
    SIGKILL that process exactly there."""


def preprocessing(size: int) -> dict:
    """The preprocessing a cache stores, as recorded in its key: any change gives another cache. The
    library versions are part of it: PIL's bicubic kernel is what makes the bytes (autoft.data.loading)."""
    return {"transform": "openai-clip-uint8", "size": int(size), "resize": "shorter side, PIL bicubic",
            "crop": "center", "mode": "RGB", "pillow": PIL.__version__, "torchvision": torchvision.__version__}


@dataclass(frozen=True)
class CachePolicy:
    """How a workspace uses caches (trainer.image_cache, trainer.image_cache_dir).

    auto: read a cache where it exists, build it on first use (a whole split only when the disk has
    room; a subset, such as the search's pool, always); read: only caches that exist (built by
    scripts/prepare_data.py --cache), live images elsewhere; off: live images everywhere."""
    mode: str = "off"
    directory: Optional[str] = None
    dataset: str = ""
    build_workers: int = 0  # decoding processes of a build; 0: every core

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"trainer.image_cache={self.mode!r}: must be one of {', '.join(MODES)}")
        if self.mode != "off" and not self.directory:
            raise UserError("trainer.image_cache_dir is not set: name the folder that holds the image caches")


@dataclass(frozen=True)
class CacheSpec:
    """The identity of one cache: what it holds and how it was made."""
    dataset: str
    split: str
    size: int
    n: int
    source: dict  # the dataset's `cache_source()`: root, file-list hash (or content hash), crop
    stamp: str    # the dataset's `cache_stamp()`: changes when a source file changes

    @property
    def key(self) -> str:
        ident = {"format": FORMAT, "n": self.n, "source": self.source, "preprocessing": preprocessing(self.size)}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.dataset or 'data'}-{self.split}-{self.size}px-{self.key}"

    def manifest(self, checksum: str) -> dict:
        return {"format": FORMAT, "dataset": self.dataset, "split": self.split, "key": self.key, "n": self.n,
                "shape": [self.n, 3, self.size, self.size], "dtype": "uint8", "source": self.source,
                "stamp": self.stamp, "preprocessing": preprocessing(self.size), "checksum": checksum}


def spec_for(dataset: Dataset, name: str, split: str, size: int) -> Optional[CacheSpec]:
    """The cache spec of a dataset that can name its source (autoft.data.images.ImageFiles and
    ArrayImages), else None: in-memory tensors need no cache."""
    if not hasattr(dataset, "cache_source"):
        return None
    return CacheSpec(name, split, int(size), len(dataset), dataset.cache_source(), dataset.cache_stamp())


def crc_of(rows: np.ndarray) -> np.ndarray:
    """zlib.crc32 of each row's bytes (uint32 [len(rows)])."""
    return np.fromiter((zlib.crc32(np.ascontiguousarray(r)) for r in rows), dtype=np.uint32, count=len(rows))


def checksum_of(crc: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(crc, dtype="<u4").tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# reading

class ImageCache:
    """A complete cache, opened read-only. The memory map opens lazily in each process and is never
    pickled, so DataLoader workers (fork or spawn) map the file themselves instead of copying it."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = Path(folder), manifest
        self.n, self.size = int(manifest["n"]), int(manifest["shape"][-1])
        self._images = self._crc = None

    def __getstate__(self):
        return {"folder": self.folder, "manifest": self.manifest}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["manifest"])

    def _open(self) -> None:
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
            self._crc = np.load(self.folder / "crc32.npy")

    def rows(self, rows: Sequence[int]) -> np.ndarray:
        """uint8 [len(rows), 3, S, S], each image checked against its crc32."""
        self._open()
        rows = np.asarray(rows, dtype=np.int64)
        out = self._images[rows]  # a copy: fancy indexing on a memmap
        bad = np.flatnonzero(crc_of(out) != self._crc[rows])
        if len(bad):
            raise UserError(f"image cache {self.folder} is corrupt: row {int(rows[bad[0]])} does not match its "
                            f"checksum ({len(bad)} of {len(rows)} rows read). Delete the folder (it is rebuilt on "
                            f"the next run with trainer.image_cache=auto) or rebuild it with scripts/prepare_data.py --cache")
        return out


class CachedImages(Dataset):
    """(uint8 CHW tensor, label) pairs from a cache's `rows`: the same pairs as the live
    `autoft.data.loading.UInt8View`, read instead of decoded. `batch` reads a whole batch in one go."""

    def __init__(self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray):
        self.cache, self.rows = cache, np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.rows) != len(self.labels):
            raise ValueError("one label per row")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.cache.rows(self.rows[[i]])[0]), int(self.labels[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 [B, 3, S, S], int64 labels [B]) of these positions, in the asked order (read in file order)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(self.rows[idx], kind="stable")
        images = np.empty((len(idx), 3, self.cache.size, self.cache.size), dtype=np.uint8)
        images[order] = self.cache.rows(self.rows[idx[order]])
        return torch.from_numpy(images), torch.as_tensor(self.labels[idx])

    def all(self, chunk: int = 1024) -> torch.Tensor:
        """Every image, uint8 [N, 3, S, S], in memory (the search's pool and OOD-val subset)."""
        out = torch.empty((len(self), 3, self.cache.size, self.cache.size), dtype=torch.uint8)
        for a in range(0, len(self), chunk):
            out[a: a + chunk] = torch.from_numpy(self.cache.rows(self.rows[a: a + chunk]))
        return out


class CachedBatches(Dataset):
    """A CachedImages indexed by whole batches (a BatchSampler's lists): one read and one tensor per
    batch, where a per-example dataset pays Python and collation per image (about 10x the time)."""

    def __init__(self, view: CachedImages):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, indices):
        return self.view.batch(indices)


def inspect(folder: Path, spec: CacheSpec) -> Optional[str]:
    """Why the cache in `folder` cannot be used for `spec` (None: it can). Cheap: it reads the manifest,
    the crc32 array and the .npy header, never the images."""
    manifest_file = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as e:
        return f"its manifest {manifest_file} is unreadable ({type(e).__name__})"
    expected = spec.manifest(manifest.get("checksum", ""))
    for k in ("format", "key", "n", "shape", "dtype", "source", "preprocessing"):
        if manifest.get(k) != expected[k]:
            return f"its manifest records another {k} than the data now asks for"
    if manifest.get("stamp") != spec.stamp:
        return "source image files changed since it was built (sizes or modification times)"
    try:
        images = np.load(folder / "images.npy", mmap_mode="r")  # a file shorter than its header says fails here
        size = os.path.getsize(folder / "images.npy")
        crc = np.load(folder / "crc32.npy")
    except (OSError, ValueError) as e:
        return f"its files are unreadable or truncated ({type(e).__name__}: {e})"
    if list(images.shape) != expected["shape"] or images.dtype != np.uint8 or size != images.offset + images.nbytes:
        return (f"images.npy holds {size} bytes for {images.dtype} {list(images.shape)}, expected "
                f"{images.offset + images.nbytes} bytes of uint8 {expected['shape']} (truncated or overwritten)")
    if crc.shape != (spec.n,) or checksum_of(crc) != manifest["checksum"]:
        return "crc32.npy does not match the manifest's checksum"
    return None


def open_cache(folder: Path) -> ImageCache:
    return ImageCache(folder, json.loads((folder / "manifest.json").read_text()))


# ------------------------------------------------------------------------------------------------
# building

class NoRoom(UserError):
    """The disk lacks room for a cache (checked before anything is written)."""


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _bytes(n: int) -> str:
    """A size as people read it (GB from 0.1 GB, else MB)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _no_room(folder: Path, need: int, free: int, spec: CacheSpec) -> NoRoom:
    return NoRoom(f"no room for the image cache of {spec.dataset} {spec.split} ({spec.n} images at {spec.size}px): "
                  f"it needs {_bytes(need)}, {folder.parent} has {_bytes(free)} free. Free space, point "
                  f"trainer.image_cache_dir (prepare_data.py: the same override) at a larger disk, cache fewer "
                  f"splits (prepare_data.py --cache --splits ...; docs/image_cache.md), or set trainer.image_cache=off")


def _allocate(partial: Path, spec: CacheSpec) -> None:
    """A fresh partial folder with the whole array allocated on disk (never sparse: a full disk fails
    here, not as a SIGBUS in the middle of writing through the memory map)."""
    partial.mkdir(parents=True)
    shape = (spec.n, 3, spec.size, spec.size)
    images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    del images
    with open(partial / "images.npy", "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    np.save(partial / "crc32.npy", np.zeros(spec.n, dtype=np.uint32))
    np.save(partial / "done.npy", np.zeros(spec.n, dtype=bool))
    _reached("allocating")
    atomic_write_text(partial / "spec.json", json.dumps(spec.manifest(""), sort_keys=True))


def _resumable(partial: Path, spec: CacheSpec) -> Optional[np.ndarray]:
    """The done mask of a partial build of the same spec, rows failing their crc32 unmarked; else None."""
    try:
        if json.loads((partial / "spec.json").read_text()) != json.loads(json.dumps(spec.manifest(""), sort_keys=True)):
            return None
        done = np.load(partial / "done.npy")
        crc = np.load(partial / "crc32.npy")
        images = np.load(partial / "images.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if done.shape != (spec.n,) or images.shape != (spec.n, 3, spec.size, spec.size):
        return None
    rows = np.flatnonzero(done)
    for a in range(0, len(rows), 1024):
        chunk = rows[a: a + 1024]
        done[chunk[crc_of(images[chunk]) != crc[chunk]]] = False
    return done


def build(view: Dataset, spec: CacheSpec, directory, workers: int = 0, progress: bool = True,
          flush_rows: Optional[int] = None) -> ImageCache:
    """Write the cache of `view` (the live uint8 view of the spec's examples, in order) under
    `directory`, or open it if another process finished it first. Resumes a killed build; a build
    stopped by an exception (Ctrl-C) keeps its partial folder for the next one."""
    root = Path(directory)
    folder, partial = root / spec.name, root / f"{spec.name}.partial"
    root.mkdir(parents=True, exist_ok=True)
    _reached("locking")
    with _locked(root / f"{spec.name}.lock"):
        _reached("locked")
        if folder.is_dir() and inspect(folder, spec) is None:
            return open_cache(folder)  # built by another process while this one waited
        _remove_stale(root, spec.name)
        need = int(spec.n * 3 * spec.size ** 2 * FREE_MARGIN)
        try:
            if not (partial.is_dir() and inspect(partial, spec) is None):  # complete: only its rename was left
                done = _resumable(partial, spec) if partial.is_dir() else None
                if done is None:
                    shutil.rmtree(partial, ignore_errors=True)
                    free = shutil.disk_usage(root).free + (_size(folder) if folder.is_dir() else 0)
                    if need > free:
                        raise _no_room(folder, need, free, spec)
                    _allocate(partial, spec)
                    done = np.zeros(spec.n, dtype=bool)
                _fill(view, partial, done, spec, workers, progress, flush_rows or FLUSH_ROWS)
                _write_manifest(partial, spec)
            _finish(partial, folder)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # nothing half-written may stay where a cache could be
                shutil.rmtree(partial, ignore_errors=True)
                raise _no_room(folder, need, shutil.disk_usage(root).free, spec) from None
            raise
    return open_cache(folder)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _fill(view: Dataset, partial: Path, done: np.ndarray, spec: CacheSpec, workers: int, progress: bool,
          flush_rows: int) -> None:
    """Decode the rows not done yet into the partial array, in order, on every core; every
    `flush_rows` rows the images, then their crc32, then the done mask reach the disk, in that order."""
    todo = np.flatnonzero(~done)
    if not len(todo):
        return
    images = np.load(partial / "images.npy", mmap_mode="r+")
    crc = np.load(partial / "crc32.npy", mmap_mode="r+")
    marks = np.load(partial / "done.npy", mmap_mode="r+")
    marks[:] = done
    workers = workers or os.cpu_count() or 1
    batches = DataLoader(_Rows(view, todo), batch_size=min(32, flush_rows), num_workers=workers if len(todo) >= 256 else 0,
                         collate_fn=_stack, worker_init_fn=bind(_die_with, os.getpid()))
    tty = sys.stderr.isatty()
    bar = tqdm(total=spec.n, initial=spec.n - len(todo), desc=f"caching {spec.dataset} {spec.split}", unit="img",
               disable=not progress or len(todo) < 256, mininterval=1 if tty else 30, file=sys.stderr)
    pending = []

    def checkpoint():
        images.flush()
        crc.flush()
        marks[pending] = True
        marks.flush()
        pending.clear()

    for rows, x in batches:
        images[rows] = x
        crc[rows] = crc_of(x)
        pending.extend(rows.tolist())
        _reached("rows")
        bar.update(len(rows))
        if len(pending) >= flush_rows:
            checkpoint()
    checkpoint()
    bar.close()
    del images, crc, marks
    _reached("filled")


def _die_with(builder: int, worker_id: int) -> None:
    """DataLoader worker init of a build: the kernel kills this decoding process when its builder dies.
    A worker outlives a SIGKILLed builder (torch's then waits forever to flush its queue) and holds
    the build's lock, inherited at fork: every later run would wait for that lock forever. (The signal
    follows the forking thread, which iterates the loader until the workers are shut down.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
    except (AttributeError, OSError):
        return
    if os.getppid() != builder:  # the builder died before the line above
        os._exit(1)


class _Rows(Dataset):
    """(row, uint8 image) for the rows still to build."""

    def __init__(self, view: Dataset, rows: np.ndarray):
        self.view, self.rows = view, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        return row, self.view[row][0]


def _stack(items):
    return np.array([r for r, _ in items], dtype=np.int64), np.stack([x.numpy() for _, x in items])


def _write_manifest(partial: Path, spec: CacheSpec) -> None:
    """The manifest, written once every row is done: it is what makes the partial folder complete."""
    text = json.dumps(spec.manifest(checksum_of(np.load(partial / "crc32.npy"))), indent=1)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)
        _reached("manifest-tmp")

    atomic_write(partial / "manifest.json", write)
    _reached("manifest")


def _finish(partial: Path, folder: Path) -> None:
    """A complete partial folder, stripped to the cache's own files (a killed build may have left its
    checkpoints or a temporary file), replaces `folder` in one rename: a reader sees either no cache
    or the complete one. A stale cache in the way moves aside first (readers that have it mapped
    keep their pages; one left by a kill here is removed by the next build)."""
    for p in partial.iterdir():
        if p.name not in CACHE_FILES:
            p.unlink()
    if folder.exists():
        stale = folder.with_name(f"{folder.name}.stale-{os.getpid()}-{time.time_ns()}")
        os.rename(folder, stale)
        _reached("renaming")
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(partial, folder)


def _remove_stale(root: Path, name: str) -> None:
    """Old caches that a build killed in `_finish` moved aside but did not remove (under the lock)."""
    for stale in root.glob(f"{glob.escape(name)}.stale-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# the policy: which images a workspace reads

def lookup(spec: CacheSpec, view_for_build, policy: CachePolicy, build_missing: bool,
           progress: bool = True) -> Optional[ImageCache]:
    """The usable cache of `spec`, else None. A cache that exists but fails its checks is rebuilt
    (auto; one warning naming it and why) or refused (read: one UserError). A missing one is built
    when `build_missing` and the policy is auto; a whole split that does not fit on the disk is
    read live instead, with one warning."""
    folder = Path(policy.directory) / spec.name
    if folder.is_dir():
        problem = inspect(folder, spec)
        if problem is None:
            return open_cache(folder)
        if policy.mode == "read":
            raise UserError(f"image cache {folder} cannot be used: {problem}. Rebuild it with "
                            f"scripts/prepare_data.py --cache, delete it, or set trainer.image_cache=auto (rebuilds) or off")
        log.warning("image cache %s cannot be used: %s; rebuilding it", folder, problem)
    elif not (build_missing and policy.mode == "auto"):
        return None
    try:
        return build(view_for_build(), spec, policy.directory, policy.build_workers, progress)
    except NoRoom as e:
        log.warning("%s. Reading these images live.", e)
        return None
