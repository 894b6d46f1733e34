"""Your own distribution shift from a folder or a CSV: `dataset=folder` and the DomainBed presets.

Two layouts (docs/own_data.md):

* a tree `<root>/<domain>/<class>/<image>`, the layout of DomainBed and of torchvision's
  `ImageFolder` per domain: classes are the sorted class folders, images are found recursively inside
  a class folder and sorted, with torchvision's extensions; what `read_tree` lists for a domain equals
  what `ImageFolder(<root>/<domain>)` lists, less hidden entries;
* a CSV manifest with columns `path,label,domain` and an optional `split` (train | id_val | id_test,
  for the ID domain's rows): paths relative to the root, labels are class names.

Hidden entries (`.*`, `__MACOSX`) are never domains, classes or images; every skipped entry is kept in
the listing so that the check can name it (ImageFolder would read `.ipynb_checkpoints` as a class).

The task (`folder_task`): ID train / id_val / id_test from the ID domain(s), drawn per class with a
seed from the sorted listing unless the manifest's `split` column gives them (the reference's own split
script drew from `os.listdir` order without a seed); the draw is recorded beside the study, and a
resumed study whose draw would differ is refused (`subsets.save_subset`). OOD-val: a class-balanced
subset of the OOD-val domain, or of a list of domains balanced over (class, domain) cells. Every test
domain is one test split, named after the domain: one column of the tables. Groups are domains, so
`worst_group_accuracy` is the worst domain's accuracy (on a one-domain split, its accuracy).
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from autoft.data.base import Split, Task
from autoft.data.images import CheckReport, ImageFiles, example_ids
from autoft.data.roles import ID_SPLITS, as_domains, roles_problem, templates_problem
from autoft.data.subsets import check_disjoint, class_balanced_indices, save_subset
from autoft.errors import UserError

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS, so that a tree reads as ImageFolder reads it
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MANIFEST_COLUMNS = ("path", "label", "domain")


def is_hidden(name: str) -> bool:
    """Entries no dataset means as data: dot files and folders, macOS archive debris."""
    return name.startswith(".") or name == "__MACOSX"


@dataclass
class Listing:
    """What is on disk: one row per image, in sorted order, and what was skipped (relative paths)."""

    root: Path
    source: str                       # "tree" or the manifest's path
    paths: list[str]                  # relative to root
    labels: list[str]                 # class folder names (the manifest's label column)
    domains: list[str]
    splits: Optional[list[str]] = None  # the manifest's split column ('' where empty), or None
    skipped: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # class folders without an image ('<domain>/<class>')
    folders: list[str] = field(default_factory=list)  # the domain folders of a tree, images or not

    def domain_names(self) -> list[str]:
        return sorted(set(self.domains))

    def class_counts(self, domains: Sequence[str]) -> dict[str, dict[str, int]]:
        """{domain: {class: images}} of these domains, classes sorted, empty class folders with 0; one
        pass over the rows (DomainNet lists about 587k)."""
        out: dict[str, dict[str, int]] = {d: {} for d in domains}
        for folder in self.empty:
            d, c = folder.split("/", 1)
            if d in out:
                out[d][c] = 0
        for (d, c), n in Counter(zip(self.domains, self.labels)).items():
            if d in out:
                out[d][c] = n
        return {d: dict(sorted(cs.items())) for d, cs in out.items()}


def _walk_images(folder: Path, rel: str, skipped: list[str]) -> list[str]:
    """Image files under `folder`, recursively, in ImageFolder's order (os.walk sorted, names sorted)."""
    found = []
    for here, dirs, files in sorted(os.walk(folder, followlinks=True)):
        hidden = [d for d in dirs if is_hidden(d)]
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        sub = os.path.relpath(here, folder)
        prefix = rel if sub == "." else f"{rel}/{Path(sub).as_posix()}"
        skipped += [f"{prefix}/{d}/" for d in sorted(hidden)]
        for name in sorted(files):
            if is_hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append(f"{prefix}/{name}")
            else:
                found.append(f"{prefix}/{name}")
    return found


def read_tree(root) -> Listing:
    """`<root>/<domain>/<class>/<images>`: every non-hidden sub-folder of root is a domain, every
    non-hidden sub-folder of a domain a class."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset.task.root={root}: not a folder. Set data_root (or dataset.task.root) to the folder "
                        f"that holds one sub-folder per domain")
    listing = Listing(root, "tree", [], [], [])
    for d in sorted(os.scandir(root), key=lambda e: e.name):
        if is_hidden(d.name) or not d.is_dir():
            listing.skipped.append(d.name + ("/" if d.is_dir() else ""))
            continue
        listing.folders.append(d.name)
        for c in sorted(os.scandir(d.path), key=lambda e: e.name):
            if is_hidden(c.name) or not c.is_dir():
                listing.skipped.append(f"{d.name}/{c.name}" + ("/" if c.is_dir() else ""))
                continue
            files = _walk_images(Path(c.path), f"{d.name}/{c.name}", listing.skipped)
            if not files:
                listing.empty.append(f"{d.name}/{c.name}")
            listing.paths += files
            listing.labels += [c.name] * len(files)
            listing.domains += [d.name] * len(files)
    return listing


def read_manifest(root, manifest) -> Listing:
    """A CSV with columns path,label,domain[,split]; each row is checked (path inside root, present,
    not repeated; label and domain not empty; split one of ID_SPLITS or empty)."""
    root, manifest = Path(root), Path(manifest)
    if not manifest.is_file():
        raise UserError(f"dataset.task.manifest={manifest}: file not found")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{manifest}: not a readable CSV file ({type(e).__name__}: {e})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    allowed = (*MANIFEST_COLUMNS, "split")
    if not set(MANIFEST_COLUMNS) <= set(header) or set(header) - set(allowed) or len(set(header)) != len(header):
        raise UserError(f"{manifest}: the header must name the columns path,label,domain and optionally split "
                        f"(once each, no others); found {','.join(header) or 'nothing'}")
    at = {h: header.index(h) for h in header}
    listing = Listing(root, str(manifest), [], [], [], [] if "split" in at else None)
    seen: dict[str, int] = {}
    resolved_root = root.resolve()
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{manifest}, line {n}: {len(row)} cells for the {len(header)} columns {','.join(header)}")
        path, label, domain = (row[at[k]].strip() for k in MANIFEST_COLUMNS)
        split = row[at["split"]].strip() if "split" in at else ""
        where = f"{manifest}, line {n}"
        if not path or not label or not domain:
            empty = [k for k, v in (("path", path), ("label", label), ("domain", domain)) if not v]
            raise UserError(f"{where}: empty {', '.join(empty)}; every row needs a path, a label (class name) and a domain")
        full = (root / path).resolve()
        if Path(path).is_absolute() or not full.is_relative_to(resolved_root):
            raise UserError(f"{where}: path {path} is outside the root {root}; paths are relative to dataset.task.root")
        if not full.is_file():
            raise UserError(f"{where}: image file missing: {root / path}")
        key = Path(path).as_posix()
        if key in seen:
            raise UserError(f"{where}: path {path} repeats line {seen[key]}; each image is listed once")
        seen[key] = n
        if split and split not in ID_SPLITS:
            raise UserError(f"{where}: split={split}; must be one of {', '.join(ID_SPLITS)} or empty")
        if is_hidden(domain) or is_hidden(label):
            listing.skipped.append(key)
            continue
        listing.paths.append(key)
        listing.labels.append(label)
        listing.domains.append(domain)
        if listing.splits is not None:
            listing.splits.append(split)
    return listing


def read_exclusions(path) -> set[str]:
    """Relative paths to leave out, one per line (DomainBed's `domain_net_duplicates.txt` format)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"dataset.task.exclude={path}: cannot be read ({type(e).__name__}: {e})") from None
    return {Path(ln.strip()).as_posix() for ln in lines if ln.strip() and not ln.startswith("#")}


def read_listing(root, manifest=None, exclude=None) -> Listing:
    """The tree or the manifest, less the excluded paths (which are named among the skipped)."""
    listing = read_manifest(root, manifest) if manifest else read_tree(root)
    if exclude:
        drop = read_exclusions(exclude)
        keep = [i for i, p in enumerate(listing.paths) if p not in drop]
        listing.skipped += [f"{p} (excluded)" for p in listing.paths if p in drop]
        for name in ("paths", "labels", "domains", "splits"):
            values = getattr(listing, name)
            if values is not None:
                setattr(listing, name, [values[i] for i in keep])
    return listing


# ------------------------------------------------------------------------------------------------
# domain roles and class sets: every rule one message that names the fix

def check_domains(listing: Listing, wanted: Sequence[str]) -> None:
    found = listing.domain_names()
    empty = [d for d in wanted if d not in found and d in listing.folders]
    if empty:
        raise UserError(f"domain {empty[0]!r} holds no image ({listing.root / empty[0]}); add images or leave it out")
    missing = [d for d in wanted if d not in found]
    if missing:
        where = listing.source if listing.source != "tree" else str(listing.root)
        raise UserError(f"domain {missing[0]!r} not found in {where}; domains found: {', '.join(found) or 'none'}"
                        + (f" (skipped: {', '.join(listing.skipped[:5])})" if listing.skipped and not found else ""))


def class_set(listing: Listing, domains: Sequence[str], classes: Optional[Sequence[str]] = None) -> list[str]:
    """The classes of the task, in label order: `classes` (checked against every used domain) or the
    sorted class folders, which must then be the same in every used domain."""
    per_domain = listing.class_counts(domains)
    empty = [f"{d}/{c}" for d, cs in per_domain.items() for c, n in cs.items() if n == 0 and (classes is None or c in classes)]
    if empty:
        raise UserError(f"class folder {listing.root / empty[0]} holds no image; add images, remove the folder, or "
                        f"leave the class out with dataset.task.classes=[...]")
    if classes is not None:
        chosen = [str(c) for c in classes]
        for d, cs in per_domain.items():
            absent = [c for c in chosen if c not in cs]
            if absent:
                raise UserError(f"dataset.task.classes: {', '.join(absent[:5])} not found in domain {d!r}; its classes: "
                                f"{', '.join(cs)}")
    else:
        common = sorted(set.intersection(*(set(cs) for cs in per_domain.values())))
        for d, cs in per_domain.items():
            extra = [c for c in cs if c not in common]
            if extra:
                lacking = [o for o in per_domain if extra[0] not in per_domain[o]]
                example = next((p for p, c, o in zip(listing.paths, listing.labels, listing.domains)
                                if c == extra[0] and o == d), f"{d}/{extra[0]}/")
                raise UserError(f"the class sets differ across the domains used: {extra[0]!r} is in {d!r} (e.g. "
                                f"{example}{'' if listing.source == 'tree' else ' in ' + listing.source}) but missing "
                                f"from {', '.join(map(repr, lacking))}. Restrict the classes to those every domain has "
                                f"with dataset.task.classes=[{','.join(common)}]")
        chosen = common
    if len(chosen) < 2:
        raise UserError(f"{len(chosen)} class{'es' if len(chosen) != 1 else ''} ({', '.join(chosen) or 'none'}) in the "
                        f"domains used: classification needs at least two")
    return chosen


def classnames(classes: Sequence[str], renames: Optional[dict] = None) -> list[str]:
    """Readable names: a rename where given, else the folder name with '_' turned into a space."""
    renames = {str(k): str(v) for k, v in (renames or {}).items()}
    unknown = sorted(set(renames) - set(classes))
    if unknown:
        raise UserError(f"dataset.task.class_names: {', '.join(unknown)} not a class of the task; its classes: "
                        f"{', '.join(classes)}")
    return [renames.get(c, c.replace("_", " ")) for c in classes]


def templates_of(templates) -> list[str]:
    """'openai' (open_clip's 80 ImageNet templates), 'simple' (its 7), 'photo' ("a photo of a {}."),
    or a list of templates with '{}' (or '{c}', '{a_c}') for the class name."""
    problem = templates_problem(templates)
    if problem:
        raise UserError(problem)
    if templates == "photo":
        return ["a photo of a {}."]
    if templates in ("openai", "simple"):
        from open_clip import zero_shot_metadata as meta

        fns = meta.OPENAI_IMAGENET_TEMPLATES if templates == "openai" else meta.SIMPLE_IMAGENET_TEMPLATES
        return [fn("{}") for fn in fns]
    return [str(t) for t in templates]


# ------------------------------------------------------------------------------------------------
# the ID split and the task

def draw_id_split(paths: Sequence[str], labels: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int, class_names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Positions of train / id_val / id_test, drawn per class from the class's paths in sorted order.

    Class k's images are sorted by path and permuted by the generator seeded with (seed, k); the first
    max(1, round(n x val_fraction)) go to id_val, the next max(1, round(n x test_fraction)) to id_test,
    the rest to train. Sorting first makes the draw independent of the order of directory entries; a
    stream per class makes one class's draw independent of the others."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.array(sorted(range(len(paths)), key=lambda i: paths[i]), dtype=np.int64)
    out = {k: [] for k in ID_SPLITS}
    for k in np.unique(labels):
        members = order[labels[order] == k]
        n = len(members)
        n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
        if n - n_val - n_test < 1:
            shown = class_names[int(k)] if class_names is not None else int(k)
            raise UserError(f"class {shown!r} has {n} image(s) in the ID domain: too few to split into train, id_val "
                            f"and id_test (id_val_fraction={val_fraction}, id_test_fraction={test_fraction}); it needs "
                            f"at least 3, or give the split in the manifest's split column")
        picked = members[np.random.default_rng([seed, int(k)]).permutation(n)]
        out["id_val"].append(picked[:n_val])
        out["id_test"].append(picked[n_val:n_val + n_test])
        out["train"].append(picked[n_val + n_test:])
    return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in out.items()}


def manifest_id_split(listing: Listing, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The manifest's split column for the ID rows: every ID row must name its split."""
    given = [listing.splits[i] for i in rows]
    blank = [listing.paths[i] for i, s in zip(rows, given) if not s]
    if blank:
        raise UserError(f"{listing.source}: the split column is set for some ID rows but empty for {len(blank)}, e.g. "
                        f"{blank[0]}; give every ID row its split ({', '.join(ID_SPLITS)}) or leave the column empty")
    out = {k: np.array([j for j, s in enumerate(given) if s == k], dtype=np.int64) for k in ID_SPLITS}
    missing = [k for k, v in out.items() if len(v) == 0]
    if missing:
        raise UserError(f"{listing.source}: no ID row has split={missing[0]}; the ID domain needs rows in each of "
                        f"{', '.join(ID_SPLITS)}")
    return out


def folder_task(root, manifest: Optional[str] = None, id_domain=None, ood_val_domain=None,
                test_domains: Optional[Sequence[str]] = None, classes: Optional[Sequence[str]] = None,
                class_names: Optional[dict] = None, templates="openai", ood_val_size: Optional[int] = 1000,
                id_val_fraction: float = 0.1, id_test_fraction: float = 0.2, split_seed: int = 0,
                subset_seed: int = 0, subset_dir=None, exclude: Optional[str] = None, name: str = "folder") -> Task:
    """A task from a tree or a manifest (module docstring). id_domain and ood_val_domain: one domain
    or a list; classes: restrict (and order) the classes; class_names: {folder: readable name};
    exclude: a file of relative paths to leave out; subset_dir: where the ID draw and the OOD-val
    subset are recorded (the study's directory)."""
    problem = roles_problem(id_domain, ood_val_domain, test_domains)
    if problem:
        raise UserError(problem)
    ids, vals, tests = as_domains(id_domain), as_domains(ood_val_domain), as_domains(test_domains)
    listing = read_listing(root, manifest, exclude)
    used = [*ids, *vals, *tests]
    check_domains(listing, used)
    chosen = class_set(listing, used, classes)
    index = {c: k for k, c in enumerate(chosen)}
    domains = np.asarray(listing.domains, dtype=object)
    labels = np.array([index.get(c, -1) for c in listing.labels], dtype=np.int64)
    group_of = {d: g for g, d in enumerate(used)}

    def rows_of(names: Sequence[str]) -> np.ndarray:
        rows = np.flatnonzero(np.isin(domains, list(names)))
        return rows[labels[rows] >= 0]  # rows of classes left out by dataset.task.classes

    def split(split_name: str, rows: np.ndarray) -> Split:
        files = ImageFiles(listing.root, [listing.paths[i] for i in rows], labels[rows], id_prefix=name,
                           dataset=f"{name} dataset.task.root={listing.root}")  # the hint for an unreadable image
        groups = np.array([group_of[d] for d in domains[rows]], dtype=np.int64)
        return Split(split_name, files, labels[rows], groups, list(used))

    id_rows = rows_of(ids)
    given = listing.splits is not None and any(listing.splits[i] for i in id_rows)
    parts = (manifest_id_split(listing, id_rows) if given else
             draw_id_split([listing.paths[i] for i in id_rows], labels[id_rows], id_val_fraction, id_test_fraction,
                           split_seed, chosen))
    id_splits = {k: split(k, id_rows[v]) for k, v in parts.items()}

    val_rows = rows_of(vals)
    cells = labels[val_rows] * len(vals) + np.array([vals.index(d) for d in domains[val_rows]], dtype=np.int64)
    chosen_val = class_balanced_indices(cells, ood_val_size, subset_seed)
    ood_val = split(vals[0] if len(vals) == 1 else f"mix({'+'.join(vals)})", val_rows[chosen_val])
    test_splits = {"id_test": id_splits["id_test"], **{d: split(d, rows_of([d])) for d in tests}}

    check_disjoint(example_ids(ood_val.dataset), {k: example_ids(s.dataset) for k, s in test_splits.items()})
    if subset_dir:
        source = "manifest split column" if given else "seeded per-class draw from the sorted listing"
        held = np.concatenate([parts["id_val"], parts["id_test"]])
        save_subset(subset_dir, f"id_split_{name}", held, [f"{k}:{listing.paths[id_rows[i]]}" for k in ("id_val", "id_test")
                                                          for i in parts[k]],
                    {"dataset": name, "id_domains": ids, "source": source, "seed": split_seed,
                     "id_val_fraction": id_val_fraction, "id_test_fraction": id_test_fraction,
                     "n": {k: int(len(v)) for k, v in parts.items()}}, what="ID split")
        save_subset(subset_dir, f"ood_val_{name}", chosen_val, example_ids(ood_val.dataset),
                    {"dataset": name, "domains": vals, "n": ood_val_size, "seed": subset_seed})
    log.info("%s: %d classes; ID %s: %d train, %d id_val, %d id_test; OOD-val %s: %d; tests: %s", name, len(chosen),
             "+".join(ids), *(len(id_splits[k]) for k in ID_SPLITS), ood_val.name, len(ood_val),
             ", ".join(f"{d} {len(test_splits[d])}" for d in tests))
    return Task(name=name, classnames=classnames(chosen, class_names), templates=templates_of(templates),
                train=id_splits["train"], id_val=id_splits["id_val"], ood_val=ood_val, tests=test_splits)


# ------------------------------------------------------------------------------------------------
# what `scripts/prepare_data.py --dataset <config> --check` reports

def check(task_args: dict, name: str, verify_images: bool = True, progress: bool = False) -> CheckReport:
    """A look at a folder dataset before any GPU time: images per domain and class, the class sets
    compared across domains, the entries skipped, every image decoded (verify_images), and whether
    the task of these settings builds (domain roles, class sets, the ID split)."""
    args = {k: v for k, v in task_args.items() if not str(k).startswith("_")}
    root, manifest = Path(args["root"]), args.get("manifest")
    report = CheckReport(name, str(root))
    try:
        listing = read_listing(root, manifest, args.get("exclude"))
    except UserError as e:
        report.bad(str(e))
        return report
    domains = listing.domain_names()
    report.good(f"{len(listing.paths)} images in {len(domains)} domains, read from "
                f"{'the tree' if listing.source == 'tree' else listing.source}")
    per_domain = listing.class_counts(domains)
    union = sorted(set().union(*(set(c) for c in per_domain.values()))) if per_domain else []
    for d, counts in per_domain.items():
        shown = ", ".join(f"{c} {n}" for c, n in counts.items())
        report.good(f"domain {d!r}: {sum(counts.values())} images in {len(counts)} classes ({shown})")
    lacking = {d: [c for c in union if c not in counts] for d, counts in per_domain.items()}
    if any(lacking.values()):
        for d, missing in lacking.items():
            if missing:
                report.notes.append(f"domain {d!r} lacks {len(missing)} of the {len(union)} classes: {', '.join(missing[:10])}"
                                    + (" ..." if len(missing) > 10 else ""))
    elif union:
        report.good(f"every domain holds the same {len(union)} classes")
    if listing.skipped:
        shown = ", ".join(listing.skipped[:10]) + (f" ... and {len(listing.skipped) - 10} more" if len(listing.skipped) > 10 else "")
        report.notes.append(f"skipped {len(listing.skipped)} entries that are not domains, classes or images: {shown}")
    used = [*as_domains(args.get("id_domain")), *as_domains(args.get("ood_val_domain")), *as_domains(args.get("test_domains"))]
    unused = [d for d in domains if d not in used]
    if unused and used:
        report.notes.append(f"domains not used by these settings: {', '.join(unused)}")
    report.files([listing.root / p for p in listing.paths], "images", verify_images, progress=progress)
    try:
        task = folder_task(**{**args, "subset_dir": None})
    except UserError as e:
        report.bad(f"the task does not build with these settings: {e}")
        return report
    report.good(f"task: {len(task.classnames)} classes; ID train {len(task.train)}, id_val {len(task.id_val)}, id_test "
                f"{len(task.tests['id_test'])}; OOD-val {task.ood_val.name} {len(task.ood_val)}; tests "
                + ", ".join(f"{k} {len(task.tests[k])}" for k in task.ood_tests))
    return report
