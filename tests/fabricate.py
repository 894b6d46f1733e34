"""Miniature datasets in the exact on-disk formats of the real ones (a few dozen tiny images each).

Each `make_*` writes under `root` what the real release puts there and returns a small manifest
(split sizes, classes) for the tests to compare against.
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

import autoft.data

RNG_SEED = 1234


def _image(rng, size=8) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _save(path: Path, rng, size=8, fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(rng, size).save(path, format=fmt)


# ------------------------------------------------------------------------------------------------
# WILDS

def _iwildcam_classes(n: int) -> list[dict]:
    """The first n rows (y = 0..n-1) of the shipped iWildCam class table: real category ids and names."""
    path = Path(autoft.data.__file__).resolve().parent / "iwildcam_classes.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))[:n]


IWILDCAM_CLASSES = _iwildcam_classes(5)  # y, category_id, english, latin
IWILDCAM_NAMES = [r["latin"] for r in IWILDCAM_CLASSES]  # categories.csv's `name` column (Latin)
IWILDCAM_ENGLISH = [r["english"] for r in IWILDCAM_CLASSES]  # the zero-shot head's names


IWILDCAM_LOCATIONS = {"train": (0, 1, 2), "id_val": (0, 1, 2), "id_test": (0, 1, 2), "val": (3, 4), "test": (5, 6)}
_IWILDCAM_LAYOUT = {  # the default 5-class tree: split -> (labels, locations); tests rely on these exact rows
    "train": ([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 1], [0, 1, 2] * 4),
    "id_val": ([0, 1, 2, 3, 1, 2], [0, 1, 2] * 2),
    "id_test": ([0, 1, 2, 4, 1, 3], [0, 1, 2] * 2),
    "val": ([0, 0, 0, 0, 1, 1, 1, 2, 2, 3], [3, 4] * 5),
    "test": ([0, 1, 2, 3, 4, 0, 1, 2], [5, 6] * 4),
}


def _photo(rng, size: tuple[int, int]) -> Image.Image:
    """A cheap stand-in for a camera-trap photo: smooth colour gradients plus a little sensor noise.

    Pure noise at 1024x768 compresses to over 1 MB per JPEG and is slow to encode; this compresses to
    about 200 KB at quality 85 (real iWildCam images are 100-300 KB) in about 15 ms."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _save_wildcam_image(path: Path, rng, size: tuple[int, int]) -> None:
    """Tiny images stay random noise (the default tree's exact bytes); large ones are `_photo`s."""
    if size == (8, 8):
        _save(path, rng)
    else:
        _photo(rng, size).save(path, format="JPEG", quality=85)


def _iwildcam_layout(n_classes: int, per_class: dict[str, int], sizes: dict[str, int] = {}) -> dict:
    """split -> (labels, locations): `per_class[split]` examples of every class in each split, so every
    class is in train; a split in `sizes` instead holds exactly that many, its labels cycling over the
    classes (0, 1, ..., so that small evaluation splits stay cheap at 182 classes). The ID splits take
    the ID camera traps in turn between them, the OOD splits
    their own; the traps actually used are then numbered 0..k-1, as wilds requires of
    `location_remapped` (no gaps), ID first, then OOD val, then OOD test."""
    layout, turn = {}, {}
    for split, locs in IWILDCAM_LOCATIONS.items():
        ys = ([i % n_classes for i in range(sizes[split])] if split in sizes
              else [y for y in range(n_classes) for _ in range(per_class[split])])
        start = turn.get(locs, 0)
        layout[split] = (ys, [locs[(start + i) % len(locs)] for i in range(len(ys))])
        turn[locs] = start + len(ys)
    used = sorted({loc for _, locs in layout.values() for loc in locs})
    renumber = {loc: i for i, loc in enumerate(used)}
    return {split: (ys, [renumber[loc] for loc in locs]) for split, (ys, locs) in layout.items()}


def make_iwildcam(root, n_classes: int = 5, image_size: tuple[int, int] = (8, 8), per_class=None,
                  sizes: dict | None = None) -> dict:
    """iwildcam_v2.0/{RELEASE_v2.0.txt, metadata.csv, categories.csv, train/*.jpg}.

    Locations: ID splits 0-2, OOD val 3-4, OOD test 5-6 (camera traps never shared across ID/OOD;
    with few examples, only the traps used, renumbered without gaps as wilds requires).
    `n_classes` (up to 182): labels 0..n-1 of the shipped class table. `image_size` (width, height)
    of the JPEGs. `per_class`: examples of each class per split, an int for every split or a dict
    {split: n} (missing splits: 1); `sizes` {split: n} fixes a split's total instead (labels 0, 1, ...
    in turn; the full-scale rehearsal keeps its evaluation splits small this way). Without `per_class`
    or `sizes` and with 5 classes the tree is the fixed
    36-image one the tests know row by row; otherwise train holds 2 of each class, the others 1."""
    table = _iwildcam_classes(n_classes)
    if not 1 <= n_classes == len(table):
        raise ValueError(f"n_classes must be 1..{len(_iwildcam_classes(10_000))}, not {n_classes}")
    if per_class is None and not sizes and n_classes == 5:
        layout = _IWILDCAM_LAYOUT
    else:
        counts = per_class if isinstance(per_class, dict) else \
            {s: per_class for s in IWILDCAM_LOCATIONS} if per_class is not None else {"train": 2}
        counts = {s: int(counts.get(s, 1)) for s in IWILDCAM_LOCATIONS}
        if counts["train"] < 1 or min(counts.values()) < 0:
            raise ValueError(f"per_class: at least 1 per class in train and none negative, not {counts}")
        if any(n < 1 for n in (sizes or {}).values()) or set(sizes or {}) - set(IWILDCAM_LOCATIONS):
            raise ValueError(f"sizes: at least 1 example per split of {sorted(IWILDCAM_LOCATIONS)}, not {sizes}")
        layout = _iwildcam_layout(n_classes, counts, sizes or {})
    rng = np.random.default_rng(RNG_SEED)
    size = tuple(int(v) for v in image_size)
    d = Path(root) / "iwildcam_v2.0"
    (d / "train").mkdir(parents=True, exist_ok=True)
    (d / "RELEASE_v2.0.txt").write_text("v2.0 (fabricated for tests)\n")
    rows, k = [], 0
    for split, (ys, locs) in layout.items():
        for y, loc in zip(ys, locs):
            name = f"{k:04x}a1b2c3d4-{split}.jpg"
            _save_wildcam_image(d / "train" / name, rng, size)
            rows.append(f"{split},{loc},loc{loc},{k},seq{k},{y},2013-06-{1 + k % 28:02d} 16:53:{k % 60:02d}.000,{name},img{k}")
            k += 1
    (d / "metadata.csv").write_text(
        "split,location_remapped,location,sequence_remapped,sequence,y,datetime,filename,image_id\n" + "\n".join(rows) + "\n")
    # as the release: columns y, category_id, name (Latin); the real category ids of labels 0..n-1
    cats = ["y,category_id,name"] + [f"{r['y']},{r['category_id']},{r['latin']}" for r in table]
    cats += ["99999,900,homo sapiens", "99999,901,bos taurus"]  # categories absent from the release
    (d / "categories.csv").write_text("\n".join(cats) + "\n")
    return {"counts": {s: len(v[0]) for s, v in layout.items()}, "classes": n_classes,
            "labels": {s: list(v[0]) for s, v in layout.items()}, "classnames": [r["english"] for r in table],
            "latin": [r["latin"] for r in table], "image_size": size}


FMOW_REGIONS = {"USA": "Americas", "FRA": "Europe", "KEN": "Africa", "JPN": "Asia"}  # others: 'Other'


def fmow_split(column: str, year: int):
    """The official split of one rgb_metadata.csv row, by the rule of the WILDS paper: the `split`
    column says train/val/test, the year says ID (before 2013), OOD val (2013-2015) or OOD test
    (from 2016); 'seq' rows are sequestered; other combinations belong to no split (None)."""
    if column == "seq":
        return "seq"
    period = "id" if year < 2013 else "ood_val" if year < 2016 else "ood_test"
    return {("train", "id"): "train", ("val", "id"): "id_val", ("test", "id"): "id_test",
            ("val", "ood_val"): "val", ("test", "ood_test"): "test"}.get((column, period))


def _save_sized(path: Path, rng, size, fmt: str) -> None:
    """An 8x8 noise image (the default trees' exact bytes) or, with `size` (width, height), a `_photo`."""
    if size is None:
        _save(path, rng, fmt=fmt)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, tuple(int(v) for v in size)).save(path, format=fmt)


def make_fmow(root, image_size=None) -> dict:
    """fmow_v1.1/{RELEASE_v1.1.txt, rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<row>.png}.
    `image_size` (width, height): realistic PNGs of that size instead of 8x8 noise.

    Timestamps mix whole and fractional seconds, as in the real metadata. Split rule of the
    official scheme: before 2013 ID, 2013-2015 OOD val, from 2016 OOD test; 'seq' rows are
    sequestered (dropped, leaving a gap in the image numbering)."""
    rng = np.random.default_rng(RNG_SEED + 1)
    d = Path(root) / "fmow_v1.1"
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "RELEASE_v1.1.txt").write_text("v1.1 (fabricated for tests)\n")
    (d / "country_code_mapping.csv").write_text(
        "name,alpha-2,alpha-3,country-code,region\n"
        "United States of America,US,USA,840,Americas\nFrance,FR,FRA,250,Europe\nKenya,KE,KEN,404,Africa\n"
        "Japan,JP,JPN,392,Asia\n")
    cats = ["airport", "barn", "dam", "zoo"]
    countries = ["USA", "FRA", "KEN", "JPN", "XKX"]  # XKX: no region in the mapping -> 'Other'
    plan = []  # (split column, year, category, country)
    for i in range(12):
        plan.append(("train", 2002 + i % 10, cats[i % 4], countries[i % 4]))
    plan.append(("train", 2014, "dam", "USA"))  # a 'train' row from the OOD years: in no split
    for i in range(6):
        plan.append(("val", 2008 + i % 4, cats[i % 4], countries[(i + 1) % 4]))  # id_val
    plan.append(("seq", 2010, "zoo", "USA"))
    for i in range(14):
        plan.append(("val", 2013 + i % 3, cats[i % 4], countries[i % 5]))  # OOD val, 'Other' included
    for i in range(6):
        plan.append(("test", 2009 + i % 3, cats[(i + 2) % 4], countries[i % 4]))  # id_test
    for i in range(10):
        plan.append(("test", 2016 + i % 2, cats[i % 4], countries[i % 5]))  # OOD test, 'Other' included
    rows = []
    for row, (split, year, cat, cc) in enumerate(plan):
        ts = f"{year}-0{1 + row % 9}-1{row % 10}T10:{row % 60:02d}:11" + (".123Z" if row % 2 else "Z")
        rows.append(f"{split},{cat}_{row}_0_rgb.jpg,train/{cat}/{cat}_{row},,4326,{cat},True,224,224,{cc},0,{ts},1.0,2.0")
        if split != "seq":
            _save_sized(d / "images" / f"rgb_img_{row}.png", rng, image_size, "PNG")
    (d / "rgb_metadata.csv").write_text(
        "split,img_filename,img_path,spatial_reference,epsg,category,visible,img_width,img_height,country_code,"
        "cloud_cover,timestamp,lat,lon\n" + "\n".join(rows) + "\n")
    rows = [{"split": fmow_split(split, year), "year": year, "category": cat, "region": FMOW_REGIONS.get(cc, "Other")}
            for split, year, cat, cc in plan]  # what each metadata row means, one dict per row
    return {"counts": {"train": 12, "id_val": 6, "val": 14, "id_test": 6, "test": 10}, "classes": 62, "rows": rows}


# ------------------------------------------------------------------------------------------------
# ImageNet family

IMAGENET_WNIDS = ["n01440764", "n01443537", "n01498041", "n02086240", "n02708093", "n03196217", "n04254680", "n07753592"]
LABEL_2012 = ["tench, Tinca tinca", "goldfish, Carassius auratus", "stingray", "Shih-Tzu", "analog clock",
              "digital clock", "soccer ball", "banana"]
PYTORCH_TO_2012 = [3, 5, 0, 7, 1, 6, 2, 4]  # a permutation, as in the real mapping file
R_WNIDS = ["n01443537", "n01498041", "n02086240", "n04254680", "n07753592"]
A_WNIDS = ["n01498041", "n03196217", "n07753592"]
C_CORRUPTIONS = ["gaussian_noise", "fog"]


def make_imagenet(root, train_per_class=6, val_per_class=3, image_size=None) -> dict:
    """The ImageNet family's folders; `image_size` (width, height): realistic JPEGs of that size for
    train, val, ImageNet-C and the test sets instead of 8x8 noise (ObjectNet stays 12x12)."""
    rng = np.random.default_rng(RNG_SEED + 2)
    root = Path(root)
    val_names = {}
    k = 1
    for w in IMAGENET_WNIDS:
        for j in range(train_per_class):
            _save_sized(root / "imagenet" / "train" / w / f"{w}_{j}.JPEG", rng, image_size, "JPEG")
        val_names[w] = []
        for j in range(val_per_class):
            name = f"ILSVRC2012_val_{k:08d}.JPEG"
            k += 1
            _save_sized(root / "imagenet" / "val" / w / name, rng, image_size, "JPEG")
            val_names[w].append(name)
    for c in C_CORRUPTIONS:  # ImageNet-C: corrupted val images, same file names, one folder per severity
        for sev in (3, 5):
            for w in IMAGENET_WNIDS:
                for name in val_names[w]:
                    _save_sized(root / "ImageNet-C" / c / str(sev) / w / name, rng, image_size, "JPEG")
    for i in range(len(IMAGENET_WNIDS)):  # ImageNet-V2: folders named by class index
        for j in range(2):
            _save_sized(root / "imagenetv2-matched-frequency-format-val" / str(i) / f"{i:02d}{j}f3e9a.jpeg", rng,
                        image_size, "JPEG")
    for w in R_WNIDS:
        for j in range(2):
            _save_sized(root / "imagenet-r" / w / f"art_{j}.jpg", rng, image_size, "JPEG")
    (root / "imagenet-r" / "README.txt").write_text("ImageNet-R (fabricated)\n")
    for w in A_WNIDS:
        for j in range(2):
            _save_sized(root / "imagenet-a" / w / f"0.{j}_{w}.jpg", rng, image_size, "JPEG")
    (root / "imagenet-a" / "README.txt").write_text("ImageNet-A (fabricated)\n")
    for w in IMAGENET_WNIDS:
        _save_sized(root / "sketch" / w / "sketch_1.JPEG", rng, image_size, "JPEG")
    # ObjectNet: images with a red border, mapping files of the release
    on = root / "objectnet-1.0"
    folders = {"alarm_clock": "Alarm clock", "banana": "Banana", "air_freshener": "Air freshener"}
    for f in folders:
        for j in range(3 if f != "air_freshener" else 2):
            img = np.zeros((12, 12, 3), dtype=np.uint8)
            img[:, :] = (255, 0, 0)
            img[2:-2, 2:-2] = rng.integers(0, 200, (8, 8, 3), dtype=np.uint8) // 2 + (0, 60, 60)
            (on / "images" / f).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(on / "images" / f / f"{j:04x}.png")
    m = on / "mappings"
    m.mkdir(parents=True, exist_ok=True)
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(folders, indent=2))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps({"Alarm clock": "analog clock; digital clock",
                                                                 "Banana": "banana"}, indent=2))
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): v for i, v in enumerate(PYTORCH_TO_2012)}))
    inverse = {v: i for i, v in enumerate(PYTORCH_TO_2012)}
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(LABEL_2012[inverse[j]] for j in range(len(LABEL_2012))) + "\n")
    n = len(IMAGENET_WNIDS)
    return {"classes": n, "train": n * train_per_class, "val": n * val_per_class, "v2": 2 * n, "r": 2 * len(R_WNIDS),
            "a": 2 * len(A_WNIDS), "sketch": n, "objectnet": 6, "c_per_corruption": n * val_per_class}


# ------------------------------------------------------------------------------------------------
# CIFAR-10 family

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10C = ["gaussian_noise", "fog", "contrast"]


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root, per_batch=10, n_test=20) -> dict:
    """cifar-10-batches-py (pickled batches, bytes keys), CIFAR-10.1 v6 (.npy), CIFAR-10.2 (.npz),
    CIFAR-10-C (one .npy per corruption, 5 severities stacked, labels.npy)."""
    rng = np.random.default_rng(RNG_SEED + 3)
    root = Path(root)
    b = root / "cifar-10-batches-py"

    def batch(n, name):
        labels = [int(x) for x in rng.integers(0, 10, n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)]}

    train = [batch(per_batch, f"training batch {i} of 5") for i in range(1, 6)]
    for i, t in enumerate(train, 1):
        t[b"labels"][:2] = [(2 * i) % 10, (2 * i + 1) % 10]  # every class present in train
        _pickle(b / f"data_batch_{i}", t)
    test = batch(n_test, "testing batch 1 of 1")
    test[b"labels"][:10] = list(range(10))
    _pickle(b / "test_batch", test)
    _pickle(b / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR_NAMES],
                                 b"num_vis": 3072})
    d101 = root / "CIFAR-10.1"
    d101.mkdir(parents=True, exist_ok=True)
    np.save(d101 / "cifar10.1_v6_data.npy", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    np.save(d101 / "cifar10.1_v6_labels.npy", np.arange(12) % 10)
    d102 = root / "CIFAR-10.2"
    d102.mkdir(parents=True, exist_ok=True)
    np.savez(d102 / "cifar102_train.npz", images=rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), labels=np.arange(30) % 10)
    np.savez(d102 / "cifar102_test.npz", images=rng.integers(0, 256, (14, 32, 32, 3), dtype=np.uint8), labels=np.arange(14) % 10)
    dc = root / "CIFAR-10-C"
    dc.mkdir(parents=True, exist_ok=True)
    test_images = test[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for c in CIFAR10C:
        stack = np.concatenate([np.clip(test_images.astype(int) + 10 * s, 0, 255).astype(np.uint8) for s in range(1, 6)])
        np.save(dc / f"{c}.npy", stack)
    np.save(dc / "labels.npy", np.tile(np.asarray(test[b"labels"], dtype=np.uint8), 5))
    return {"train": 5 * per_batch, "test": n_test, "cifar10.1": 12, "cifar10.2": 14, "cifar10.2_train": 30,
            "test_labels": list(test[b"labels"])}


def corrupt(path) -> None:
    """Truncate an image file so that decoding fails."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(20, len(data) // 3)])


# ------------------------------------------------------------------------------------------------
# a user's own shift: DomainBed's layout <root>/<domain>/<class>/<image>, and its CSV manifest

PACS_LIKE_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_LIKE_CLASSES = ("dog", "elephant", "guitar")
# every image mode a user's folder may hold, each of which must become RGB
_MODES = ("RGB", "RGBA", "P", "L")


def _domain_image(rng, mode: str, size: int, tint: int) -> Image.Image:
    """A small image in `mode` whose colour leans on the domain (tint), so domains differ."""
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels[..., tint % 3] = pixels[..., tint % 3] // 2 + 128
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        return Image.merge("RGBA", (*image.split(), alpha))
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return image.convert(mode)


def make_domain_tree(root, domains=PACS_LIKE_DOMAINS, classes=PACS_LIKE_CLASSES, per_class: int = 8,
                     size: int = 16, junk: bool = True, manifest: str | None = "manifest.csv") -> dict:
    """`root/<domain>/<class>/<image>`: per_class images per (domain, class), JPEG and PNG in the
    modes of `_MODES` (PNGs with alpha, a palette or grey must read as RGB), one of them one folder
    deeper (ImageFolder finds images recursively). junk: also the entries a real folder collects,
    which are never domains, classes or images (.ipynb_checkpoints, __MACOSX, .DS_Store, a README).
    manifest: also write root/<manifest> listing every image (path,label,domain).
    Returns {"domains", "classes", "paths": {domain: [relpaths]}, "manifest": path or None}."""
    root = Path(root)
    rng = np.random.default_rng(RNG_SEED)
    paths: dict[str, list[str]] = {}
    for t, d in enumerate(domains):
        for c in classes:
            for i in range(per_class):
                mode = _MODES[i % len(_MODES)]
                ext = ".jpg" if mode in ("RGB", "L") and i % 2 == 0 else ".png"
                sub = "more/" if i == per_class - 1 else ""
                rel = f"{d}/{c}/{sub}{c}_{i:03d}{ext}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                image = _domain_image(rng, mode, size, t)
                image.save(root / rel, quality=90) if ext == ".jpg" else image.save(root / rel)
                paths.setdefault(d, []).append(rel)
    if junk:
        for rel in (f".ipynb_checkpoints/{classes[0]}/x.png", f"{domains[0]}/.ipynb_checkpoints/y.png",
                    f"__MACOSX/{domains[0]}/._z.png", f"{domains[0]}/{classes[0]}/.DS_Store", "README.txt"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(root / rel, format="PNG") if rel.endswith(".png") else (root / rel).write_text("x")
    out = None
    if manifest:
        out = root / manifest
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "domain"])
            for d in domains:
                for rel in paths[d]:
                    w.writerow([rel, rel.split("/")[1], d])
    return {"domains": list(domains), "classes": list(classes), "paths": paths, "manifest": out}


# ------------------------------------------------------------------------------------------------
# Camelyon17-WILDS v1.0: camelyon17_v1.0/{RELEASE_v1.0.txt, metadata.csv, patches/<slide>/<patch>.png}

# per hospital (the `center` column), two slides (patient, node) and per slide the rows written:
# hospitals 0, 3, 4 (ID): (normal train, tumor train, normal id_val, tumor id_val) by the `split`
# column (0 = train, 1 = id_val); hospitals 1 and 2 (OOD val, OOD test): (normal, tumor), with split
# column values 0 and 1 as in the release, which the wilds class overrides by hospital
CAMELYON17_PLAN = {
    0: [((4, 4), (3, 3, 2, 2)), ((15, 1), (3, 2, 2, 1))],
    1: [((21, 0), (6, 2)), ((38, 2), (5, 3))],
    2: [((42, 3), (3, 3)), ((51, 1), (2, 4))],
    3: [((61, 2), (2, 3, 2, 2)), ((77, 4), (3, 3, 1, 2))],
    4: [((83, 0), (3, 3, 2, 2)), ((96, 3), (2, 2, 2, 2))],
}


def _patch(rng, tumor: int) -> Image.Image:
    """A 96x96 RGBA patch as openslide's read_region gives it (opaque alpha), pink like H&E stain;
    tumour patches a little darker and more purple."""
    base = np.array([150, 80, 170] if tumor else [230, 160, 200], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 41, (96, 96, 3)), 0, 255).astype(np.uint8)
    alpha = np.full((96, 96, 1), 255, dtype=np.uint8)
    return Image.fromarray(np.concatenate([pixels, alpha], axis=2), mode="RGBA")


def make_camelyon17(root) -> dict:
    """camelyon17_v1.0/ as the WILDS release lays it out: RELEASE_v1.0.txt; metadata.csv written by
    pandas as WILDS' generate_final_metadata.py writes it (an unnamed index column, then patient (3
    digits), node, x_coord, y_coord, tumor, slide, center, split); one 96x96 RGBA PNG per row at
    patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png. Slides are numbered
    10 x hospital + k, as in the release (hospital = slide // 10). Rows are shuffled, as the
    release's are not grouped by split. Returns the counts per official split and, per metadata row,
    what it means: {"counts", "classes", "rows": [{patient, node, tumor, slide, center, split}]}."""
    import pandas as pd

    rng = np.random.default_rng(RNG_SEED + 3)
    d = Path(root) / "camelyon17_v1.0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0 (fabricated for tests)\n")
    rows = []
    for center, slides in CAMELYON17_PLAN.items():
        for k, ((patient, node), counts) in enumerate(slides):
            if len(counts) == 4:  # ID hospital: (tumor, split column) per block
                blocks = [(0, 0, counts[0]), (1, 0, counts[1]), (0, 1, counts[2]), (1, 1, counts[3])]
            else:
                blocks = [(0, None, counts[0]), (1, None, counts[1])]
            i = 0
            for tumor, column, n in blocks:
                for _ in range(n):
                    split = column if column is not None else i % 2
                    rows.append({"patient": f"{patient:03d}", "node": node, "x_coord": 32 * (10 + 3 * i),
                                 "y_coord": 32 * (20 + 2 * i), "tumor": tumor, "slide": 10 * center + k,
                                 "center": center, "split": split})
                    i += 1
    rows = [rows[j] for j in rng.permutation(len(rows))]
    for r in rows:
        folder = f"patient_{r['patient']}_node_{r['node']}"
        path = d / "patches" / folder / f"patch_{folder}_x_{r['x_coord']}_y_{r['y_coord']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _patch(rng, r["tumor"]).save(path)
    pd.DataFrame(rows).to_csv(d / "metadata.csv")  # the index column unnamed, as the release's

    def official(r) -> str:
        return {1: "val", 2: "test"}.get(r["center"], ("train", "id_val")[r["split"]])

    meaning = [dict(r, split=official(r)) for r in rows]
    counts = {s: sum(m["split"] == s for m in meaning) for s in ("train", "id_val", "val", "test")}
    return {"counts": counts, "classes": 2, "rows": meaning}
