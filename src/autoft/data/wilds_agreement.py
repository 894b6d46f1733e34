"""Does our reader see a WILDS folder the way the `wilds` package itself sees it?

Our WILDS tasks (`wilds_tasks`) are built on the wilds dataset classes, but what a run trains and
is scored on is derived by our code: the split masks, the labels, the image path of every example
(`train/<filename>`, `images/rgb_img_<metadata row>.png`, Camelyon17's `patches/.../patch_....png`),
the FMoW regions and Camelyon17 hospitals, and FMoW's timestamps parsed under our ISO 8601 shim. The
reference is a second, fresh instance of the wilds class read only through its public API:
`get_subset(split)` for the membership and order of each split, `y_array` for the labels,
`get_input` for the images, `metadata_array`/`metadata_map` for the regions and hospitals, with
FMoW's timestamps parsed element by element (pandas' 'mixed', as pandas 1.x did for wilds 2.0), a
second opinion on the same strings.

A reading is plain arrays per split (`SplitReading`), so `disagreements` is a pure comparison that
the check (`wilds_tasks.check`, run by `scripts/prepare_data.py`) and the tests share: each
difference names the split and the first differing position.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

from autoft.data import wilds_compat

REFERENCE_CLASSES = {"iwildcam": "IWildCamDataset", "fmow": "FMoWDataset", "camelyon17": "Camelyon17Dataset"}
# groups worth comparing by name (FMoW's regions, Camelyon17's hospitals)
GROUP_FIELDS = {"iwildcam": None, "fmow": "region", "camelyon17": "hospital"}


@dataclass(frozen=True)
class SplitReading:
    """One reader's account of one split, in the split's order: dataset indices, labels, group names
    (None where not compared), and digests of the decoded images at a few positions."""

    indices: np.ndarray
    labels: np.ndarray
    groups: Optional[np.ndarray] = None
    images: dict[int, str] = field(default_factory=dict)


def sample_positions(n: int) -> list[int]:
    """First, middle and last position of a split of n: three decodes catch a shifted path rule."""
    return sorted({0, n // 2, n - 1}) if n else []


def image_digest(image: Image.Image) -> str:
    """The decoded RGB pixels (and size) as a short hash: equal images, equal digests."""
    rgb = image.convert("RGB")
    return hashlib.sha1(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()[:16]


def _digest_or_unreadable(load: Callable[[int], Image.Image], j: int) -> str:
    try:
        return image_digest(load(j))
    except Exception:  # missing or corrupt: the file check names it; here both readers just agree it is unreadable
        return "unreadable"


def sample_images(n: int, load: Callable[[int], Image.Image]) -> dict[int, str]:
    """Digests of the images at `sample_positions(n)`, each loaded by position with `load`."""
    return {j: _digest_or_unreadable(load, j) for j in sample_positions(n)}


def open_reference(name: str, root):
    """A fresh wilds dataset class on `root`, download=False, as a wilds user opens it."""
    if name == "iwildcam":
        from wilds.datasets.iwildcam_dataset import IWildCamDataset

        return IWildCamDataset(root_dir=str(root), download=False)
    if name == "camelyon17":
        from wilds.datasets.camelyon17_dataset import Camelyon17Dataset

        return Camelyon17Dataset(root_dir=str(root), download=False)
    from wilds.datasets.fmow_dataset import FMoWDataset

    with wilds_compat.fmow_timestamps("mixed"):
        return FMoWDataset(root_dir=str(root), download=False)


def reference_readings(ds, group_field: Optional[str] = None, images: bool = True) -> dict[str, SplitReading]:
    """Every split of a wilds dataset through its public API (get_subset, y_array, get_input)."""
    out = {}
    for split in ds.split_dict:
        sub = ds.get_subset(split)
        idx = np.asarray(sub.indices, dtype=np.int64)
        labels = np.asarray(ds.y_array)[idx].astype(np.int64)
        groups = None
        if group_field:
            column = np.asarray(ds.metadata_array[:, ds.metadata_fields.index(group_field)])[idx]
            names = (ds.metadata_map or {}).get(group_field)  # Camelyon17's hospitals have no names: their ids
            groups = np.asarray(names, dtype=object)[column] if names is not None else column.astype(str).astype(object)
        shown = sample_images(len(idx), lambda j: ds.get_input(int(idx[j]))) if images else {}
        out[split] = SplitReading(idx, labels, groups, shown)
    return out


def _first_difference(a: np.ndarray, b: np.ndarray) -> Optional[int]:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    if len(diff):
        return int(diff[0])
    return n if len(a) != len(b) else None


def _value(a: np.ndarray, i: int) -> str:
    return repr(a[i].item() if hasattr(a[i], "item") else a[i]) if i < len(a) else "(none: split ended)"


def disagreements(ours: dict[str, SplitReading], theirs: dict[str, SplitReading],
                  theirs_name: str = "wilds") -> list[str]:
    """Every way two readings of the same splits differ, one line each, naming the split and the
    first differing position (count, dataset indices, labels, groups, sampled images)."""
    out = []
    for split in list(theirs) + [s for s in ours if s not in theirs]:
        if split not in ours or split not in theirs:
            out.append(f"split '{split}': read by {'ours' if split in ours else theirs_name} only")
            continue
        a, b = ours[split], theirs[split]
        if len(a.labels) != len(b.labels):
            out.append(f"split '{split}': {len(a.labels)} examples in ours, {len(b.labels)} in {theirs_name}")
        for what in ("indices", "labels", "groups"):
            x, y = getattr(a, what), getattr(b, what)
            if x is None or y is None:
                continue
            i = _first_difference(x, y)
            if i is not None:
                out.append(f"split '{split}': {what} differ first at position {i}: ours {_value(x, i)}, "
                           f"{theirs_name} {_value(y, i)}")
        for j in sorted(set(a.images) & set(b.images)):
            if a.images[j] != b.images[j]:
                at = f"dataset index {b.indices[j]}" if j < len(b.indices) else "no such example"
                out.append(f"split '{split}': the image at position {j} ({at}) differs from {theirs_name}'s")
                break
    return out
