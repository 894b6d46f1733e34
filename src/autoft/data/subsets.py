"""Deterministic subsets: the search's class-balanced OOD-val subset and held-out ID validation sets.

The OOD-val subset is the only data the search scores trials on, so it must be (1) reproducible from
a seed, (2) written down beside the study (a resumed or joined study checks that it still draws the
same examples) and (3) disjoint from every test set (checked by example identity, see
`autoft.data.images.example_ids`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from autoft.errors import UserError
from autoft.io import atomic_write_text


def _grouped_permutation(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random order of all positions, grouped by class: (order, classes, start offset of each class)."""
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    classes, starts = np.unique(labels[order], return_index=True)
    return order, classes, starts


def class_balanced_indices(labels, n: Optional[int], seed: int, candidates=None) -> np.ndarray:
    """Sorted indices of n examples spread as evenly as possible over the classes present.

    Each class gets the same quota where it has enough examples; classes with fewer give all they
    have and the rest is shared among the others (water-filling); the last few examples go to
    randomly chosen classes. Deterministic in (labels, n, seed, candidates).
    candidates: restrict the draw to these positions (e.g. FMoW without the 'Other' region).
    n None or >= the number of candidates: all candidates.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pos = np.arange(len(labels)) if candidates is None else np.sort(np.asarray(candidates, dtype=np.int64))
    if n is None or n >= len(pos):
        return pos
    if n < 0:
        raise UserError(f"ood_val_size must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    order, classes, starts = _grouped_permutation(labels[pos], rng)
    caps = np.diff(np.append(starts, len(order)))
    # the largest level t with sum(min(cap, t)) <= n
    lo, hi = 0, int(caps.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(caps, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(caps, lo)
    rest = n - int(quota.sum())
    if rest:
        room = np.flatnonzero(caps > lo)  # every such class can take one more (rest < len(room))
        quota[rng.choice(room, size=rest, replace=False)] += 1
    chosen = np.concatenate([order[s: s + q] for s, q in zip(starts, quota)])
    return np.sort(pos[chosen])


def stratified_holdout(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out) with round(fraction x count) held out per class."""
    if not 0 < fraction < 1:
        raise UserError(f"id_val_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    order, classes, starts = _grouped_permutation(labels, np.random.default_rng(seed))
    caps = np.diff(np.append(starts, len(order)))
    take = np.rint(caps * fraction).astype(np.int64)
    held = np.concatenate([order[s: s + t] for s, t in zip(starts, take)]) if len(order) else np.zeros(0, np.int64)
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def save_subset(directory, name: str, indices, example_ids, info: Optional[Mapping] = None,
                what: str = "OOD-val subset") -> Path:
    """Write `<directory>/<name>.json` (atomically) with the chosen indices and their example ids.

    If the file exists (a resumed study, or another worker of it), it must describe the same
    examples: a study never changes its OOD-val subset (or its drawn ID split, `what`) midway.
    Returns the file's path.
    """
    path = Path(directory) / f"{name}.json"
    record = {"name": name, "info": dict(info or {}), "n": int(len(indices)),
              "indices": [int(i) for i in indices], "example_ids": [str(i) for i in example_ids]}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} exists but cannot be read ({e}); delete it to redraw the {what}") from None
        if old.get("indices") != record["indices"] or old.get("example_ids") != record["example_ids"]:
            raise UserError(f"{path} records a different {what} than the one drawn now (the data on disk or "
                            f"the split settings changed since this study started). Keep the settings of the study, "
                            f"or start a new study directory.")
        return path
    atomic_write_text(path, json.dumps(record, indent=1))
    return path


def check_disjoint(ood_val_ids, tests: Mapping[str, np.ndarray], what: str = "the OOD-val subset") -> None:
    """Raise a UserError if any example of `ood_val_ids` also belongs to a test set (by example id)."""
    ood = set(map(str, ood_val_ids))
    for name, ids in tests.items():
        shared = ood.intersection(map(str, ids))
        if shared:
            sample = ", ".join(sorted(shared)[:5])
            raise UserError(f"{what} shares {len(shared)} example(s) with the test set '{name}' (e.g. {sample}); "
                            f"the search must never see a test example. Choose an OOD-val source disjoint from "
                            f"every test set.")
