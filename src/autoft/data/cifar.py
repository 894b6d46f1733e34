"""CIFAR-10 and its distribution shifts (docs/design.md section 4).

On disk, relative to `root`:
- `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`: the python pickles of the
  CIFAR-10 release (dicts with bytes keys; `data` rows are 3072 bytes, R then G then B planes).
  A pickle can run any code it names, so they are read by an unpickler that resolves only the
  numpy globals the release names (`_BatchUnpickler`); a file naming anything else is refused
  before any of it runs. The .npy/.npz files below are read with allow_pickle=False.
- `CIFAR-10.1/cifar10.1_v6_{data,labels}.npy`: CIFAR-10.1 v6 (2,000 images, uint8 [N, 32, 32, 3]).
- `CIFAR-10.2/cifar102_{train,test}.npz` (keys `images`, `labels`): we test on the 2,000-image test
  file. The two files are easy to swap (the 10,000-image one is a *training* set); a test file
  larger than the train file beside it is refused. `cifar102_train=True` also tests on the
  10,000-image train file, the one the reference evaluates as CIFAR-10.2 (docs/fidelity.md), as the
  split `cifar10.2_train`: a comparison column outside the OOD mean (`Task.extra_tests`).
- `CIFAR-10-C/<corruption>.npy` (uint8 [5 x 10,000, 32, 32, 3], severities 1..5 stacked) and
  `labels.npy`: corruptions of the CIFAR-10 test images, in test order.

Splits: ID train / ID val = a stratified hold-out (`id_val_fraction`) of the 50,000 train images;
OOD-val (search) = `ood_val_size` class-balanced images of CIFAR-10-C at `severity`; tests =
`cifar10` (the test set without the source images of the OOD-val subset), `cifar10.1`, `cifar10.2`
(and `cifar10.2_train` when asked for).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from autoft.data.base import Split, Task
from autoft.data.images import ArrayImages, CheckReport, prepare_command, require
from autoft.data.subsets import check_disjoint, class_balanced_indices, save_subset, stratified_holdout
from autoft.errors import UserError

log = logging.getLogger(__name__)

CIFAR10_TEMPLATES = ["a photo of a {}."]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# the 15 corruptions of the benchmark (the release adds 4 extra: gaussian_blur, saturate, spatter, speckle_noise)
CIFAR10C_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                        "jpeg_compression")
CIFAR_COUNTS = {"train": 50000, "test": 10000, "cifar10.1": 2000, "cifar10.2": 2000, "cifar10.2_train": 10000,
                "cifar10c": 50000}
SEVERITIES = 5

DIRS = {"cifar10": "cifar-10-batches-py", "cifar10.1": "CIFAR-10.1", "cifar10.2": "CIFAR-10.2", "cifar10c": "CIFAR-10-C"}


class _Refused(pickle.UnpicklingError):
    """A pickle names a Python object the official CIFAR-10 batches never name."""


def _allowed_globals() -> dict:
    """{(module, name): object} of every global the official batches (Python 2 cPickle, protocol 2,
    numpy 1) or a batch pickled again under Python 3 (numpy 1 or 2, any protocol) may name:
    - numpy.ndarray and numpy.dtype, and ndarray's own rebuild function: `_reconstruct` for
      protocols 0-4, `_frombuffer` for protocol 5, each under numpy 1's (numpy.core) and numpy 2's
      (numpy._core) module path;
    - `_codecs.encode(text, "latin1")`, Python 3's protocol-2 spelling of a bytes object.
    Everything else a batch holds (dict, list, bytes, str, int) needs no global. Built per load: the
    two Python-level callables are fresh wrappers, so a pickle that sets attributes on what it
    names (BUILD) changes only objects thrown away after the load, never numpy's functions."""
    try:
        from numpy._core import multiarray, numeric  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray, numeric

    def frombuffer(buffer, dtype, shape, order):
        return numeric._frombuffer(buffer, dtype, shape, order)

    def latin1(text, encoding):
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise _Refused(f"_codecs.encode with encoding {encoding!r} (only 'latin1' spells bytes)")
        return text.encode("latin1")

    out = {("_codecs", "encode"): latin1, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return out


class _BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals of `_allowed_globals`: a pickle can run code
    only through a global it names (os.system, builtins.eval, subprocess.Popen, ...), and each name
    is looked up here before anything is called, so a tampered batch is refused before it runs."""

    def __init__(self, file):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the CIFAR-10 page reads them
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: Path, root) -> dict:
    """Read one python-version CIFAR-10 pickle without running anything it names (_BatchUnpickler)."""
    require(path, "cifar10", root, "CIFAR-10 batch")
    again = f"Delete it and re-download: {prepare_command('cifar10', root)} --download"
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f).load()
    except _Refused as e:
        raise UserError(f"{path} is not a valid CIFAR-10 batch: it names the Python object {e}, and the official "
                        f"batches hold only dicts, lists, bytes, numbers and numpy arrays. Refused before anything in "
                        f"it ran: a pickle that names other objects may carry code. {again}") from None
    except Exception as e:  # noqa: BLE001 - any other failure to parse is the file's fault: truncated, garbled
        raise UserError(f"corrupt CIFAR-10 file: {path} ({type(e).__name__}: {e}). {again}") from None


def _batch_images(batch, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] and labels of one batch: a dict with b'data' (uint8 [N, 3072], R, G, B
    planes) and b'labels' (N ints 0..9), as the release writes it."""
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise UserError(f"corrupt CIFAR-10 file: {path} is not a CIFAR-10 batch (expected a dict with keys b'data' "
                        f"and b'labels', found {keys})")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1
            or len(data) != len(labels) or labels.dtype.kind not in "iu"):
        raise UserError(f"corrupt CIFAR-10 file: {path} (data {data.dtype} {data.shape}, expected uint8 [N, 3072]; "
                        f"{labels.dtype} labels {labels.shape}, expected N integers)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _label_names(meta, path: Path) -> list[str]:
    """The class names of batches.meta: b'label_names', a list of bytes (Python 2 str)."""
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise UserError(f"corrupt CIFAR-10 file: {path} is not CIFAR-10's batches.meta (expected a dict whose "
                        f"b'label_names' is a list of class names)")
    return [n.decode("latin1") for n in names]


def load_cifar10(root) -> dict:
    """{'train': (images, labels), 'test': (images, labels), 'classnames': [...]} from the pickles."""
    d = Path(root) / DIRS["cifar10"]
    require(d, "cifar10", root, "CIFAR-10 (python version)")
    parts = [_batch_images(_unpickle(d / f"data_batch_{i}", root), d / f"data_batch_{i}") for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _batch_images(_unpickle(d / "test_batch", root), d / "test_batch")
    names = _label_names(_unpickle(d / "batches.meta", root), d / "batches.meta")
    return {"train": train, "test": test, "classnames": names}


def _why_refused(err: Exception) -> str:
    """Why numpy would not read a .npy/.npz file. An object array (or a plain pickle named .npy) gets
    its own reason: reading it means unpickling, which can run code, so allow_pickle stays False."""
    text = " ".join(str(err).split())
    if "allow_pickle" in text or "pickled" in text or "Python objects" in text:
        return ("it holds pickled Python objects, not a plain numeric array; refused unread, as loading "
                "them could run code")
    return f"{type(err).__name__}: {text[:200]}"


def _npy(path: Path, root, what: str, mmap: bool = False) -> np.ndarray:
    require(path, "cifar10", root, what)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"corrupt {what} file: {path} ({_why_refused(e)}). Re-download it: "
                        f"{prepare_command('cifar10', root)} --download") from None


def _check_images(images: np.ndarray, labels: np.ndarray, path: Path, n_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise UserError(f"{path}: expected uint8 images [N, 32, 32, 3] with one label each, got {images.dtype} "
                        f"{images.shape} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{path}: labels outside 0..{n_classes - 1}")


def load_cifar101(root) -> tuple[np.ndarray, np.ndarray]:
    d = Path(root) / DIRS["cifar10.1"]
    images = _npy(d / "cifar10.1_v6_data.npy", root, "CIFAR-10.1 v6 data")
    labels = _npy(d / "cifar10.1_v6_labels.npy", root, "CIFAR-10.1 v6 labels").astype(np.int64)
    _check_images(images, labels, d / "cifar10.1_v6_data.npy", 10)
    return images, labels


def _npz_arrays(path: Path, root, keys: Sequence[str]) -> list[np.ndarray]:
    """The arrays `keys` of a CIFAR-10.2 .npz file, read without unpickling anything."""
    require(path, "cifar10", root, "CIFAR-10.2")
    try:
        with np.load(path, allow_pickle=False) as z:
            return [z[k] for k in keys]
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise UserError(f"corrupt CIFAR-10.2 file: {path} ({_why_refused(e)}); it must hold arrays 'images' and "
                        f"'labels'. Re-download it: {prepare_command('cifar10', root)} --download") from None


def _npz(path: Path, root) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _npz_arrays(path, root, ("images", "labels"))
    labels = labels.astype(np.int64)
    _check_images(images, labels, path, 10)
    return images, labels


def load_cifar102_train(root) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000-image CIFAR-10.2 *train* file, which the reference evaluates as CIFAR-10.2."""
    return _npz(Path(root) / DIRS["cifar10.2"] / "cifar102_train.npz", root)


def load_cifar102(root) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10.2 *test* set; refuses a test file larger than the train file (swapped files)."""
    d = Path(root) / DIRS["cifar10.2"]
    images, labels = _npz(d / "cifar102_test.npz", root)
    train_file = d / "cifar102_train.npz"
    if train_file.is_file():
        n_train = len(_npz_arrays(train_file, root, ("labels",))[0])
        if n_train < len(labels):
            raise UserError(f"{d}: cifar102_test.npz has {len(labels)} images but cifar102_train.npz only {n_train}; "
                            f"the test file has 2,000 images: the two files look swapped. Rename them.")
    return images, labels


def cifar10c_pool(root, corruptions: Sequence[str], severity: int, test_labels: Optional[np.ndarray]):
    """Memory-mapped CIFAR-10-C arrays at `severity`: (arrays by corruption, labels, source index, corruption index)."""
    if not 1 <= severity <= SEVERITIES:
        raise UserError(f"dataset.task.severity must be in 1..{SEVERITIES}, got {severity}")
    if not corruptions:
        raise UserError("dataset.task.corruptions is empty: name at least one CIFAR-10-C corruption")
    d = Path(root) / DIRS["cifar10c"]
    require(d, "cifar10", root, "CIFAR-10-C")
    all_labels = _npy(d / "labels.npy", root, "CIFAR-10-C labels").astype(np.int64)
    block = len(all_labels) // SEVERITIES
    rows = slice((severity - 1) * block, severity * block)
    labels = all_labels[rows]
    if test_labels is not None and not np.array_equal(labels, test_labels):
        raise UserError(f"{d / 'labels.npy'}: severity block {severity} does not list the CIFAR-10 test labels in "
                        f"test order; CIFAR-10-C and CIFAR-10 on disk do not belong together")
    arrays = {}
    for c in corruptions:
        a = _npy(d / f"{c}.npy", root, f"CIFAR-10-C '{c}'", mmap=True)
        if a.shape != (len(all_labels), 32, 32, 3) or a.dtype != np.uint8:
            raise UserError(f"corrupt CIFAR-10-C file: {d / f'{c}.npy'} has {a.dtype} {a.shape}, expected uint8 "
                            f"({len(all_labels)}, 32, 32, 3)")
        arrays[c] = a[rows]
    n = len(labels)
    return (arrays, np.tile(labels, len(corruptions)), np.tile(np.arange(n), len(corruptions)),
            np.repeat(np.arange(len(corruptions)), n))


def cifar10(root, ood_val_size: Optional[int] = 100, subset_seed: int = 0, subset_dir=None,
            id_val_fraction: float = 0.1, split_seed: int = 0,
            corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS, severity: int = 5,
            templates: Optional[Sequence[str]] = None, metric: str = "accuracy", higher_is_better: bool = True,
            cifar102_train: bool = False) -> Task:
    """CIFAR-10 with CIFAR-10-C as the OOD-val source and CIFAR-10.1 / 10.2 as OOD tests; with
    `cifar102_train` also the reference's CIFAR-10.2 file, as the extra test `cifar10.2_train`."""
    data = load_cifar10(root)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    keep, held = stratified_holdout(y_train, id_val_fraction, split_seed)
    train_ids = np.array([f"cifar10-train:{i}" for i in range(len(y_train))], dtype=object)
    train = Split("train", ArrayImages(x_train[keep], y_train[keep], train_ids[keep]), y_train[keep])
    id_val = Split("id_val", ArrayImages(x_train[held], y_train[held], train_ids[held]), y_train[held])

    arrays, pool_labels, pool_source, pool_corr = cifar10c_pool(root, corruptions, severity, y_test)
    chosen = class_balanced_indices(pool_labels, ood_val_size, subset_seed)
    images = np.stack([arrays[corruptions[pool_corr[i]]][pool_source[i]] for i in chosen]) if len(chosen) else \
        np.zeros((0, 32, 32, 3), dtype=np.uint8)
    ood_ids = np.array([f"cifar10-test:{pool_source[i]}" for i in chosen], dtype=object)  # id of the source image
    ood_val = Split("ood_val", ArrayImages(images, pool_labels[chosen], ood_ids), pool_labels[chosen],
                    groups=pool_corr[chosen], group_names=list(corruptions))

    test_ids = np.array([f"cifar10-test:{i}" for i in range(len(y_test))], dtype=object)
    rest = np.flatnonzero(~np.isin(test_ids, ood_ids))
    x101, y101 = load_cifar101(root)
    x102, y102 = load_cifar102(root)
    tests = {
        "cifar10": Split("cifar10", ArrayImages(x_test[rest], y_test[rest], test_ids[rest]), y_test[rest]),
        "cifar10.1": Split("cifar10.1", ArrayImages(x101, y101, np.array([f"cifar10.1:{i}" for i in range(len(y101))], dtype=object)), y101),
        "cifar10.2": Split("cifar10.2", ArrayImages(x102, y102, np.array([f"cifar10.2-test:{i}" for i in range(len(y102))], dtype=object)), y102),
    }
    if cifar102_train:
        xr, yr = load_cifar102_train(root)
        ids = np.array([f"cifar10.2-train:{i}" for i in range(len(yr))], dtype=object)
        tests["cifar10.2_train"] = Split("cifar10.2_train", ArrayImages(xr, yr, ids), yr)
    check_disjoint(ood_ids, {k: s.dataset.example_ids() for k, s in tests.items()})
    if subset_dir:
        save_subset(subset_dir, "ood_val_cifar10", chosen, ood_ids,
                    {"dataset": "cifar10", "pool": f"CIFAR-10-C severity {severity}: {list(corruptions)}",
                     "n": ood_val_size, "seed": subset_seed})
    return Task(name="cifar10", classnames=list(data["classnames"]), templates=list(templates or CIFAR10_TEMPLATES),
                train=train, id_val=id_val, ood_val=ood_val, tests=tests, metric=metric, higher_is_better=higher_is_better,
                id_test="cifar10", extra_tests=("cifar10.2_train",) if cifar102_train else ())


# ------------------------------------------------------------------------------------------------
# preparing and checking

DOWNLOADS = {
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "")],
    "cifar10.1": [(f"https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/cifar10.1_v6_{k}.npy", "CIFAR-10.1")
                  for k in ("data", "labels")],
    "cifar10.2": [(f"https://github.com/modestyachts/cifar-10.2/raw/master/cifar102_{k}.npz", "CIFAR-10.2")
                  for k in ("train", "test")],
    "cifar10c": [("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "")],
}


def check(root, expected: Optional[dict] = None, corruptions: Sequence[str] = CIFAR10C_CORRUPTIONS,
          severity: int = 5) -> CheckReport:
    """Check CIFAR-10, 10.1, 10.2 and 10-C on disk: files, shapes, counts, label ranges, pairing."""
    report = CheckReport("cifar10", str(root))
    expected = dict(CIFAR_COUNTS if expected is None else expected)
    missing = []
    y_test = None
    try:
        data = load_cifar10(root)
        report.count("CIFAR-10 train", len(data["train"][1]), expected.get("train"))
        report.count("CIFAR-10 test", len(data["test"][1]), expected.get("test"))
        y_test = data["test"][1]
        if data["classnames"] == CIFAR10_CLASSES:
            report.good("CIFAR-10: the 10 class names")
        else:
            report.bad(f"CIFAR-10 batches.meta lists classes {data['classnames']}")
    except UserError as e:
        report.bad(str(e))
        missing.append("cifar10")
    for name, load in (("cifar10.1", load_cifar101), ("cifar10.2", load_cifar102)):
        try:
            report.count(name, len(load(root)[1]), expected.get(name))
        except UserError as e:
            report.bad(str(e))
            missing.append(name)
    if (Path(root) / DIRS["cifar10.2"] / "cifar102_train.npz").is_file():  # read only with cifar102_train=true
        try:
            report.count("cifar10.2_train", len(load_cifar102_train(root)[1]), expected.get("cifar10.2_train"))
        except UserError as e:
            report.bad(str(e))
    try:
        arrays, labels, _, _ = cifar10c_pool(root, corruptions, severity, y_test)
        n = len(labels) // max(len(corruptions), 1)
        report.count(f"CIFAR-10-C ({len(arrays)} corruptions, all severities)", n * SEVERITIES, expected.get("cifar10c"))
    except UserError as e:
        report.bad(str(e))
        missing.append("cifar10c")
    report.manual += [f"{prepare_command('cifar10', root)} --download   (fetches {m} from its public source)" for m in missing]
    return report
