"""ImageNet and its distribution shifts (docs/design.md section 4).

On disk, relative to `root` (each path can be overridden through `paths`):

| key | default | layout |
|---|---|---|
| train | imagenet/train | `<wnid>/*.JPEG` (ILSVRC-2012 train, 1000 folders) |
| val | imagenet/val | `<wnid>/*.JPEG` (the 50,000 val images sorted into class folders) |
| imagenet_c | ImageNet-C | `<corruption>/<severity>/<wnid>/<val file name>` |
| imagenet_v2 | imagenetv2-matched-frequency-format-val | `<class index 0..999>/*.jpeg` |
| imagenet_r | imagenet-r | `<wnid>/*.jpg`, 200 folders |
| imagenet_a | imagenet-a | `<wnid>/*.jpg`, 200 folders |
| imagenet_sketch | sketch | `<wnid>/*.JPEG`, 1000 folders |
| objectnet | objectnet-1.0 | `images/<folder>/*.png` and `mappings/*.json` of the release |

Class order: the sorted wnids of the train folders (the usual ImageFolder order, which is also the
order of open_clip's IMAGENET_CLASSNAMES). Splits:
- ID train / ID val: a stratified hold-out (`id_val_fraction`) of ILSVRC train, so that the final
  epoch is never selected on a test set.
- OOD-val (search): `ood_val_size` class-balanced images of ImageNet-C (`corruptions` at
  `severity`). ImageNet-C corrupts the ImageNet val images, so each one carries the id of its
  source val image.
- Tests: `imagenet` (ILSVRC val without the source images of the OOD-val subset, so that the search
  never saw any version of a test image), and each of `tests`: ImageNet-V2, -R and -A (200-class
  subsets: their labels live in their own 200-class space and `class_map` picks their logits),
  -Sketch, ObjectNet (113 classes; a class may stand for several ImageNet classes, scored by the
  max of their logits; the 2-pixel red frame of every ObjectNet image is cropped away).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from autoft.data.base import Split, Task
from autoft.data.images import CheckReport, FolderListing, ImageFiles, list_class_folders, prepare_command, require
from autoft.data.imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from autoft.data.subsets import check_disjoint, class_balanced_indices, save_subset, stratified_holdout
from autoft.errors import UserError
from autoft.names import IMAGENET_TESTS

log = logging.getLogger(__name__)

DEFAULT_PATHS = {
    "train": "imagenet/train",
    "val": "imagenet/val",
    "imagenet_c": "ImageNet-C",
    "imagenet_v2": "imagenetv2-matched-frequency-format-val",
    "imagenet_r": "imagenet-r",
    "imagenet_a": "imagenet-a",
    "imagenet_sketch": "sketch",
    "objectnet": "objectnet-1.0",
}
IMAGENET_C_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                          "elastic_transform", "pixelate", "jpeg_compression")
# image counts of the public releases (ObjectNet: the images of its 113 ImageNet-overlapping classes;
# ImageNet-C: per corruption at one severity)
IMAGENET_COUNTS = {"train": 1281167, "val": 50000, "imagenet_v2": 10000, "imagenet_r": 30000, "imagenet_a": 7500,
                   "imagenet_sketch": 50889, "objectnet": 18574, "imagenet_c": 50000}
OBJECTNET_BORDER = 2
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def imagenet_templates() -> list[str]:
    """The 80 CLIP prompt templates (open_clip ships them as functions of the class name)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def imagenet_classnames(wnids: Sequence[str]) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    index = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    return [IMAGENET_CLASSNAMES[index[w]] for w in wnids]


def _paths(root, paths: Optional[Mapping[str, str]]) -> dict[str, Path]:
    unknown = set(paths or {}) - set(DEFAULT_PATHS)
    if unknown:
        raise UserError(f"dataset.task.paths: unknown key(s) {sorted(unknown)}; valid: {sorted(DEFAULT_PATHS)}")
    merged = {**DEFAULT_PATHS, **(paths or {})}
    return {k: Path(root) / v for k, v in merged.items()}


def _train_classes(train_dir: Path, root) -> list[str]:
    require(train_dir, "imagenet", root, "ImageNet train folder")
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    unknown = [w for w in wnids if w not in set(IMAGENET_WNIDS)]
    if not wnids or unknown:
        raise UserError(f"{train_dir} must hold one folder per ImageNet class named by its WordNet id (n01440764, ...); "
                        f"found {len(wnids)} folders" + (f", unknown: {unknown[:5]}" if unknown else "") +
                        f". Prepare it with: {prepare_command('imagenet', root)}")
    if len(wnids) != len(IMAGENET_WNIDS):
        log.warning("%s has %d of the 1000 ImageNet classes; ImageNet-V2 and ObjectNet labels assume all 1000",
                    train_dir, len(wnids))
    return wnids


def _val_listing(val_dir: Path, wnids: list[str], root, index_dir) -> FolderListing:
    require(val_dir, "imagenet", root, "ImageNet val folder")
    if not any(e.is_dir() for e in os.scandir(val_dir)):
        raise UserError(f"{val_dir} holds no class folders: the ILSVRC-2012 val images must be sorted into "
                        f"<wnid>/ folders first. See: {prepare_command('imagenet', root)}")
    return list_class_folders(val_dir, wnids, index_dir)


def _source_ids(relpaths: Sequence[str]) -> np.ndarray:
    # ImageNet-C keeps the val file names: the id of a val image and of its corruptions
    return np.array([f"imagenet-val:{os.path.basename(p)}" for p in relpaths], dtype=object)


def _subset_classes(directory: Path, wnids: list[str], canonical: Sequence[str], what: str, root) -> list[str]:
    folders = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    foreign = [w for w in folders if w not in set(wnids)]
    if foreign:
        raise UserError(f"{what} at {directory}: folder(s) {foreign[:5]} are not ImageNet classes of the train folder")
    if len(wnids) == len(IMAGENET_WNIDS) and folders != sorted(canonical):
        raise UserError(f"{what} at {directory} has {len(folders)} class folders, not the {len(canonical)} of the "
                        f"release; re-extract it ({prepare_command('imagenet', root)})")
    return folders


def objectnet_classes(mappings_dir, wnids: Sequence[str]) -> tuple[list[str], list[str], list[list[int]]]:
    """(image folders, ObjectNet class names, class_map) of ObjectNet's ImageNet-overlapping classes.

    The release's mapping files chain folder -> ObjectNet label -> ImageNet label names (';'-separated)
    -> ILSVRC-2012 id (line number in imagenet_to_label_2012_v2) -> PyTorch class index (the sorted-wnid
    order of the train folders)."""
    m = Path(mappings_dir)
    folder_to_label = json.loads((m / "folder_to_objectnet_label.json").read_text())
    objectnet_to_imagenet = json.loads((m / "objectnet_to_imagenet_1k.json").read_text())
    pytorch_to_2012 = json.loads((m / "pytorch_to_imagenet_2012_id.json").read_text())
    lines = [line.strip() for line in (m / "imagenet_to_label_2012_v2").read_text().splitlines()]
    id2012_to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    label_to_pytorch = {line: id2012_to_pytorch[j] for j, line in enumerate(lines) if line and j in id2012_to_pytorch}
    label_to_folder = {v: k for k, v in folder_to_label.items()}
    entries = []
    for label, names in objectnet_to_imagenet.items():
        if label not in label_to_folder:
            raise UserError(f"{m}: ObjectNet class '{label}' has no image folder in folder_to_objectnet_label.json")
        missing = [n for n in names.split("; ") if n not in label_to_pytorch]
        if missing:
            raise UserError(f"{m}: ImageNet label(s) {missing} of ObjectNet class '{label}' not in imagenet_to_label_2012_v2")
        idx = sorted({label_to_pytorch[n] for n in names.split("; ")})
        if max(idx) >= len(wnids):
            raise UserError(f"{m}: ObjectNet class '{label}' maps to ImageNet class {max(idx)}, beyond the "
                            f"{len(wnids)} train classes")
        entries.append((label_to_folder[label], label, idx))
    entries.sort()
    return [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]


def _test_split(name: str, p: dict[str, Path], wnids: list[str], root, index_dir) -> Split:
    directory = p[name]
    what = {"imagenet_v2": "ImageNet-V2", "imagenet_r": "ImageNet-R", "imagenet_a": "ImageNet-A",
            "imagenet_sketch": "ImageNet-Sketch", "objectnet": "ObjectNet"}[name]
    require(directory, "imagenet", root, what)
    class_map, border = None, 0
    if name == "imagenet_v2":
        listing = list_class_folders(directory, [str(i) for i in range(len(wnids))], index_dir)  # folder k = class k
    elif name in ("imagenet_r", "imagenet_a"):
        canonical = IMAGENET_R_WNIDS if name == "imagenet_r" else IMAGENET_A_WNIDS
        classes = _subset_classes(directory, wnids, canonical, what, root)
        listing = list_class_folders(directory, classes, index_dir)
        class_map = [[wnids.index(w)] for w in classes]
    elif name == "imagenet_sketch":
        listing = list_class_folders(directory, wnids, index_dir)
    else:
        for f in OBJECTNET_MAPPINGS:
            require(directory / "mappings" / f, "imagenet", root, "ObjectNet mapping file")
        require(directory / "images", "imagenet", root, "ObjectNet images")
        folders, _, class_map = objectnet_classes(directory / "mappings", wnids)
        listing = list_class_folders(directory / "images", folders, index_dir)
        directory, border = directory / "images", OBJECTNET_BORDER
    if len(listing.labels) == 0:
        raise UserError(f"{what} at {directory} holds no images. Prepare it with: {prepare_command('imagenet', root)}")
    files = ImageFiles(directory, listing.relpaths, listing.labels, id_prefix=name, crop_border=border,
                       dataset="imagenet", data_root=root)
    return Split(name, files, listing.labels, class_map=class_map)


def imagenet_c_pool(c_dir: Path, corruptions: Sequence[str], severity: int, wnids: list[str], root, index_dir):
    """(relative paths, labels, source ids, corruption index) of every ImageNet-C image at `severity`."""
    if not corruptions:
        raise UserError("dataset.task.corruptions is empty: name at least one ImageNet-C corruption")
    rel, labels, corr = [], [], []
    for k, c in enumerate(corruptions):
        d = require(c_dir / c / str(severity), "imagenet", root, f"ImageNet-C '{c}' severity {severity}")
        listing = list_class_folders(d, wnids, index_dir)
        rel += [f"{c}/{severity}/{r}" for r in listing.relpaths]
        labels.append(listing.labels)
        corr.append(np.full(len(listing.labels), k, dtype=np.int64))
    return rel, np.concatenate(labels), _source_ids(rel), np.concatenate(corr)


def imagenet(root, ood_val_size: Optional[int] = 1000, subset_seed: int = 0, subset_dir=None,
             id_val_fraction: float = 0.01, split_seed: int = 0,
             corruptions: Sequence[str] = IMAGENET_C_CORRUPTIONS, severity: int = 5,
             tests: Sequence[str] = IMAGENET_TESTS, paths: Optional[Mapping[str, str]] = None, index_dir=None,
             templates: Optional[Sequence[str]] = None, metric: str = "accuracy", higher_is_better: bool = True) -> Task:
    """ImageNet with its OOD-val source (ImageNet-C) and OOD tests; see the module docstring.

    id_val_fraction / split_seed: the ID val held out of train (stratified, fixed across searches).
    ood_val_size / subset_seed: the class-balanced ImageNet-C subset the search scores on.
    subset_dir: where the subset's indices are recorded (beside the study).
    index_dir: where folder listings are cached (ImageNet train has 1.28M files).
    """
    unknown = [t for t in tests if t not in IMAGENET_TESTS]
    if unknown:
        raise UserError(f"dataset.task.tests: unknown ImageNet test set(s) {unknown}; valid: {list(IMAGENET_TESTS)}")
    p = _paths(root, paths)
    wnids = _train_classes(p["train"], root)
    train_all = list_class_folders(p["train"], wnids, index_dir)
    keep, held = stratified_holdout(train_all.labels, id_val_fraction, split_seed)
    train_files = ImageFiles(p["train"], train_all.relpaths, train_all.labels, id_prefix="imagenet-train",
                             dataset="imagenet", data_root=root)
    train = Split("train", train_files.select(keep), train_all.labels[keep])
    id_val = Split("id_val", train_files.select(held), train_all.labels[held])

    rel, pool_labels, pool_ids, pool_corr = imagenet_c_pool(p["imagenet_c"], corruptions, severity, wnids, root, index_dir)
    chosen = class_balanced_indices(pool_labels, ood_val_size, subset_seed)
    ood_files = ImageFiles(p["imagenet_c"], [rel[i] for i in chosen], pool_labels[chosen], ids=pool_ids[chosen],
                           dataset="imagenet", data_root=root)
    ood_val = Split("ood_val", ood_files, pool_labels[chosen], groups=pool_corr[chosen], group_names=list(corruptions))

    val = _val_listing(p["val"], wnids, root, index_dir)
    val_ids = _source_ids(val.relpaths)
    used = set(ood_files.example_ids())
    rest = np.array([i for i, x in enumerate(val_ids) if x not in used], dtype=np.int64)
    val_files = ImageFiles(p["val"], val.relpaths, val.labels, ids=val_ids, dataset="imagenet", data_root=root)
    test_splits = {"imagenet": Split("imagenet", val_files.select(rest), val.labels[rest])}
    for name in tests:
        test_splits[name] = _test_split(name, p, wnids, root, index_dir)

    check_disjoint(ood_files.example_ids(), {k: s.dataset.example_ids() for k, s in test_splits.items()})
    if subset_dir:
        save_subset(subset_dir, "ood_val_imagenet", chosen, ood_files.example_ids(),
                    {"dataset": "imagenet", "pool": f"ImageNet-C severity {severity}: {list(corruptions)}",
                     "n": ood_val_size, "seed": subset_seed})
    return Task(name="imagenet", classnames=imagenet_classnames(wnids),
                templates=list(templates or imagenet_templates()), train=train, id_val=id_val, ood_val=ood_val,
                tests=test_splits, metric=metric, higher_is_better=higher_is_better, id_test="imagenet")


# ------------------------------------------------------------------------------------------------
# preparing and checking

# public archives (prepare_data.py --download); the rest needs a licence or a login
DOWNLOADS = {
    "imagenet_v2": [("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz", "")],
    "imagenet_r": [("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", "")],
    "imagenet_a": [("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", "")],
    "imagenet_c": [(f"https://zenodo.org/records/2235448/files/{part}.tar", "ImageNet-C")
                   for part in ("noise", "blur", "weather", "digital")],
}


def manual_steps(root, p: dict[str, Path], missing: Sequence[str]) -> list[str]:
    steps = {
        "train": f"ILSVRC-2012 (needs an account at https://image-net.org): extract ILSVRC2012_img_train.tar into "
                 f"{p['train']} and each class tar inside it into {p['train']}/<wnid>/",
        "val": f"extract ILSVRC2012_img_val.tar into {p['val']}, then sort the images into {p['val']}/<wnid>/ folders "
               f"(python scripts/prepare_data.py --dataset imagenet --root {root} --sort-val LOC_val_solution.csv, "
               f"with LOC_val_solution.csv from the ImageNet Kaggle challenge, or the usual valprep.sh)",
        "imagenet_sketch": f"download ImageNet-Sketch (https://github.com/HaohanWang/ImageNet-Sketch, ImageNet-Sketch.zip) "
                           f"and extract it so that {p['imagenet_sketch']}/<wnid>/ exists",
        "objectnet": f"download objectnet-1.0.zip from https://objectnet.dev (accept the licence; the zip password is on "
                     f"the download page) and extract it so that {p['objectnet']}/images and {p['objectnet']}/mappings exist",
    }
    public = {k: f"{prepare_command('imagenet', root)} --download   (fetches {k} from its public archive)" for k in DOWNLOADS}
    return [steps.get(k) or public[k] for k in missing]


def check(root, paths: Optional[Mapping[str, str]] = None, expected: Optional[Mapping[str, int]] = None,
          corruptions: Sequence[str] = IMAGENET_C_CORRUPTIONS, severity: int = 5, tests: Sequence[str] = IMAGENET_TESTS,
          verify_images: bool = False) -> CheckReport:
    """Check every ImageNet part on disk: folders, class sets (the class masks), image counts."""
    report = CheckReport("imagenet", str(root))
    expected = dict(IMAGENET_COUNTS if expected is None else expected)
    p = _paths(root, paths)
    missing: list[str] = []
    try:
        wnids = _train_classes(p["train"], root)
    except UserError as e:
        report.bad(str(e))
        report.manual += manual_steps(root, p, ["train"])
        return report
    if wnids == list(IMAGENET_WNIDS):
        report.good("train: the 1000 ImageNet class folders")
    else:
        report.bad(f"train: {len(wnids)} class folders, expected the 1000 ImageNet wnids")
    train = list_class_folders(p["train"], wnids)
    report.count("train", len(train.labels), expected.get("train"))
    parts = {"train": train}
    try:
        val = _val_listing(p["val"], wnids, root, None)
        report.count("val", len(val.labels), expected.get("val"))
        parts["val"] = val
    except UserError as e:
        report.bad(str(e))
        missing.append("val")
    for c in corruptions:
        d = p["imagenet_c"] / c / str(severity)
        if not d.is_dir():
            report.bad(f"ImageNet-C: {d} missing")
            if "imagenet_c" not in missing:
                missing.append("imagenet_c")
            continue
        listing = list_class_folders(d, wnids)
        report.count(f"ImageNet-C {c} severity {severity}", len(listing.labels), expected.get("imagenet_c"))
        parts[f"imagenet_c/{c}"] = listing
    for name in tests:
        try:
            split = _test_split(name, p, wnids, root, None)
        except UserError as e:
            report.bad(str(e))
            missing.append(name)
            continue
        report.count(name, len(split), expected.get(name))
        if split.class_map is not None:
            report.good(f"{name}: class mask of {len(split.class_map)} classes")
        files = split.dataset
        report.files([files.path(i) for i in range(len(files))], name, verify_images)
    for name, listing in parts.items():
        base = {"train": p["train"], "val": p["val"]}.get(name) or p["imagenet_c"] / name.split("/")[1] / str(severity)
        report.files([os.path.join(base, r) for r in listing.relpaths], name, verify_images)
    report.manual += manual_steps(root, p, missing)
    return report


def sort_val(val_dir, solution_csv) -> int:
    """Move flat ILSVRC-2012 val images into <wnid>/ folders using Kaggle's LOC_val_solution.csv
    (columns ImageId, PredictionString = '<wnid> x y x y ...'). Returns the number moved."""
    import pandas as pd

    val_dir = Path(val_dir)
    df = pd.read_csv(solution_csv)
    moved = 0
    for image_id, pred in zip(df["ImageId"], df["PredictionString"]):
        wnid = str(pred).split()[0]
        src = val_dir / f"{image_id}.JPEG"
        if src.is_file():
            (val_dir / wnid).mkdir(exist_ok=True)
            os.replace(src, val_dir / wnid / src.name)
            moved += 1
    return moved
