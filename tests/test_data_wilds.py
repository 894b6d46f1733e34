import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fabricate
from autoft.data import wilds_agreement, wilds_compat, wilds_tasks
from autoft.data.images import ImageFiles
from autoft.data.base import Task, format_prompt
from autoft.errors import UserError
from autoft.metrics import METRICS
from conftest import load_script

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


@pytest.fixture(scope="module")
def wilds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wilds")
    return root, fabricate.make_iwildcam(root), fabricate.make_fmow(root)


# ------------------------------------------------------------------------------------------------
# compatibility with current libraries

def test_scatter_shim_matches_hand_computation():
    src = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    index = torch.tensor([0, 0, 2, 2, 2])
    # group 0: {1, 2}; group 1: empty; group 2: {3, 4, 10}
    assert wilds_compat.scatter(src, index, dim_size=4, reduce="mean").tolist() == pytest.approx([1.5, 0.0, 17 / 3, 0.0])
    assert wilds_compat.scatter(src, index, dim_size=3, reduce="sum").tolist() == [3.0, 0.0, 17.0]
    assert wilds_compat.scatter(src, index, dim_size=3, reduce="max").tolist() == [2.0, 0.0, 10.0]
    assert wilds_compat.scatter(src, index, reduce="min").tolist() == [1.0, 0.0, 3.0]
    two_d = wilds_compat.scatter(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([1, 1]), dim=0, dim_size=2, reduce="mean")
    assert two_d.tolist() == [[0.0, 0.0], [2.0, 3.5]]


def test_wilds_group_average_runs_on_the_shim():
    wilds_compat.install()
    assert "torch_scatter" in sys.modules
    from wilds.common.utils import avg_over_groups

    avgs, counts = avg_over_groups(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 3]), 4)
    assert avgs.tolist() == [0.5, 1.0, 0.0, 1.0] and counts.tolist() == [2, 1, 0, 1]


def test_wilds_is_imported_without_its_network_version_check():
    code = ("import sys; from autoft.data import wilds_tasks; import wilds.version as v; "
            "print(v.check_outdated is None, sys.modules.get('outdated', 'absent') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_fmow_timestamps_need_the_iso8601_parse(wilds_root):
    root = wilds_root[0]
    from wilds.datasets.fmow_dataset import FMoWDataset

    with pytest.raises(ValueError):  # pandas >= 2 rejects the mixed formats without the fix
        FMoWDataset(root_dir=str(root), download=False)
    with wilds_compat.fmow_iso8601():
        ds = FMoWDataset(root_dir=str(root), download=False)
    assert len(ds) == 49  # 50 metadata rows minus the sequestered one
    import wilds.datasets.fmow_dataset as m

    assert not isinstance(m.pd, wilds_compat._PandasDatetimes)  # the patch is undone


# ------------------------------------------------------------------------------------------------
# iWildCam

def test_iwildcam_task(wilds_root, tmp_path):
    root, manifest, _ = wilds_root
    task = wilds_tasks.iwildcam(root, ood_val_size=6, subset_seed=0, subset_dir=tmp_path)
    assert isinstance(task, Task) and task.metric == "macro_f1"
    # the head: English names of the shipped table, checked against categories.csv (y = 99999 rows ignored)
    assert task.classnames == manifest["classnames"] == \
        ["empty", "white-lipped peccary", "central american agouti", "lowland paca", "cougar"]
    assert task.caption_classnames == manifest["latin"] == \
        ["empty", "tayassu pecari", "dasyprocta punctata", "cuniculus paca", "puma concolor"]
    assert task.templates == ["a photo of {}.", "{} in the wild."]
    counts = manifest["counts"]
    assert (len(task.train), len(task.id_val), len(task.tests["id_test"]), len(task.tests["ood_test"])) == \
        (counts["train"], counts["id_val"], counts["id_test"], counts["test"])
    assert task.train.labels.tolist() == manifest["labels"]["train"]
    # OOD-val: 6 class-balanced examples of the 10 OOD val ones (classes 0-3 there: 4, 3, 2, 1):
    # one per class, the last two to two of the classes that have more
    counts = np.bincount(task.ood_val.labels, minlength=4)
    assert len(task.ood_val) == 6 and counts[3] == 1 and sorted(counts[:3].tolist()) == [1, 2, 2]
    assert set(task.ood_val.groups) <= {3, 4}  # the OOD val camera traps
    for split in [task.train, task.id_val, task.ood_val, *task.tests.values()]:
        assert split.labels.dtype == np.int64 and split.labels.min() >= 0 and split.labels.max() < len(task.classnames)
        image, label = split.dataset[0]
        assert image.mode == "RGB" and image.size == (8, 8) and label == split.labels[0]
    record = json.loads((tmp_path / "ood_val_iwildcam.json").read_text())
    assert record["n"] == 6 and len(record["example_ids"]) == 6
    again = wilds_tasks.iwildcam(root, ood_val_size=6, subset_seed=0, subset_dir=tmp_path)
    assert np.array_equal(again.ood_val.labels, task.ood_val.labels)


def test_shipped_iwildcam_class_table():
    table = wilds_tasks.iwildcam_class_table()
    assert list(table.columns) == ["y", "category_id", "english", "latin"]
    assert len(table) == 182 and table["y"].tolist() == list(range(182))
    assert table["category_id"].is_unique
    assert all(e == e.lower() and e.strip() == e and e for e in table["english"])
    # pairs of wise-ft's src/datasets/iwildcam_metadata/labels.csv (y, category_id, Latin, English lower-cased)
    rows = {int(r.y): (int(r.category_id), r.latin, r.english) for r in table.itertuples()}
    assert rows[0] == (0, "empty", "empty")
    assert rows[1] == (2, "tayassu pecari", "white-lipped peccary")
    assert rows[24] == (71, "bos taurus", "cattle cow bull")
    assert rows[52] == (115, "madoqua guentheri", "günther's dik-dik")
    assert rows[115] == (316, "cercopithecus lhoesti", "l'hoest's monkey")
    assert rows[153] == (380, "mazama temama", "central american red brocket")
    assert rows[172] == (558, "motorcycle", "motorcycle")
    assert rows[181] == (571, "mazama temama", "central american red brocket")  # duplicates as in the reference


def test_iwildcam_caption_names_option(wilds_root):
    root = wilds_root[0]
    latin = wilds_tasks.iwildcam(root, ood_val_size=4)  # the reference's caption file uses the Latin names
    assert latin.caption_classnames == fabricate.IWILDCAM_NAMES and latin.classnames == fabricate.IWILDCAM_ENGLISH
    assert [format_prompt(t, latin.caption_classnames[1]) for t in latin.templates] == \
        ["a photo of tayassu pecari.", "tayassu pecari in the wild."]
    english = wilds_tasks.iwildcam(root, ood_val_size=4, caption_names="english")
    assert english.caption_classnames == english.classnames == fabricate.IWILDCAM_ENGLISH
    with pytest.raises(UserError, match="caption_names must be one of latin, english, not 'german'"):
        wilds_tasks.iwildcam(root, caption_names="german")


def test_iwildcam_category_ids_must_agree_with_the_class_table(wilds_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(wilds_root[0] / "iwildcam_v2.0", root / "iwildcam_v2.0")
    cats = root / "iwildcam_v2.0" / "categories.csv"
    text = cats.read_text()
    assert "\n3,4,cuniculus paca\n" in text
    cats.write_text(text.replace("\n3,4,cuniculus paca\n", "\n3,5,cuniculus paca\n"))
    with pytest.raises(UserError) as err:
        wilds_tasks.iwildcam(root, ood_val_size=None)
    msg = str(err.value)
    assert str(cats) in msg and str(wilds_tasks.IWILDCAM_CLASSES_FILE) in msg
    assert "y=3" in msg and "category_id 4 (cuniculus paca)" in msg and "but 5" in msg
    report = wilds_tasks.check("iwildcam", root, expected=wilds_root[1]["counts"], n_classes=5)
    assert not report.complete and any(str(cats) in p for p in report.problems)


def test_iwildcam_metrics_equal_the_wilds_evaluator(wilds_root):
    task = wilds_tasks.iwildcam(wilds_root[0], ood_val_size=None)
    rng = np.random.default_rng(0)
    for split in [task.ood_val, task.tests["ood_test"], task.train]:
        y_true = torch.as_tensor(split.labels)
        y_pred = torch.as_tensor(np.where(rng.random(len(split)) < 0.5, split.labels, rng.integers(0, 5, len(split))))
        official = split.evaluator(y_pred, y_true)
        assert METRICS["macro_f1"](y_pred, y_true) == pytest.approx(official["F1-macro_all"], abs=1e-6)
        assert METRICS["accuracy"](y_pred, y_true) == pytest.approx(official["acc_avg"], abs=1e-6)
        # our key carries the leaderboard's number: WILDS' F1-macro_all is sklearn's macro F1 over the
        # classes present in y_true, computed here without the evaluator
        independent = f1_score(y_true.numpy(), y_pred.numpy(), average="macro", labels=np.unique(y_true.numpy()))
        assert official["macro_f1"] == pytest.approx(independent, abs=1e-6)  # WILDS returns float32
        # a subset of the split, addressed by indices into the split
        sub = np.array([0, 2, 3])
        official_sub = split.evaluator(y_pred[sub], y_true[sub], sub)
        assert METRICS["accuracy"](y_pred[sub], y_true[sub]) == pytest.approx(official_sub["acc_avg"])


@pytest.mark.parametrize("dataset,release", [("iwildcam", "iwildcam_v2.0/RELEASE_v2.0.txt"),
                                             ("camelyon17", "camelyon17_v1.0/RELEASE_v1.0.txt")])
def test_missing_root_names_path_and_command(tmp_path, dataset, release):
    with pytest.raises(UserError) as err:
        getattr(wilds_tasks, dataset)(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / release) in msg
    assert f"python scripts/prepare_data.py --dataset {dataset} --root {tmp_path / 'nowhere'}" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created on the way (the wilds class would create it)


def test_iwildcam_corrupt_image_names_the_file(wilds_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(wilds_root[0] / "iwildcam_v2.0", root / "iwildcam_v2.0")
    task = wilds_tasks.iwildcam(root, ood_val_size=None)
    bad = task.train.dataset.path(3)
    fabricate.corrupt(bad)
    with pytest.raises(UserError, match="corrupt image file: " + bad):
        task.train.dataset[3]
    report = wilds_tasks.check("iwildcam", root, expected=wilds_root[1]["counts"], n_classes=5, verify_images=True)
    assert len(report.problems) == 1 and bad in report.problems[0] and "1 corrupt" in report.problems[0]


def test_iwildcam_check_complete_and_incomplete(wilds_root, tmp_path):
    root, manifest, _ = wilds_root
    report = wilds_tasks.check("iwildcam", root, expected=manifest["counts"], n_classes=5)
    assert report.complete, report.render()
    real = wilds_tasks.check("iwildcam", root)  # against the real release: counts and classes differ
    assert not real.complete and any("expected 129809" in p for p in real.problems)
    assert any("--download" in m for m in real.manual)
    copy = tmp_path / "copy"
    shutil.copytree(root / "iwildcam_v2.0", copy / "iwildcam_v2.0")
    gone = next((copy / "iwildcam_v2.0" / "train").iterdir())
    gone.unlink()
    missing = wilds_tasks.check("iwildcam", copy, expected=manifest["counts"], n_classes=5)
    assert any("1 missing" in p and str(gone) in p for p in missing.problems)


# ------------------------------------------------------------------------------------------------
# FMoW

def test_fmow_task_and_regions(wilds_root):
    root, _, manifest = wilds_root
    task = wilds_tasks.fmow(root, ood_val_size=8, subset_seed=1)
    assert len(task.classnames) == 62 and task.classnames[1] == "airport_hangar" and len(task.templates) == 16
    assert task.caption_classnames == task.classnames
    counts = manifest["counts"]
    assert (len(task.train), len(task.id_val), len(task.tests["id_test"]), len(task.tests["ood_test"])) == \
        (counts["train"], counts["id_val"], counts["id_test"], counts["test"])
    assert task.ood_val.group_names == ["Americas", "Europe", "Africa", "Asia", "Other"]
    assert len(task.ood_val) == 8 and 4 not in set(task.ood_val.groups)  # no 'Other' in the search subset
    assert 4 in set(task.tests["ood_test"].groups)
    names = {"airport": 0, "barn": 6, "dam": 12, "zoo": 61}
    assert set(task.train.labels) <= set(names.values())
    # the sequestered row leaves a gap: dataset index -> image file of its metadata row
    assert task.tests["ood_test"].dataset.path(0).endswith("rgb_img_40.png")


def fmow_prompts(name):
    """The prompts the zero-shot head embeds for one FMoW class (Task.prompts does the same)."""
    return [format_prompt(t, name) for t in wilds_tasks.FMOW_TEMPLATES]


def test_fmow_prompts_are_the_reference_strings():
    # wise-ft src/templates/fmow_template.py with WILDS' spelling of the classes (underscores kept,
    # except in the two a/an templates, whose article rule turns them into spaces)
    assert wilds_tasks.fmow_classnames()[:3] == ["airport", "airport_hangar", "airport_terminal"]
    assert wilds_tasks.fmow_classnames()[30] == "multi-unit_residential"
    assert fmow_prompts("airport_hangar") == [
        "satellite photo of a airport_hangar.",
        "aerial photo of a airport_hangar.",
        "satellite photo of an airport hangar.",
        "aerial photo of an airport hangar.",
        "satellite photo of a airport_hangar in asia.",
        "aerial photo of a airport_hangar in asia.",
        "satellite photo of a airport_hangar in africa.",
        "aerial photo of a airport_hangar in africa.",
        "satellite photo of a airport_hangar in the americas.",
        "aerial photo of a airport_hangar in the americas.",
        "satellite photo of a airport_hangar in europe.",
        "aerial photo of a airport_hangar in europe.",
        "satellite photo of a airport_hangar in oceania.",
        "aerial photo of a airport_hangar in oceania.",
        "a photo of a airport_hangar.",
        "airport_hangar.",
    ]
    assert fmow_prompts("swimming_pool") == [
        "satellite photo of a swimming_pool.",
        "aerial photo of a swimming_pool.",
        "satellite photo of a swimming pool.",
        "aerial photo of a swimming pool.",
        "satellite photo of a swimming_pool in asia.",
        "aerial photo of a swimming_pool in asia.",
        "satellite photo of a swimming_pool in africa.",
        "aerial photo of a swimming_pool in africa.",
        "satellite photo of a swimming_pool in the americas.",
        "aerial photo of a swimming_pool in the americas.",
        "satellite photo of a swimming_pool in europe.",
        "aerial photo of a swimming_pool in europe.",
        "satellite photo of a swimming_pool in oceania.",
        "aerial photo of a swimming_pool in oceania.",
        "a photo of a swimming_pool.",
        "swimming_pool.",
    ]
    # the zero-shot head fills the templates with format_prompt, as Task.prompts does
    assert format_prompt("aerial photo of {a_c}.", "interchange") == "aerial photo of an interchange."
    assert format_prompt("aerial photo of {a_c}.", "Oil_or_gas_facility") == "aerial photo of a Oil or gas facility."


def test_fmow_worst_region_equals_the_wilds_evaluator(wilds_root):
    task = wilds_tasks.fmow(wilds_root[0], ood_val_size=8, subset_seed=1)
    rng = np.random.default_rng(1)
    for split in [task.ood_val, task.tests["ood_test"], task.id_val]:
        y_true = torch.as_tensor(split.labels)
        y_pred = torch.as_tensor(np.where(rng.random(len(split)) < 0.6, split.labels, 12))
        official = split.evaluator(y_pred, y_true)
        groups = torch.as_tensor(split.groups)
        keep = groups != split.group_names.index("Other")  # the evaluator ignores the 'Other' region
        ours = METRICS["worst_group_accuracy"](y_pred[keep], y_true[keep], groups[keep])
        assert ours == pytest.approx(official["acc_worst_region"], abs=1e-6)
        # the objective's key carries the number the WILDS dataset's own eval gives, called directly
        ds = split.evaluator.dataset
        direct, _ = ds.eval(y_pred.long(), y_true.long(), ds.metadata_array[torch.as_tensor(split.evaluator.indices)])
        assert official["worst_group_accuracy"] == pytest.approx(float(direct["acc_worst_region"]), abs=1e-9)
        assert official["worst_group_accuracy"] == pytest.approx(ours, abs=1e-6)
        assert METRICS["accuracy"](y_pred, y_true) == pytest.approx(official["acc_avg"], abs=1e-6)
    # on the search subset (no 'Other') the plain metric is the official one
    s = task.ood_val
    y_pred = torch.zeros(len(s), dtype=torch.long)
    assert METRICS["worst_group_accuracy"](y_pred, torch.as_tensor(s.labels), torch.as_tensor(s.groups)) == \
        pytest.approx(s.evaluator(y_pred, torch.as_tensor(s.labels))["acc_worst_region"])


def test_fmow_missing_root(tmp_path):
    with pytest.raises(UserError, match=r"fmow_v1.1/RELEASE_v1.1.txt.*--dataset fmow"):
        wilds_tasks.fmow(tmp_path)


def test_dataset_configs_build_their_tasks(wilds_root):
    root = wilds_root[0]
    for name, metric in (("iwildcam", "macro_f1"), ("fmow", "worst_group_accuracy")):
        cfg = OmegaConf.merge({"data_root": str(root)}, {"dataset": OmegaConf.load(CONF / f"{name}.yaml")})
        ds = cfg.dataset
        assert ds.metric == metric and ds.metric in METRICS and ds.higher_is_better is True
        exp = OmegaConf.load(CONF.parent / "budget" / f"{name}_vit_b16.yaml")  # the budgets' home
        t = exp.trainer
        assert (exp.search.n_trials, t.inner_steps, t.batch_size, t.epochs, t.base_lr, t.clip_grad_norm) == \
            (500, 100, 256, 20, 1e-5, 1.0)
        task = instantiate(ds.task, _convert_="all", ood_val_size=4)
        assert task.name == name and len(task.ood_val) == 4
    assert OmegaConf.load(CONF / "iwildcam.yaml").task.ood_val_size == 1000
    assert OmegaConf.load(CONF / "fmow.yaml").task.ood_val_size == 620
    assert OmegaConf.load(CONF.parent / "budget" / "fmow_vit_b16.yaml").trainer.weight_decay == 0.1
    assert OmegaConf.load(CONF.parent / "budget" / "iwildcam_vit_b16.yaml").trainer.weight_decay == 0.2


# ------------------------------------------------------------------------------------------------
# the fixtures and our reader, read by the wilds classes themselves

def test_fabricated_iwildcam_is_what_wilds_reads(wilds_root):
    root, manifest, _ = wilds_root
    ds = wilds_agreement.open_reference("iwildcam", root)
    assert type(ds).__name__ == "IWildCamDataset" and ds.n_classes == 5 and len(ds) == 42
    location = ds.metadata_fields.index("location")
    for split, labels in manifest["labels"].items():
        sub = ds.get_subset(split)
        assert ds.y_array[sub.indices].tolist() == labels
        assert set(ds.metadata_array[sub.indices, location].tolist()) == set(fabricate.IWILDCAM_LOCATIONS[split])
    assert ds.get_input(0).size == (8, 8)


def test_fabricated_iwildcam_with_all_182_classes(tmp_path):
    manifest = fabricate.make_iwildcam(tmp_path, n_classes=182, per_class={"train": 2, "val": 1})
    assert manifest["counts"] == {"train": 364, "id_val": 182, "id_test": 182, "val": 182, "test": 182}
    ds = wilds_agreement.open_reference("iwildcam", tmp_path)
    assert ds.n_classes == 182 and len(ds) == 1092
    train = ds.get_subset("train")
    assert sorted(set(ds.y_array[train.indices].tolist())) == list(range(182))  # every class in train
    location = ds.metadata_fields.index("location")
    for split in ("train", "id_val", "val", "test"):
        sub = ds.get_subset(split)
        assert set(ds.metadata_array[sub.indices, location].tolist()) == set(fabricate.IWILDCAM_LOCATIONS[split])
    report = wilds_tasks.check("iwildcam", tmp_path, expected=manifest["counts"], n_classes=182)
    assert report.complete, report.render()
    task = wilds_tasks.iwildcam(tmp_path, ood_val_size=182)
    assert task.classnames == manifest["classnames"] and task.classnames[181] == "central american red brocket"
    assert len(task.tests["id_test"]) == 182 and len(task.ood_val) == 182


def test_fabricated_iwildcam_full_size_jpegs(tmp_path):
    manifest = fabricate.make_iwildcam(tmp_path, n_classes=2, image_size=(1024, 768), per_class=1)
    assert manifest["counts"] == {s: 2 for s in fabricate.IWILDCAM_LOCATIONS} and manifest["image_size"] == (1024, 768)
    ds = wilds_agreement.open_reference("iwildcam", tmp_path)
    image = ds.get_input(3)
    assert image.format == "JPEG" and image.size == (1024, 768) and image.mode == "RGB"
    sizes = [p.stat().st_size for p in (tmp_path / "iwildcam_v2.0" / "train").iterdir()]
    assert len(sizes) == 10 and all(100_000 < n < 300_000 for n in sizes), sizes  # as real camera-trap JPEGs
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 20  # not a flat picture
    # 2 examples per split, fewer than the 3 ID camera traps: wilds needs locations without gaps
    location = ds.metadata_fields.index("location")
    by_split = {s: ds.metadata_array[ds.get_subset(s).indices, location].tolist() for s in ds.split_dict}
    assert by_split == {"train": [0, 1], "id_val": [2, 0], "id_test": [1, 2], "val": [3, 4], "test": [5, 6]}
    with pytest.raises(ValueError, match="at least 1 per class in train"):
        fabricate.make_iwildcam(tmp_path / "none", per_class={"train": 0})


def test_fabricated_fmow_metadata_is_what_wilds_reads(wilds_root):
    root, _, manifest = wilds_root
    ds = wilds_agreement.open_reference("fmow", root)
    rows = manifest["rows"]
    assert len(ds) == sum(r["split"] != "seq" for r in rows) == 49
    assert [r["split"] for r in rows].count(None) == 1  # the 2014 'train' row: in no split
    names = {v: k for k, v in ds.split_dict.items()}
    region = ds.metadata_fields.index("region")
    for i, row in enumerate(ds.full_idxs):  # dataset index -> metadata row, the sequestered row dropped
        want = rows[row]
        assert names.get(int(ds.split_array[i])) == want["split"], (i, row, want)  # the split by year
        assert ds.metadata_map["region"][int(ds.metadata_array[i, region])] == want["region"]
        assert int(ds.y_array[i]) == wilds_tasks.fmow_classnames().index(want["category"])
        assert ds.metadata_map["year"][int(ds.metadata_array[i, ds.metadata_fields.index("year")])] == want["year"]
    counts = {s: sum(r["split"] == s for r in rows) for s in ds.split_dict}
    assert counts == manifest["counts"]
    # the reference's per-element parse and our ISO 8601 parse put every row in the same split
    with wilds_compat.fmow_iso8601():
        from wilds.datasets.fmow_dataset import FMoWDataset

        ours = FMoWDataset(root_dir=str(root), download=False)
    assert np.array_equal(ours.split_array, ds.split_array)


@pytest.mark.parametrize("name", ["iwildcam", "fmow"])
def test_our_reader_agrees_with_wilds(wilds_root, name):
    root = wilds_root[0]
    splits = wilds_tasks.official_splits(name, root)
    assert wilds_tasks.agreement(name, root, splits) == []
    ours = wilds_tasks.our_readings(name, splits)
    theirs = wilds_agreement.reference_readings(wilds_agreement.open_reference(name, root),
                                                wilds_agreement.GROUP_FIELDS[name])
    assert set(ours) == set(theirs) == set(wilds_tasks.OFFICIAL_SPLITS)
    for split in ours:  # real content, compared: the same images at the first, middle and last position
        assert len(ours[split].images) == len(wilds_agreement.sample_positions(len(splits[split]))) > 0
        assert ours[split].images == theirs[split].images and "unreadable" not in ours[split].images.values()
    if name == "fmow":
        assert list(ours["test"].groups[:5]) == ["Americas", "Europe", "Africa", "Asia", "Other"]
    manifest = wilds_root[1] if name == "iwildcam" else wilds_root[2]
    report = wilds_tasks.check(name, root, expected=manifest["counts"], n_classes=manifest["classes"])
    assert report.complete and any(f"wilds' own {wilds_agreement.REFERENCE_CLASSES[name]} reads the same 5 splits"
                                   in m for m in report.ok), report.render()


def test_a_tampered_label_is_named_with_split_and_position(wilds_root):
    root, manifest = wilds_root[0], wilds_root[1]
    splits = wilds_tasks.official_splits("iwildcam", root)
    val = splits["val"]
    labels = val.labels.copy()
    assert labels[7] == 2
    labels[7] = 4
    tampered = dict(splits, val=dataclasses.replace(val, labels=labels))
    assert wilds_tasks.agreement("iwildcam", root, tampered, images=False) == [
        "split 'val': labels differ first at position 7: ours 4, wilds' IWildCamDataset 2"]
    # a split one example short: its size, and where its indices and labels end
    ours = wilds_tasks.our_readings("iwildcam", splits, images=False)
    theirs = dict(ours, test=dataclasses.replace(ours["test"], indices=ours["test"].indices[:-1],
                                                 labels=ours["test"].labels[:-1]))
    found = wilds_agreement.disagreements(ours, theirs, "wilds")
    assert found == ["split 'test': 8 examples in ours, 7 in wilds",
                     "split 'test': indices differ first at position 7: ours 41, wilds (none: split ended)",
                     "split 'test': labels differ first at position 7: ours 2, wilds (none: split ended)"]
    assert manifest["labels"]["test"][7] == 2


def test_a_path_rule_missing_the_sequestered_gap_is_caught(wilds_root):
    # a plausible bug: FMoW images numbered by dataset index instead of metadata row. Rows after the
    # sequestered one (row 19) then open the previous row's image, or none.
    root = wilds_root[0]
    splits = wilds_tasks.official_splits("fmow", root)
    buggy = {}
    for name, s in splits.items():
        idx = s.evaluator.indices
        files = ImageFiles(root / "fmow_v1.1", [f"images/rgb_img_{i}.png" for i in idx], s.labels)
        buggy[name] = dataclasses.replace(s, dataset=files)
    found = wilds_tasks.agreement("fmow", root, buggy)
    assert found == [f"split '{s}': the image at position 0 (dataset index {splits[s].evaluator.indices[0]}) differs "
                     f"from wilds' FMoWDataset's" for s in ("id_test", "val", "test")]
    report = wilds_tasks.check("fmow", root, expected=wilds_root[2]["counts"])
    assert report.complete  # the real rule agrees


def test_prepare_data_check_reports_the_agreement(wilds_root, capsys):
    script = load_script("prepare_data")
    root = wilds_root[0]
    code = script.main(["--dataset", "fmow", "--root", str(root), "--check"])
    out = capsys.readouterr().out
    assert code == 1 and "expected 76863" in out  # a fixture, not the full release
    assert "ok       wilds' own FMoWDataset reads the same 5 splits (sizes, labels, regions, sampled images)" in out
