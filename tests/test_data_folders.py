"""A user's own shift (autoft.data.folders): a DomainBed-style tree and its CSV manifest, written as real
JPEG and PNG files (RGB, RGBA, palette, greyscale), read back by torchvision's ImageFolder as the
reference; the seeded ID split, the OOD-val mixture, the records beside the study; every bad input
refused with one message."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

import fabricate
from autoft import cli
from autoft.data import folders
from autoft.data.folders import draw_id_split, folder_task, read_manifest, read_tree
from autoft.errors import UserError
from conftest import compose_config

ROLES = dict(id_domain="photo", ood_val_domain="art_painting", test_domains=["cartoon", "sketch"], templates="photo")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    return root, fabricate.make_domain_tree(root)


def _copy(tree, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tree[0], dst)
    return dst


def test_each_domain_reads_as_torchvision_imagefolder_less_hidden_entries(tree):
    root, made = tree
    listing = read_tree(root)
    assert listing.domain_names() == sorted(made["domains"])  # .ipynb_checkpoints and __MACOSX are not domains
    for domain in made["domains"]:
        theirs = ImageFolder(str(root / domain))
        # ImageFolder reads the hidden folder as a class (pytorch/vision #2831); we skip and name it
        hidden = [c for c in theirs.classes if c.startswith(".")]
        assert hidden == ([".ipynb_checkpoints"] if domain == made["domains"][0] else [])
        kept = [(Path(p).relative_to(root).as_posix(), theirs.classes[y]) for p, y in theirs.samples
                if not theirs.classes[y].startswith(".")]
        ours = [(p, c) for p, c, d in zip(listing.paths, listing.labels, listing.domains) if d == domain]
        assert ours == kept and len(ours) == len(made["paths"][domain])
    assert {".ipynb_checkpoints/", "__MACOSX/", "README.txt", "art_painting/.ipynb_checkpoints/",
            "art_painting/dog/.DS_Store"} <= set(listing.skipped)


def test_images_of_every_mode_decode_to_the_rgb_imagefolder_gives(tree):
    root, made = tree
    task = folder_task(root, **ROLES, ood_val_size=None)
    theirs = ImageFolder(str(root / "sketch"))
    split = task.tests["sketch"]
    modes = set()
    for i in range(len(split)):
        path = split.dataset.path(i)
        with Image.open(path) as raw:
            modes.add(raw.mode)
        image, label = split.dataset[i]
        j = [p for p, _ in theirs.samples].index(path)
        their_image, their_label = theirs[j]
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(their_image))
        assert task.classnames[label] == theirs.classes[their_label]
    assert {"RGB", "RGBA", "P", "L"} <= modes  # PNG with alpha, palette and grey, JPEG in colour and grey


def test_the_manifest_builds_the_same_task_as_the_tree(tree):
    root, made = tree
    a = folder_task(root, **ROLES, ood_val_size=12)
    b = folder_task(root, manifest=made["manifest"], **ROLES, ood_val_size=12)
    for name in ("train", "id_val", "ood_val"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert list(sa.dataset.example_ids()) == list(sb.dataset.example_ids()) and np.array_equal(sa.labels, sb.labels)
    assert list(a.tests) == list(b.tests) == ["id_test", "cartoon", "sketch"]  # one test split per test domain
    assert a.classnames == b.classnames == ["dog", "elephant", "guitar"]


def test_the_id_split_is_seeded_per_class_and_ignores_listing_order():
    rng = np.random.default_rng(0)
    paths = [f"d/c{k}/{i:03d}.png" for k in range(3) for i in range(20)]
    labels = np.repeat(np.arange(3), 20)
    parts = draw_id_split(paths, labels, 0.1, 0.2, seed=5)
    assert [len(parts[k]) for k in ("train", "id_val", "id_test")] == [42, 6, 12]  # 2 + 4 held out per class of 20
    for k in range(3):
        assert (labels[parts["id_val"]] == k).sum() == 2 and (labels[parts["id_test"]] == k).sum() == 4
    assert sorted(np.concatenate(list(parts.values()))) == list(range(60))
    # the same files listed in another order draw the same files
    perm = rng.permutation(60)
    shuffled = draw_id_split([paths[i] for i in perm], labels[perm], 0.1, 0.2, seed=5)
    for k in parts:
        assert sorted(paths[perm[i]] for i in shuffled[k]) == sorted(paths[i] for i in parts[k])
    other = draw_id_split(paths, labels, 0.1, 0.2, seed=6)
    assert not np.array_equal(other["id_test"], parts["id_test"])


def test_the_draw_is_recorded_and_a_resumed_study_with_another_draw_is_refused(tree, tmp_path):
    root, _ = tree
    task = folder_task(root, **ROLES, subset_dir=tmp_path, name="mine")
    record = json.loads((tmp_path / "id_split_mine.json").read_text())
    assert record["info"]["seed"] == 0 and record["info"]["n"] == {"train": 15, "id_val": 3, "id_test": 6}
    assert record["example_ids"][:3] == [f"id_val:{p}" for p in sorted(
        task.id_val.dataset.relpaths[i].decode() for i in range(3))]
    assert (tmp_path / "ood_val_mine.json").is_file()
    folder_task(root, **ROLES, subset_dir=tmp_path, name="mine")  # the same draw resumes
    with pytest.raises(UserError, match="records a different ID split"):
        folder_task(root, **ROLES, subset_dir=tmp_path, name="mine", split_seed=1)


def test_the_manifest_split_column_overrides_the_draw(tree, tmp_path):
    root, made = tree
    rows = list(csv.reader(open(made["manifest"])))
    photo = [r for r in rows[1:] if r[2] == "photo"]
    chosen = {"id_val": photo[0][0], "id_test": photo[1][0]}
    manifest = tmp_path / "split.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "domain", "split"])
        for r in rows[1:]:
            split = "" if r[2] != "photo" else next((k for k, p in chosen.items() if p == r[0]), "train")
            w.writerow([*r, split])
    task = folder_task(root, manifest=manifest, **ROLES)
    assert [task.id_val.dataset.relpaths[0].decode()] == [chosen["id_val"]] and len(task.id_val) == 1
    assert [task.tests["id_test"].dataset.relpaths[0].decode()] == [chosen["id_test"]]
    assert len(task.train) == len(photo) - 2


def test_a_mixture_ood_val_is_balanced_over_classes_and_domains(tree):
    root, _ = tree
    task = folder_task(root, id_domain="photo", ood_val_domain=["art_painting", "cartoon"], test_domains=["sketch"],
                       templates="photo", ood_val_size=12)
    assert task.ood_val.name == "mix(art_painting+cartoon)"
    cells = np.bincount(task.ood_val.labels * 2 + (task.ood_val.groups - 1), minlength=6)
    assert cells.tolist() == [2] * 6  # 3 classes x 2 domains, 2 images each
    assert task.ood_val.group_names == ["photo", "art_painting", "cartoon", "sketch"]


def test_class_names_and_templates(tmp_path):
    root = tmp_path / "d"
    fabricate.make_domain_tree(root, domains=("a1", "b1", "c1"), classes=("Alarm_Clock", "empty"), per_class=4,
                               junk=False, manifest=None)
    task = folder_task(root, id_domain="a1", ood_val_domain="b1", test_domains=["c1"],
                       class_names={"empty": "empty scene"})
    from open_clip import zero_shot_metadata

    assert task.classnames == ["Alarm Clock", "empty scene"]
    assert task.templates == [t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES] and len(task.templates) == 80
    assert folders.templates_of("simple")[0] == "itap of a {}." and folders.templates_of(["{} here."]) == ["{} here."]


def _expect_refusal(match, **kwargs):
    with pytest.raises(UserError, match=match):
        folder_task(**kwargs)


def test_bad_layouts_are_refused_with_one_message_naming_the_fix(tree, tmp_path):
    root = _copy(tree, tmp_path)
    base = dict(root=root, **ROLES)
    _expect_refusal("not a folder", **{**base, "root": tmp_path / "nowhere"})
    _expect_refusal(r"domain 'photos' not found in .*; domains found: art_painting, cartoon, photo, sketch",
                    **{**base, "id_domain": "photos"})
    _expect_refusal("domain 'photo' is used twice", **{**base, "test_domains": ["photo", "sketch"]})
    _expect_refusal("OOD-val domain 'art_painting' is also a test domain", **{**base, "test_domains": ["art_painting"]})
    _expect_refusal("'id_test' is a split or table column name", **{**base, "test_domains": ["id_test"]})
    _expect_refusal("at least two", **{**base, "classes": ["dog"]})
    (root / "cartoon" / "tiger").mkdir()
    _expect_refusal(r"class folder .*cartoon/tiger holds no image", **base)
    (root / "cartoon" / "tiger" / "t.png").write_bytes((root / "photo" / "dog" / "dog_001.png").read_bytes())
    _expect_refusal(r"'tiger' is in 'cartoon' \(e.g. cartoon/tiger/t.png\) but missing from 'photo', 'art_painting', 'sketch'.*"
                    r"dataset.task.classes=\[dog,elephant,guitar\]", **base)
    task = folder_task(**base, classes=["dog", "elephant", "guitar"])  # the fix the message gives
    assert task.classnames == ["dog", "elephant", "guitar"]
    (root / "empty_domain").mkdir()
    _expect_refusal("domain 'empty_domain' holds no image", **{**base, "test_domains": ["empty_domain"]})
    _expect_refusal("class 'dog' has 2 image.*too few to split", **{**base, "classes": ["dog", "guitar"],
                                                                   "root": _few(root, "dog", 2)})


def _few(root: Path, cls: str, keep: int) -> Path:
    """Leave only `keep` images of class `cls` in the photo domain."""
    files = sorted((root / "photo" / cls).rglob("*.*"))
    for f in files[keep:]:
        f.unlink()
    return root


def test_an_unreadable_image_is_named(tree, tmp_path):
    root = _copy(tree, tmp_path)
    bad = root / "sketch" / "dog" / "dog_000.jpg"
    bad.write_bytes(b"not a jpeg")
    task = folder_task(root, **ROLES)
    i = [task.tests["sketch"].dataset.path(k) for k in range(len(task.tests["sketch"]))].index(str(bad))
    with pytest.raises(UserError, match=f"corrupt image file: {bad}.*prepare_data.py --dataset folder"):
        task.tests["sketch"].dataset[i]
    report = folders.check({"root": str(root), **ROLES}, "folder")
    assert not report.complete and any(str(bad) in p for p in report.problems)


def _write_manifest(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "domain"], *rows])
    return path


def test_bad_manifests_are_refused_naming_the_line(tree, tmp_path):
    root, made = tree
    good = [r for r in csv.reader(open(made["manifest"]))][1:]
    cases = [
        ([*good, ["../outside.png", "dog", "photo"]], "line 98: path ../outside.png is outside the root"),
        ([*good, ["photo/dog/nope.png", "dog", "photo"]], "line 98: image file missing"),
        ([*good, good[0]], f"line 98: path {good[0][0]} repeats line 2"),
        ([*good, [good[0][0].replace("art_painting", "photo"), "", "photo"]], "line 98: empty label"),
        ([*good[:-1], [good[-1][0], "dgo", "sketch"]], "'dgo' is in 'sketch' \\(e.g. sketch/guitar/.* in .*m4.csv\\) but missing from"),
    ]
    for k, (rows, match) in enumerate(cases):
        with pytest.raises(UserError, match=match):
            folder_task(root, manifest=_write_manifest(tmp_path / f"m{k}.csv", rows), **ROLES)
    (tmp_path / "cols.csv").write_text("file,class,domain\nx,y,z\n")
    with pytest.raises(UserError, match="must name the columns path,label,domain"):
        read_manifest(root, tmp_path / "cols.csv")


def test_the_config_refuses_bad_roles_before_listing_anything():
    from autoft import config_checks

    cfg = compose_config("dataset=pacs", "model=tiny_vit", "dataset.task.root=/nonexistent",
                         "dataset.task.test_domains=[cartoon,art_painting]")
    with pytest.raises(UserError, match="OOD-val domain 'art_painting' is also a test domain"):
        config_checks.validate(cfg)
    cfg = compose_config("dataset=folder", "model=tiny_vit")
    with pytest.raises(UserError, match="dataset.task.id_domain is empty"):
        config_checks.validate(cfg)


def test_any_model_pairs_with_a_user_dataset_through_the_uncalibrated_budget():
    cfg = compose_config("dataset=pacs", "model=tiny_vit")
    assert (cfg.budget.name, cfg.budget.calibrated, cfg.trainer.batch_size, cfg.search.n_trials) == ("user_data", False, 32, 100)
    assert compose_config("dataset=vlcs").model.name == "vit_b16"  # real images: the paper's backbone by default


def test_a_metric_a_split_cannot_compute_is_refused_before_evaluation():
    cfg = compose_config("experiment=shapes_tiny_vit", "method=zeroshot", "dataset.metric=worst_group_accuracy",
                         "dataset.task.n_train=20", "dataset.task.n_val=10", "dataset.task.n_test=10",
                         "dataset.task.ood_val_size=10", "dataset.task.cache_dir=null")
    with pytest.raises(UserError, match="dataset.metric=worst_group_accuracy: the shapes split.* have no groups"):
        cli.build_task(cfg)


def test_worst_domain_accuracy_is_the_worst_domain_of_a_mixture(tree):
    import torch

    from autoft.evaluation import split_metrics

    root, _ = tree
    task = folder_task(root, id_domain="photo", ood_val_domain=["art_painting", "cartoon"], test_domains=["sketch"],
                       templates="photo", ood_val_size=12)
    s = task.ood_val
    logits = torch.zeros(len(s), 3)
    right = s.groups == 1  # every art_painting image right, every cartoon image wrong
    logits[torch.arange(len(s)), torch.as_tensor(np.where(right, s.labels, (s.labels + 1) % 3))] = 1.0
    m = split_metrics(logits, s)
    assert (m["accuracy"], m["worst_group_accuracy"]) == (0.5, 0.0)


def test_domainnet_sized_class_folders_list_as_imagefolder_and_build(tmp_path):
    """DomainNet's shape (6 domains, 345 class folders each, names with underscores) with empty files:
    listing and building never open an image, so the layout's size is what is tested here (the whole
    587k-file tree, measured by hand: listed in 0.6 s, task built in 1.1 s on 2 cores)."""
    domains = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
    for d in domains:
        for k in range(345):
            folder = tmp_path / d / f"class_{k:03d}_name"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{d}_{k:03d}_{i}.jpg").touch()
    theirs = ImageFolder(str(tmp_path / "real"), is_valid_file=lambda p: p.endswith(".jpg"))
    listing = read_tree(tmp_path)
    ours = [(p, c) for p, c, d in zip(listing.paths, listing.labels, listing.domains) if d == "real"]
    assert ours == [(Path(p).relative_to(tmp_path).as_posix(), theirs.classes[y]) for p, y in theirs.samples]
    task = folder_task(tmp_path, id_domain="real", ood_val_domain="clipart",
                       test_domains=["infograph", "painting", "quickdraw", "sketch"], templates="photo")
    assert len(task.classnames) == 345 and task.classnames[0] == "class 000 name"
    assert (len(task.train), len(task.id_val), len(task.tests["id_test"])) == (345, 345, 345)  # 1 + 1 + 1 per class
    assert len(task.ood_val) == 1000 and np.bincount(task.ood_val.labels).min() >= 2  # class-balanced
