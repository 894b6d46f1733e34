"""WILDS tasks (iWildCam v2.0, FMoW v1.1, Camelyon17 v1.0) through the `wilds` package: official
splits and evaluators.

Splits (docs/design.md section 4): ID train = `train`, ID val = `id_val`, the search's OOD-val = a
class-balanced subset of the official OOD `val`, tests = `id_test` and the OOD `test`. Each split
carries the official evaluator (`dataset.eval`, the leaderboard rule); its result also fills the
objective's key (iWildCam `macro_f1` <- `F1-macro_all`, FMoW `worst_group_accuracy` <-
`acc_worst_region`), so the number the search optimises and the tables report is the leaderboard's.

FMoW's worst-region accuracy ignores the 'Other' region (countries without a region). Split.groups
holds the region of every example, 'Other' included, so a plain worst-group accuracy over groups
would count it; the evaluator's value replaces it. The OOD-val subset is drawn without 'Other'
examples, where they could not move the objective anyway.

Camelyon17 (`camelyon17`) has the official hospital splits (train and id_val from hospitals 0, 3, 4,
OOD val = hospital 1, OOD test = hospital 2) but no ID test: ours is drawn per class with a seed from
the official id_val (half of it by default, `id_test_fraction`), the rest stays our id_val, and the
draw is recorded beside the study like the OOD-val subset. Its OOD test split is named `hospital_2`
(a table column named after its domain, as for a folder dataset); groups are hospitals. Its objective
is accuracy (the evaluator's `acc_avg`, the leaderboard's number). Class names and templates are
CLIP_benchmark's PatchCamelyon ones (cited where they are defined below).

Images are read from the paths the wilds classes use (`iwildcam_v2.0/train/<filename>`,
`fmow_v1.1/images/rgb_img_<row>.png`, `camelyon17_v1.0/patches/...`) with our decoder, so a corrupt
file is named.

Class names and prompts follow the reference (AutoFT's code, which takes its datasets and templates
from wise-ft):

* iWildCam's zero-shot head uses English common names, lower-cased ("white-lipped peccary"), not
  the Latin `name` column of WILDS' categories.csv ("tayassu pecari"). The reference reads them from
  wise-ft's `src/datasets/iwildcam_metadata/labels.csv` (columns y, category_id, name, english):
  rows with y < 99999, in file order (= y order), column `english`, lower-cased. We ship those 182
  rows as `iwildcam_classes.csv` beside this module (columns y, category_id, english, latin; english
  already lower-cased) and check them against the dataset's categories.csv on every load (y ->
  category_id must agree). English names are not unique (e.g. y 153 and 181 are both "central
  american red brocket"); the reference's head has the same duplicates.
* iWildCam's flyp captions: the reference's caption file (auto-ft
  `autoft/datacreation_scripts/iwildcam.py`, FLYP-style tab-separated csv with columns title,
  filepath, label) fills the two iWildCam templates with the Latin `name` column of labels.csv
  ("a photo of tayassu pecari.", "tayassu pecari in the wild."), so `caption_names="latin"` is the
  default; `caption_names="english"` uses the head's names instead (FLYP's own script,
  locuslab/FLYP `datacreation_scripts/iwildcam.py`, uses the English column, not lower-cased). The
  choice reaches the captions through `Task.caption_classnames`.
* FMoW's class names are WILDS' `categories` as spelled there ("airport_hangar", underscores
  kept), as in wise-ft's FMOW dataset; its 16 templates are wise-ft's `fmow_template`. Two of them
  use the article rule of wise-ft's `append_proper_article` (underscores to spaces, then "an" before
  a lower-case vowel, else "a"), written here as the placeholder '{a_c}' (see
  `autoft.data.base.format_prompt`): "satellite photo of an airport hangar." beside "satellite photo
  of a airport_hangar.", exactly as the reference's head and captions read.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from autoft.data import wilds_agreement, wilds_compat
from autoft.data.base import Split, Task
from autoft.data.images import CheckReport, ImageFiles, example_ids, prepare_command, require
from autoft.data.subsets import check_disjoint, class_balanced_indices, save_subset, stratified_holdout
from autoft.errors import UserError
from autoft.names import IWILDCAM_CAPTION_NAMES

log = logging.getLogger(__name__)

wilds_compat.install()
wilds_compat.import_wilds()

IWILDCAM_TEMPLATES = ["a photo of {}.", "{} in the wild."]

# wise-ft's fmow_template, in its order; '{a_c}' = the class name with its article (format_prompt)
FMOW_TEMPLATES = [
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    "satellite photo of {a_c}.",
    "aerial photo of {a_c}.",
    "satellite photo of a {} in asia.",
    "aerial photo of a {} in asia.",
    "satellite photo of a {} in africa.",
    "aerial photo of a {} in africa.",
    "satellite photo of a {} in the americas.",
    "aerial photo of a {} in the americas.",
    "satellite photo of a {} in europe.",
    "aerial photo of a {} in europe.",
    "satellite photo of a {} in oceania.",
    "aerial photo of a {} in oceania.",
    "a photo of a {}.",
    "{}.",
]

# official split sizes (WILDS paper, table of dataset statistics)
IWILDCAM_COUNTS = {"train": 129809, "val": 14961, "test": 42791, "id_val": 7314, "id_test": 8154}
FMOW_COUNTS = {"train": 76863, "val": 19915, "test": 22108, "id_val": 11483, "id_test": 11327}
IWILDCAM_CLASSES = 182
FMOW_CLASSES = 62

_DOWNLOAD_NOTE = {
    "iwildcam": "about 11 GB compressed",
    "fmow": "about 50 GB compressed",
    "camelyon17": "about 11 GB compressed",
}


class WildsEvaluator:
    """The wilds dataset's own `eval` on (a subset of) one split; `aliases` copy official values
    onto our metric names (ours <- theirs)."""

    def __init__(self, dataset, indices: np.ndarray, aliases: Optional[dict[str, str]] = None):
        self.dataset, self.indices, self.aliases = dataset, np.asarray(indices, dtype=np.int64), dict(aliases or {})

    def __call__(self, y_pred: torch.Tensor, y_true: torch.Tensor, indices: Optional[np.ndarray] = None) -> dict:
        idx = self.indices if indices is None else self.indices[np.asarray(indices, dtype=np.int64)]
        metadata = self.dataset.metadata_array[torch.as_tensor(idx)]
        results, _ = self.dataset.eval(torch.as_tensor(y_pred).detach().cpu().long(),
                                       torch.as_tensor(y_true).detach().cpu().long(), metadata)
        out = {k: float(v) for k, v in results.items()}
        for ours, theirs in self.aliases.items():
            out[ours] = out[theirs]
        return out


def _split(ds, name: str, idx: np.ndarray, relpath, id_prefix: str, dataset: str, root, group_field: str,
           aliases: dict) -> Split:
    idx = np.asarray(idx, dtype=np.int64)
    labels = ds.y_array[torch.as_tensor(idx)].numpy().astype(np.int64)
    relpaths = [relpath(int(i)) for i in idx]
    files = ImageFiles(ds.data_dir, relpaths, labels, id_prefix=id_prefix, dataset=dataset, data_root=root)
    g = ds.metadata_fields.index(group_field)
    groups = ds.metadata_array[torch.as_tensor(idx), g].numpy().astype(np.int64)
    names = (ds.metadata_map or {}).get(group_field)
    n_groups = int(ds.metadata_array[:, g].max()) + 1
    group_names = [str(x) for x in names] if names is not None else [str(i) for i in range(n_groups)]
    return Split(name, files, labels, groups, group_names, None, WildsEvaluator(ds, idx, aliases))


def _official(ds, split: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(ds.split_array) == ds.split_dict[split])


def _ood_val(pool: Split, pool_idx: np.ndarray, n: Optional[int], seed: int, candidates, make) -> tuple[Split, np.ndarray]:
    chosen = class_balanced_indices(pool.labels, n, seed, candidates)
    return make(pool_idx[chosen]), chosen


def _record(task_name: str, ood_val: Split, chosen: np.ndarray, tests: dict[str, Split], subset_dir, info: dict) -> None:
    ids = example_ids(ood_val.dataset)
    check_disjoint(ids, {k: example_ids(s.dataset) for k, s in tests.items()})
    if subset_dir:
        path = save_subset(subset_dir, f"ood_val_{task_name}", chosen, ids, info)
        log.info("OOD-val subset (%d examples) recorded in %s", len(chosen), path)


def _malformed(what: str, path: Path, dataset: str, root, e: Exception) -> UserError:
    return UserError(f"{what} is malformed: {path} ({type(e).__name__}: {e}). Check it with: "
                     f"{prepare_command(dataset, root)}")


# ------------------------------------------------------------------------------------------------
# iWildCam

def _iwildcam_dataset(root):
    data_dir = Path(root) / "iwildcam_v2.0"
    for f in ("RELEASE_v2.0.txt", "metadata.csv", "categories.csv"):
        require(data_dir / f, "iwildcam", root, "iWildCam v2.0")
    from wilds.datasets.iwildcam_dataset import IWildCamDataset

    try:
        return IWildCamDataset(root_dir=str(root), download=False)
    except (KeyError, ValueError, AssertionError, pd.errors.ParserError) as e:
        raise _malformed("iWildCam metadata", data_dir / "metadata.csv", "iwildcam", root, e) from None


IWILDCAM_CLASSES_FILE = Path(__file__).resolve().parent / "iwildcam_classes.csv"


def iwildcam_class_table(path=IWILDCAM_CLASSES_FILE) -> pd.DataFrame:
    """The shipped iWildCam class table (columns y, category_id, english, latin; one row per label
    0..181 in y order; english lower-cased as the reference's head uses it)."""
    df = pd.read_csv(path, encoding="utf-8", keep_default_na=False)
    if list(df.columns) != ["y", "category_id", "english", "latin"] or df["y"].tolist() != list(range(len(df))):
        raise UserError(f"{path}: expected columns y, category_id, english, latin with y = 0..n-1 in order")
    return df


def iwildcam_classnames(categories_csv, n_classes: int, table_csv=IWILDCAM_CLASSES_FILE) -> dict[str, list[str]]:
    """English and Latin names of labels 0..n_classes-1 from the shipped table, after checking it
    against the dataset's categories.csv (columns y, category_id, name; y = 99999 marks categories
    absent from the WILDS release): every label must stand for the same category_id in both."""
    table = iwildcam_class_table(table_csv)
    try:
        df = pd.read_csv(categories_csv)
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{categories_csv} is unreadable ({type(e).__name__}: {e})") from None
    if not {"y", "category_id"} <= set(df.columns):
        raise UserError(f"{categories_csv}: expected columns 'y' and 'category_id', found {list(df.columns)}")
    df = df[(df["y"] >= 0) & (df["y"] < n_classes)].sort_values("y")
    if df["y"].tolist() != list(range(n_classes)):
        raise UserError(f"{categories_csv}: expected one row for each label 0..{n_classes - 1}, found {len(df)} "
                        f"rows with labels in that range")
    if n_classes > len(table):
        raise UserError(f"{categories_csv} has {n_classes} labels, the class table {table_csv} only {len(table)}")
    for (_, row), ours in zip(df.iterrows(), table.itertuples()):
        theirs = pd.to_numeric(row["category_id"], errors="coerce")
        if pd.isna(theirs) or int(theirs) != int(ours.category_id):
            raise UserError(
                f"iWildCam class table {table_csv} disagrees with the dataset's {categories_csv}: label y={ours.y} is "
                f"category_id {ours.category_id} ({ours.latin}) in the table but {row['category_id']} "
                f"({row.get('name', '?')}) in categories.csv. Is this the WILDS iWildCam v2.0 release?")
    table = table.iloc[:n_classes]
    return {"english": table["english"].tolist(), "latin": table["latin"].tolist()}


def _iwildcam_maker(ds, root):
    aliases = {"macro_f1": "F1-macro_all", "accuracy": "acc_avg"}
    inputs = ds._input_array  # filenames under iwildcam_v2.0/train (what IWildCamDataset.get_input reads)

    def make(name, idx):
        return _split(ds, name, idx, lambda i: f"train/{inputs[i]}", "iwildcam", "iwildcam", root, "location", aliases)

    return make


def iwildcam(root, ood_val_size: Optional[int] = 1000, subset_seed: int = 0, subset_dir=None,
             templates: Optional[Sequence[str]] = None, metric: str = "macro_f1", higher_is_better: bool = True,
             caption_names: str = "latin") -> Task:
    """iWildCam v2.0 (182 classes). OOD-val: `ood_val_size` class-balanced examples of the OOD val
    split (seeded by `subset_seed`), recorded in `subset_dir` when given. The zero-shot head uses
    the English names; the flyp captions the `caption_names` ones ('latin', the reference's, or
    'english')."""
    if caption_names not in IWILDCAM_CAPTION_NAMES:
        raise UserError(f"iwildcam: caption_names must be one of {', '.join(IWILDCAM_CAPTION_NAMES)}, "
                        f"not {caption_names!r}")
    ds = _iwildcam_dataset(root)
    names = iwildcam_classnames(Path(ds.data_dir) / "categories.csv", ds.n_classes)
    make = _iwildcam_maker(ds, root)
    val_idx = _official(ds, "val")
    pool = make("ood_val_pool", val_idx)
    ood_val, chosen = _ood_val(pool, val_idx, ood_val_size, subset_seed, None, lambda idx: make("ood_val", idx))
    tests = {"id_test": make("id_test", _official(ds, "id_test")), "ood_test": make("ood_test", _official(ds, "test"))}
    _record("iwildcam", ood_val, chosen, tests, subset_dir,
            {"dataset": "iwildcam", "pool": "wilds split 'val' (OOD)", "n": ood_val_size, "seed": subset_seed})
    return Task(name="iwildcam", classnames=names["english"], templates=list(templates or IWILDCAM_TEMPLATES),
                train=make("train", _official(ds, "train")), id_val=make("id_val", _official(ds, "id_val")),
                ood_val=ood_val, tests=tests, metric=metric, higher_is_better=higher_is_better,
                caption_classnames=names[caption_names])


# ------------------------------------------------------------------------------------------------
# FMoW

def _fmow_dataset(root):
    data_dir = Path(root) / "fmow_v1.1"
    for f in ("RELEASE_v1.1.txt", "rgb_metadata.csv", "country_code_mapping.csv"):
        require(data_dir / f, "fmow", root, "FMoW v1.1")
    from wilds.datasets.fmow_dataset import FMoWDataset

    try:
        with wilds_compat.fmow_iso8601():
            return FMoWDataset(root_dir=str(root), download=False)
    except (KeyError, ValueError, AssertionError, pd.errors.ParserError) as e:
        raise _malformed("FMoW metadata", data_dir / "rgb_metadata.csv", "fmow", root, e) from None


def fmow_classnames() -> list[str]:
    """WILDS' FMoW categories as spelled there ('airport_hangar'): the reference's class names."""
    from wilds.datasets.fmow_dataset import categories

    return list(categories)


def _fmow_maker(ds, root):
    full_idxs = ds.full_idxs  # dataset index -> metadata row (sequestered rows are dropped)
    aliases = {"worst_group_accuracy": "acc_worst_region", "accuracy": "acc_avg"}

    def make(name, idx):
        return _split(ds, name, idx, lambda i: f"images/rgb_img_{full_idxs[i]}.png", "fmow", "fmow", root,
                      "region", aliases)

    return make


def fmow(root, ood_val_size: Optional[int] = 620, subset_seed: int = 0, subset_dir=None,
         templates: Optional[Sequence[str]] = None, metric: str = "worst_group_accuracy",
         higher_is_better: bool = True) -> Task:
    """FMoW v1.1 (62 classes; groups = region). OOD-val: `ood_val_size` class-balanced examples of
    the OOD val split outside the 'Other' region (10 per class by default)."""
    ds = _fmow_dataset(root)
    make = _fmow_maker(ds, root)
    val_idx = _official(ds, "val")
    pool = make("ood_val_pool", val_idx)
    other = [k for k, n in enumerate(pool.group_names) if n == "Other"]
    candidates = np.flatnonzero(~np.isin(pool.groups, other))
    ood_val, chosen = _ood_val(pool, val_idx, ood_val_size, subset_seed, candidates, lambda idx: make("ood_val", idx))
    tests = {"id_test": make("id_test", _official(ds, "id_test")), "ood_test": make("ood_test", _official(ds, "test"))}
    _record("fmow", ood_val, chosen, tests, subset_dir,
            {"dataset": "fmow", "pool": "wilds split 'val' (OOD) without region 'Other'", "n": ood_val_size,
             "seed": subset_seed})
    return Task(name="fmow", classnames=fmow_classnames(), templates=list(templates or FMOW_TEMPLATES),
                train=make("train", _official(ds, "train")), id_val=make("id_val", _official(ds, "id_val")),
                ood_val=ood_val, tests=tests, metric=metric, higher_is_better=higher_is_better)


# ------------------------------------------------------------------------------------------------
# Camelyon17

# Class names and templates of CLIP_benchmark's PatchCamelyon (LAION-AI/CLIP_benchmark, MIT licence;
# key "pcam" of clip_benchmark/datasets/en_classnames.json and en_zeroshot_classification_templates.json,
# commit 374d11f51c5a17a1b925a14c206471e13c205a2b). PCam's patches come from the same CAMELYON slides and
# its label 1 means the same as Camelyon17-WILDS' `tumor` = 1: tumour tissue in the central 32x32 region.
CAMELYON17_CLASSES = ["lymph node", "lymph node containing metastatic tumor tissue"]
CAMELYON17_TEMPLATES = ["a histopathology slide showing {c}", "histopathology image of {c}"]
# official split sizes (WILDS paper, table of dataset statistics); WILDS has no ID test for Camelyon17
CAMELYON17_COUNTS = {"train": 302436, "id_val": 33560, "val": 34904, "test": 85054}
CAMELYON17_N_CLASSES = 2
CAMELYON17_SPLITS = ("train", "id_val", "val", "test")
# hospitals (the wilds class's 0-indexed `center`) of each official split: val and test are assigned by
# hospital in Camelyon17Dataset (VAL_CENTER, TEST_CENTER), train and id_val are the other three
CAMELYON17_HOSPITALS = {"train": {0, 3, 4}, "id_val": {0, 3, 4}, "val": {1}, "test": {2}}
CAMELYON17_TEST = "hospital_2"  # the OOD test split, one column of the tables, named after its hospital


def _camelyon17_dataset(root):
    data_dir = Path(root) / "camelyon17_v1.0"
    for f in ("RELEASE_v1.0.txt", "metadata.csv"):
        require(data_dir / f, "camelyon17", root, "Camelyon17 v1.0")
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset

    try:
        return Camelyon17Dataset(root_dir=str(root), download=False)
    except (KeyError, ValueError, AssertionError, pd.errors.ParserError) as e:
        raise _malformed("Camelyon17 metadata", data_dir / "metadata.csv", "camelyon17", root, e) from None


def _camelyon17_maker(ds, root):
    # groups = hospitals (the domains of the shift), so worst_group_accuracy is the worst hospital's
    # accuracy; the evaluator's own worst-group number (acc_wg) is over slides and is reported beside it
    inputs = ds._input_array  # patches/patient_<p>_node_<n>/patch_..._x_<x>_y_<y>.png (Camelyon17Dataset.get_input)
    aliases = {"accuracy": "acc_avg"}

    def make(name, idx):
        return _split(ds, name, idx, lambda i: inputs[i], "camelyon17", "camelyon17", root, "hospital", aliases)

    return make


def camelyon17_id_split(labels, id_test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in the official id_val's order) of our id_val and id_test: round(fraction x n) of
    each class's examples go to id_test, drawn with `seed`; WILDS' Camelyon17 has no ID test."""
    if isinstance(id_test_fraction, bool) or not 0 < id_test_fraction < 1:
        raise UserError(f"dataset.task.id_test_fraction={id_test_fraction}: must be in (0, 1), the share of the "
                        f"official id_val held out as the ID test")
    return stratified_holdout(labels, id_test_fraction, seed)


def camelyon17(root, ood_val_size: Optional[int] = 1000, subset_seed: int = 0, id_test_fraction: float = 0.5,
               split_seed: int = 0, subset_dir=None, templates=None, metric: str = "accuracy",
               higher_is_better: bool = True) -> Task:
    """Camelyon17-WILDS v1.0 (tumour or not in 96x96 lymph-node patches; domains = hospitals).
    The official hospital splits: train and id_val from hospitals 0, 3, 4, OOD val = hospital 1, OOD
    test = hospital 2 (the split `hospital_2`). OOD-val: `ood_val_size` class-balanced examples of
    hospital 1 (seeded by `subset_seed`). The ID test, which WILDS lacks, is drawn per class from the
    official id_val (`id_test_fraction` of it, seeded by `split_seed`); the rest stays our id_val. Both
    draws are recorded in `subset_dir`. templates: null for CLIP_benchmark's PatchCamelyon templates,
    or what dataset=folder accepts (openai | simple | photo | a list)."""
    from autoft.data.folders import templates_of

    ds = _camelyon17_dataset(root)
    make = _camelyon17_maker(ds, root)
    official_id_val = _official(ds, "id_val")
    kept, held = camelyon17_id_split(ds.y_array[torch.as_tensor(official_id_val)].numpy(), id_test_fraction, split_seed)
    id_val, id_test = make("id_val", official_id_val[kept]), make("id_test", official_id_val[held])
    val_idx = _official(ds, "val")
    ood_val, chosen = _ood_val(make("ood_val_pool", val_idx), val_idx, ood_val_size, subset_seed, None,
                               lambda idx: make("ood_val", idx))
    tests = {"id_test": id_test, CAMELYON17_TEST: make(CAMELYON17_TEST, _official(ds, "test"))}
    _record("camelyon17", ood_val, chosen, tests, subset_dir,
            {"dataset": "camelyon17", "pool": "wilds split 'val' (OOD, hospital 1)", "n": ood_val_size,
             "seed": subset_seed})
    if subset_dir:
        ids = [f"{k}:{i}" for k, s in (("id_val", id_val), ("id_test", id_test)) for i in example_ids(s.dataset)]
        path = save_subset(subset_dir, "id_split_camelyon17", official_id_val[np.concatenate([kept, held])], ids,
                           {"dataset": "camelyon17", "pool": "wilds split 'id_val' (hospitals 0, 3, 4)",
                            "source": "seeded per-class draw from the official id_val", "seed": split_seed,
                            "id_test_fraction": id_test_fraction, "n": {"id_val": len(kept), "id_test": len(held)}},
                           what="ID split")
        log.info("ID split (id_val %d, id_test %d of the official id_val) recorded in %s", len(kept), len(held), path)
    return Task(name="camelyon17", classnames=list(CAMELYON17_CLASSES),
                templates=templates_of(templates) if templates is not None else list(CAMELYON17_TEMPLATES),
                train=make("train", _official(ds, "train")), id_val=id_val, ood_val=ood_val, tests=tests,
                metric=metric, higher_is_better=higher_is_better)


# ------------------------------------------------------------------------------------------------
# preparing and checking

def download(name: str, root) -> None:
    """Download a WILDS dataset with the package's own downloader (skipped when present)."""
    import wilds

    Path(root).mkdir(parents=True, exist_ok=True)
    if name == "fmow":
        with wilds_compat.fmow_iso8601():
            wilds.get_dataset(dataset="fmow", root_dir=str(root), download=True)
    else:
        wilds.get_dataset(dataset=name, root_dir=str(root), download=True)


WILDS_DATASETS = ("iwildcam", "fmow", "camelyon17")  # what scripts/prepare_data.py checks with the wilds classes
FOLDERS = {"iwildcam": "iwildcam_v2.0", "fmow": "fmow_v1.1", "camelyon17": "camelyon17_v1.0"}
# the release's split sizes and class count, what `check` expects unless told otherwise
RELEASES = {"iwildcam": (IWILDCAM_COUNTS, IWILDCAM_CLASSES), "fmow": (FMOW_COUNTS, FMOW_CLASSES),
            "camelyon17": (CAMELYON17_COUNTS, CAMELYON17_N_CLASSES)}


def _manual(name: str, root) -> list[str]:
    folder = FOLDERS[name]
    return [f"{prepare_command(name, root)} --download   (the wilds downloader; {_DOWNLOAD_NOTE[name]})",
            f"or download the {name} archive from https://wilds.stanford.edu/downloads and extract it so that "
            f"{Path(root) / folder} holds its files"]


OFFICIAL_SPLITS = ("train", "id_val", "val", "id_test", "test")


def _read(name: str, root):
    """Our reader on a WILDS folder: the wilds dataset, the head's class names, and our Split of
    every official split (what the tasks above are made of)."""
    splits = OFFICIAL_SPLITS
    if name == "iwildcam":
        ds = _iwildcam_dataset(root)
        classnames = iwildcam_classnames(Path(ds.data_dir) / "categories.csv", ds.n_classes)["english"]
        make = _iwildcam_maker(ds, root)
    elif name == "fmow":
        ds = _fmow_dataset(root)
        classnames = fmow_classnames()
        make = _fmow_maker(ds, root)
    else:
        ds = _camelyon17_dataset(root)
        classnames, splits = list(CAMELYON17_CLASSES), CAMELYON17_SPLITS
        make = _camelyon17_maker(ds, root)
    return ds, classnames, {split: make(split, _official(ds, split)) for split in splits}


def official_splits(name: str, root) -> dict[str, Split]:
    """Our Split of each official WILDS split ('train', 'id_val', 'val', 'id_test', 'test'; Camelyon17
    has no 'id_test'), whole."""
    return _read(name, root)[2]


def our_readings(name: str, splits: dict[str, Split], images: bool = True) -> dict[str, wilds_agreement.SplitReading]:
    """Our splits as `wilds_agreement` readings: dataset indices (the evaluator's), labels, group
    names where compared, and the images our decoder gives at the sampled positions."""
    out = {}
    for split, s in splits.items():
        groups = np.asarray(s.group_names, dtype=object)[s.groups] if wilds_agreement.GROUP_FIELDS[name] else None
        shown = wilds_agreement.sample_images(len(s), lambda j: s.dataset[j][0]) if images else {}
        out[split] = wilds_agreement.SplitReading(s.evaluator.indices, s.labels, groups, shown)
    return out


def agreement(name: str, root, splits: dict[str, Split], images: bool = True) -> list[str]:
    """How our splits of a WILDS folder differ from what the wilds class itself reads there (one
    line per difference; empty when they agree). A folder the wilds class cannot open is one."""
    cls = wilds_agreement.REFERENCE_CLASSES[name]
    try:
        reference = wilds_agreement.open_reference(name, root)
    except Exception as e:  # whatever stops wilds itself is the finding, reported, not raised
        folder = Path(root) / FOLDERS[name]
        return [f"wilds' own {cls} cannot read {folder}, which our reader accepts ({type(e).__name__}: {e})"]
    theirs = wilds_agreement.reference_readings(reference, wilds_agreement.GROUP_FIELDS[name], images)
    return wilds_agreement.disagreements(our_readings(name, splits, images), theirs, f"wilds' {cls}")


def camelyon17_hospital_problems(hospitals: dict[str, set], unassigned: int = 0) -> list[str]:
    """How the hospitals of each split (`hospitals`: split -> hospital ids found) and the metadata rows
    in no split (`unassigned`) depart from the official scheme, one line each: a metadata.csv whose
    `split` column holds other values than 0 (train) and 1 (id_val), or whose `center` column changed."""
    out = []
    for split, want in CAMELYON17_HOSPITALS.items():
        extra = sorted(hospitals.get(split, set()) - want)
        if extra:
            out.append(f"split '{split}' holds hospital(s) {', '.join(map(str, extra))}; the official scheme puts "
                       f"only {', '.join(map(str, sorted(want)))} there (check the split and center columns of "
                       f"camelyon17_v1.0/metadata.csv)")
    if unassigned:
        out.append(f"{unassigned} metadata row(s) in no split: their `split` column is neither 0 (train) nor "
                   f"1 (id_val)")
    return out


def check(name: str, root, expected: Optional[dict] = None, n_classes: Optional[int] = None,
          verify_images: bool = False) -> CheckReport:
    """Check a WILDS dataset on disk: metadata, split sizes, classes, every image file (Camelyon17:
    the official hospital of every split), and that the wilds class itself reads the same splits,
    labels (FMoW: regions; Camelyon17: hospitals) and images as we do."""
    report = CheckReport(name, str(root))
    expected = expected if expected is not None else RELEASES[name][0]
    n_classes = n_classes if n_classes is not None else RELEASES[name][1]
    try:
        ds, classnames, splits = _read(name, root)
    except UserError as e:
        report.bad(str(e))
        report.manual += _manual(name, root)
        return report
    for split, s in splits.items():
        report.count(f"split '{split}'", len(s), expected.get(split))
    if len(classnames) == n_classes and ds.n_classes == n_classes:
        report.good(f"{n_classes} classes with names")
    else:
        report.bad(f"{ds.n_classes} classes in the metadata, {len(classnames)} class names; expected {n_classes}")
    labels = np.concatenate([s.labels for s in splits.values()])
    if labels.min() < 0 or labels.max() >= len(classnames):
        report.bad(f"labels outside 0..{len(classnames) - 1}")
    if name == "camelyon17":
        found = {split: set(s.groups.tolist()) for split, s in splits.items()}
        problems = camelyon17_hospital_problems(found, len(ds) - sum(len(s) for s in splits.values()))
        for p in problems:
            report.bad(p)
        if not problems:
            report.good("the official hospitals: train and id_val from 0, 3, 4; val 1; test 2")
    for split, s in splits.items():
        report.files([s.dataset.path(i) for i in range(len(s))], f"split '{split}'", verify_images)
    differences = agreement(name, root, splits)
    for d in differences:
        report.bad(d)
    if not differences:
        field = wilds_agreement.GROUP_FIELDS[name]
        compared = f"sizes, labels, {field}s" if field else "sizes, labels"
        report.good(f"wilds' own {wilds_agreement.REFERENCE_CLASSES[name]} reads the same {len(splits)} splits "
                    f"({compared}, sampled images)")
    if not report.complete:
        report.manual += _manual(name, root)
    return report
