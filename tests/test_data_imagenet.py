import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fabricate
from autoft.data import imagenet as inet
from autoft.data.base import project_logits
from autoft.data.images import list_class_folders
from autoft.data.imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from autoft.errors import UserError
from autoft.metrics import METRICS

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
C = fabricate.C_CORRUPTIONS


@pytest.fixture(scope="module")
def inet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, fabricate.make_imagenet(root)


@pytest.fixture(scope="module")
def task(inet_root, tmp_path_factory):
    study = tmp_path_factory.mktemp("study")
    return inet.imagenet(inet_root[0], ood_val_size=10, subset_seed=0, subset_dir=study, id_val_fraction=1 / 3,
                         corruptions=C), study


def test_wnid_tables():
    assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert len(IMAGENET_R_WNIDS) == len(IMAGENET_A_WNIDS) == 200
    assert set(IMAGENET_R_WNIDS) <= set(IMAGENET_WNIDS) and set(IMAGENET_A_WNIDS) <= set(IMAGENET_WNIDS)
    assert inet.imagenet_classnames(["n01440764", "n07753592"]) == ["tench", "banana"]
    templates = inet.imagenet_templates()
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)


def test_imagenet_splits(task, inet_root):
    t, _ = task
    m = inet_root[1]
    assert t.classnames == ["tench", "goldfish", "stingray", "Shih Tzu", "analog clock", "digital clock",
                            "soccer ball", "banana"]
    # ID val: a stratified third of train (2 of 6 per class), disjoint from ID train
    assert len(t.id_val) == 16 and len(t.train) == 32
    assert np.bincount(t.id_val.labels).tolist() == [2] * 8
    assert not set(t.train.dataset.example_ids()) & set(t.id_val.dataset.example_ids())
    sizes = {k: len(s) for k, s in t.tests.items()}
    assert sizes == {"imagenet": m["val"] - 10, "imagenet_v2": m["v2"], "imagenet_r": m["r"], "imagenet_a": m["a"],
                     "imagenet_sketch": m["sketch"], "objectnet": m["objectnet"]}
    for name, split in [("train", t.train), ("id_val", t.id_val), ("ood_val", t.ood_val), *t.tests.items()]:
        assert split.labels.dtype == np.int64 and split.labels.min() >= 0
        assert split.labels.max() < split.num_classes <= len(t.classnames), name
        image, label = split.dataset[len(split) - 1]
        assert image.mode == "RGB" and label == split.labels[-1]
    # V2 folder k is class k; Sketch folders are wnids
    assert t.tests["imagenet_v2"].labels.tolist() == [i for i in range(8) for _ in range(2)]
    assert t.tests["imagenet_sketch"].labels.tolist() == list(range(8))


def test_ood_val_from_imagenet_c_never_touches_a_test(task):
    t, study = task
    ood = t.ood_val
    assert len(ood) == 10 and np.bincount(ood.labels, minlength=8).min() >= 1  # class-balanced over 8 classes
    assert ood.group_names == list(C) and set(ood.groups) <= {0, 1}
    assert all(f"/{c}/5/" in ood.dataset.path(i) for i, c in zip(range(10), [C[g] for g in ood.groups]))
    ids = set(ood.dataset.example_ids())
    assert all(i.startswith("imagenet-val:ILSVRC2012_val_") for i in ids)
    # the ID test is ImageNet val without the source images of the OOD-val subset
    val_ids = set(t.tests["imagenet"].dataset.example_ids())
    assert len(val_ids) + len(ids) == 24 and not ids & val_ids
    record = json.loads((study / "ood_val_imagenet.json").read_text())
    assert sorted(record["example_ids"]) == sorted(ood.dataset.example_ids())


def test_class_masks_of_r_a_objectnet(task):
    t, _ = task
    wnids = sorted(fabricate.IMAGENET_WNIDS)
    r, a, on = t.tests["imagenet_r"], t.tests["imagenet_a"], t.tests["objectnet"]
    assert r.class_map == [[wnids.index(w)] for w in fabricate.R_WNIDS] and r.num_classes == 5
    assert a.class_map == [[wnids.index(w)] for w in fabricate.A_WNIDS] and a.num_classes == 3
    # ObjectNet: 'alarm_clock' stands for analog + digital clock, 'banana' for banana; 'air_freshener'
    # (no ImageNet class) is left out
    assert on.class_map == [[4, 5], [7]] and on.labels.tolist() == [0, 0, 0, 1, 1, 1]
    image, _ = on.dataset[0]
    assert image.size == (8, 8)  # the 2-pixel red frame is cropped
    assert np.asarray(image)[..., 0].max() < 200


def test_forgetting_the_class_mask_gives_wrong_numbers(task):
    """A perfect model scores 100% only when the 1000-way (here 8-way) logits are projected."""
    t, _ = task
    for name in ("imagenet_r", "imagenet_a", "objectnet"):
        split = t.tests[name]
        logits = torch.full((len(split), len(t.classnames)), -5.0)
        for i, y in enumerate(split.labels):
            logits[i, split.class_map[y][-1]] = 5.0  # the right ImageNet class wins
        y_true = torch.as_tensor(split.labels)
        right = METRICS["accuracy"](project_logits(logits, split.class_map).argmax(1), y_true)
        forgot = METRICS["accuracy"](logits.argmax(1), y_true)
        assert right == 1.0 and forgot < 0.5, name


def test_objectnet_mapping_chain(inet_root):
    folders, names, class_map = inet.objectnet_classes(inet_root[0] / "objectnet-1.0" / "mappings", fabricate.IMAGENET_WNIDS)
    assert folders == ["alarm_clock", "banana"] and names == ["Alarm clock", "Banana"] and class_map == [[4, 5], [7]]


def test_missing_root_and_missing_parts(tmp_path, inet_root):
    with pytest.raises(UserError) as err:
        inet.imagenet(tmp_path / "none")
    msg = str(err.value)
    assert str(tmp_path / "none" / "imagenet" / "train") in msg
    assert f"python scripts/prepare_data.py --dataset imagenet --root {tmp_path / 'none'}" in msg
    with pytest.raises(UserError, match=r"objectnet-elsewhere.*prepare_data.py --dataset imagenet"):
        inet.imagenet(inet_root[0], corruptions=C, paths={"objectnet": "objectnet-elsewhere"})
    with pytest.raises(UserError, match="unknown ImageNet test"):
        inet.imagenet(inet_root[0], corruptions=C, tests=["imagenet_x"])
    # without ObjectNet in `tests`, its absence does not matter
    t = inet.imagenet(inet_root[0], corruptions=C, tests=["imagenet_r"], ood_val_size=4, id_val_fraction=0.2,
                      paths={"objectnet": "objectnet-elsewhere"})
    assert sorted(t.tests) == ["imagenet", "imagenet_r"]


def test_unsorted_val_and_foreign_folders(tmp_path, inet_root):
    root = tmp_path / "copy"
    shutil.copytree(inet_root[0] / "imagenet", root / "imagenet")
    shutil.copytree(inet_root[0] / "ImageNet-C", root / "ImageNet-C")
    for f in (root / "imagenet" / "val").rglob("*.JPEG"):
        f.rename(root / "imagenet" / "val" / f.name)
    for d in (root / "imagenet" / "val").iterdir():
        if d.is_dir():
            d.rmdir()
    with pytest.raises(UserError, match="sorted into <wnid>/ folders"):
        inet.imagenet(root, corruptions=C, tests=[])
    (root / "imagenet" / "train" / "cats").mkdir()
    with pytest.raises(UserError, match=r"unknown: \['cats'\]"):
        inet.imagenet(root, corruptions=C, tests=[])


def test_corrupt_image_names_the_file(tmp_path, inet_root):
    root = tmp_path / "copy"
    shutil.copytree(inet_root[0], root)
    t = inet.imagenet(root, corruptions=C, ood_val_size=4, id_val_fraction=0.2)
    bad = t.tests["imagenet_r"].dataset.path(1)
    fabricate.corrupt(bad)
    with pytest.raises(UserError, match="corrupt image file: " + bad):
        t.tests["imagenet_r"].dataset[1]


def test_listing_cache_is_reused_and_refreshed(tmp_path, inet_root):
    src = inet_root[0] / "imagenet-r"
    d = tmp_path / "r"
    shutil.copytree(src, d)
    first = list_class_folders(d, index_dir=tmp_path / "idx")
    assert len(list((tmp_path / "idx").glob("listing-*.npz"))) == 1
    again = list_class_folders(d, index_dir=tmp_path / "idx")
    assert again.relpaths == first.relpaths and np.array_equal(again.labels, first.labels)
    (d / fabricate.R_WNIDS[0] / "new.jpg").write_bytes((d / fabricate.R_WNIDS[0] / "art_0.jpg").read_bytes())
    fresh = list_class_folders(d, index_dir=tmp_path / "idx")
    assert len(fresh.relpaths) == len(first.relpaths) + 1


def test_check_reports(inet_root):
    root, m = inet_root
    expected = {"train": m["train"], "val": m["val"], "imagenet_v2": m["v2"], "imagenet_r": m["r"],
                "imagenet_a": m["a"], "imagenet_sketch": m["sketch"], "objectnet": m["objectnet"],
                "imagenet_c": m["c_per_corruption"]}
    report = inet.check(root, expected=expected, corruptions=C)
    # the only problem: a miniature train folder instead of the 1000 classes
    assert report.problems == ["train: 8 class folders, expected the 1000 ImageNet wnids"], report.render()
    assert "objectnet: class mask of 2 classes" in report.ok
    real = inet.check(root, corruptions=["snow"])
    assert any("expected 1281167" in p for p in real.problems)
    assert any("ImageNet-C/snow/5 missing" in p for p in real.problems)
    assert any("--download" in s for s in real.manual)


def test_dataset_config(inet_root, tmp_path):
    cfg = OmegaConf.merge({"data_root": str(inet_root[0]), "cache_dir": str(tmp_path)},
                          {"dataset": OmegaConf.load(CONF / "imagenet.yaml")})
    ds, exp = cfg.dataset, OmegaConf.load(CONF.parent / "budget" / "imagenet_vit_b16.yaml")  # the budgets' home
    t = exp.trainer
    assert (ds.metric, exp.search.n_trials, t.inner_steps, t.batch_size, t.epochs, t.base_lr, t.weight_decay,
            t.clip_grad_norm, ds.task.ood_val_size) == ("accuracy", 100, 5, 512, 10, 1e-5, 0.1, None, 1000)
    assert len(ds.task.corruptions) == 15
    t = instantiate(ds.task, _convert_="all", ood_val_size=8, corruptions=list(C), id_val_fraction=0.2)
    assert t.name == "imagenet" and len(t.ood_val) == 8 and len(t.tests) == 6
    assert list((tmp_path / "listings").glob("listing-*.npz"))  # folder listings cached under cache_dir


def test_incomplete_r_release_is_refused_with_full_imagenet(tmp_path, inet_root):
    """With all 1000 train classes, ImageNet-R/A must have exactly the 200 folders of the release."""
    root = tmp_path / "copy"
    for part in ("imagenet", "ImageNet-C", "imagenet-r", "imagenet-a"):
        shutil.copytree(inet_root[0] / part, root / part)
    for w in IMAGENET_WNIDS:
        (root / "imagenet" / "train" / w).mkdir(exist_ok=True)
    with pytest.raises(UserError, match="ImageNet-R at .* has 5 class folders, not the 200 of the release"):
        inet.imagenet(root, corruptions=C, tests=["imagenet_r"], ood_val_size=4)
    for w in IMAGENET_R_WNIDS:
        (root / "imagenet-r" / w).mkdir(exist_ok=True)
    t = inet.imagenet(root, corruptions=C, tests=["imagenet_r"], ood_val_size=4, id_val_fraction=0.2)
    r = t.tests["imagenet_r"]
    assert len(t.classnames) == 1000 and len(r.class_map) == 200
    assert r.class_map[0] == [1]  # goldfish, the first ImageNet-R class, is ImageNet class 1
