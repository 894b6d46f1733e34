"""The preprocessed image cache (autoft.data.image_cache): bit-identical to live preprocessing on every
real dataset format at realistic image sizes, one mechanism for whole splits and the search's
subsets, and never silently wrong (truncated, corrupt, stale, interrupted, full disk)."""
import json
import logging
import os
import subprocess

import numpy as np
import pytest
import torch

import fabricate
from autoft.data import cifar, imagenet, wilds_tasks
from autoft.data.loading import UInt8View, image_view, loader, read_all
from autoft.data.image_cache import CachedImages, CachePolicy, build, spec_for
from autoft.errors import UserError

SIZE = 224


def policy(tmp_path, mode="auto", dataset="d"):
    return CachePolicy(mode, str(tmp_path / "caches"), dataset)


def assert_identical(view, split, indices=None):
    live = UInt8View(split, SIZE, indices)
    assert isinstance(view, CachedImages) and len(view) == len(live)
    for i in range(len(live)):
        (a, ya), (b, yb) = view[i], live[i]
        assert a.dtype == torch.uint8 and a.shape == (3, SIZE, SIZE)
        assert torch.equal(a, b) and ya == yb, f"{split.name}[{i}]"


@pytest.fixture(scope="module")
def wildcam(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwildcam")
    fabricate.make_iwildcam(root, n_classes=3, image_size=(1024, 768), per_class=1, sizes={"train": 9})
    return root, wilds_tasks.iwildcam(root, ood_val_size=3)


def test_iwildcam_cache_equals_live_and_serves_the_search_subsets(wildcam, tmp_path):
    """1024x768 camera-trap JPEGs: every cached image equals the live one, byte for byte; the pool (a
    subset of train) comes from train's cache once that exists, else from a cache of its own."""
    _, task = wildcam
    p = policy(tmp_path, dataset="iwildcam")
    pool = np.array([1, 4, 7])
    view, source = image_view(task.train, SIZE, pool, p)  # no train cache yet: the subset gets one
    assert source == "cache" and "train-subset" in view.cache.folder.name
    assert_identical(view, task.train, pool)
    for split in (task.train, task.ood_val, task.tests["ood_test"]):
        view, source = image_view(split, SIZE, None, p)
        assert source == "cache" and view.cache.folder.name.startswith(f"iwildcam-{split.name}-224px-")
        assert_identical(view, split)
    view, _ = image_view(task.train, SIZE, pool, p)  # now read from the whole split's cache
    assert "subset" not in view.cache.folder.name and list(view.rows) == [1, 4, 7]
    images, labels = read_all(image_view(task.train, SIZE, pool, p)[0])  # as the search reads its pool
    assert torch.equal(images, torch.stack([UInt8View(task.train, SIZE, pool)[i][0] for i in range(3)]))
    assert labels.tolist() == task.train.labels[pool].tolist()
    x, y = view.batch([2, 0])  # a batched read: in the asked order
    assert torch.equal(x[0], view[2][0]) and torch.equal(x[1], view[0][0]) and y.tolist() == [view[2][1], view[0][1]]
    batches = list(loader(task.train, SIZE, 4, shuffle=True, seed=3, view=view))  # what EpochSource iterates
    order = torch.randperm(3, generator=torch.Generator().manual_seed(3)).tolist()  # the shuffle a live loader draws
    assert [b[1].tolist() for b in batches] == [[view[i][1] for i in order]]
    assert torch.equal(batches[0][0], torch.stack([view[i][0] for i in order]))
    manifest = json.loads((view.cache.folder / "manifest.json").read_text())
    assert manifest["shape"] == [len(task.train), 3, SIZE, SIZE] and manifest["dataset"] == "iwildcam"
    assert manifest["preprocessing"]["size"] == SIZE and len(manifest["checksum"]) == 64
    assert manifest["source"]["root"].endswith("iwildcam_v2.0") and manifest["source"]["files"]
    assert image_view(task.train, SIZE, None, policy(tmp_path, "off"))[1] == "live"


def test_fmow_imagenet_cifar_caches_equal_live(tmp_path):
    """PNG (FMoW at 512x384), JPEG (ImageNet at 500x375, ObjectNet's frame crop), in-memory arrays
    (CIFAR-10 32x32, upsampled to 224): the cache gives the live bytes."""
    fabricate.make_fmow(tmp_path / "fmow", image_size=(512, 384))
    task = wilds_tasks.fmow(tmp_path / "fmow", ood_val_size=4)
    p = policy(tmp_path, dataset="fmow")
    for split in (task.id_val, task.ood_val):
        assert_identical(image_view(split, SIZE, None, p)[0], split)
    fabricate.make_imagenet(tmp_path / "inet", train_per_class=2, val_per_class=1, image_size=(500, 375))
    task = imagenet.imagenet(tmp_path / "inet", ood_val_size=4, id_val_fraction=0.5,
                             corruptions=fabricate.C_CORRUPTIONS, tests=("imagenet_r", "objectnet"))
    p = policy(tmp_path, dataset="imagenet")
    for split in (task.train, task.ood_val, task.tests["imagenet_r"], task.tests["objectnet"]):
        assert_identical(image_view(split, SIZE, None, p)[0], split)
    fabricate.make_cifar10(tmp_path / "cifar")
    task = cifar.cifar10(tmp_path / "cifar", ood_val_size=10, corruptions=fabricate.CIFAR10C)
    p = policy(tmp_path, dataset="cifar10")
    for split in (task.train, task.ood_val, task.tests["cifar10.1"]):
        assert_identical(image_view(split, SIZE, None, p)[0], split)
    pool = np.array([0, 5, 9])
    view, _ = image_view(task.train, SIZE, pool, p)
    assert "subset" not in view.cache.folder.name and list(view.rows) == [0, 5, 9]


def test_damaged_caches_are_named_then_rebuilt_or_refused(wildcam, tmp_path, caplog):
    _, task = wildcam
    split = task.id_val
    p = policy(tmp_path, dataset="iwildcam")
    folder = image_view(split, SIZE, None, p)[0].cache.folder
    data = folder / "images.npy"
    with open(data, "r+b") as f:  # truncated: a copy cut short
        f.truncate(os.path.getsize(data) - 1000)
    with pytest.raises(UserError, match=f"image cache {folder} cannot be used: .*truncated"):
        image_view(split, SIZE, None, policy(tmp_path, "read", "iwildcam"))
    with caplog.at_level(logging.WARNING, logger="autoft.data.image_cache"):
        view, source = image_view(split, SIZE, None, p)
    assert source == "cache" and str(folder) in caplog.text and "rebuilding" in caplog.text
    assert_identical(view, split)
    with open(data, "r+b") as f:  # one flipped byte inside an image: same size, refused when read
        f.seek(os.path.getsize(data) - 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    view, _ = image_view(split, SIZE, None, p)
    with pytest.raises(UserError, match=f"image cache {folder} is corrupt: row {len(split) - 1} "):
        view[len(split) - 1]
    (folder / "manifest.json").write_text("{")  # a broken manifest: rebuilt, never trusted
    assert image_view(split, SIZE, None, p)[1] == "cache" and json.loads((folder / "manifest.json").read_text())


def test_a_changed_source_image_rebuilds_its_cache(tmp_path):
    fabricate.make_iwildcam(tmp_path / "data", n_classes=2, image_size=(320, 240), per_class=1)
    task = wilds_tasks.iwildcam(tmp_path / "data", ood_val_size=2)
    p = policy(tmp_path, dataset="iwildcam")
    first = image_view(task.tests["id_test"], SIZE, None, p)[0]
    before = first[0][0].clone()
    path = task.tests["id_test"].dataset.path(0)
    fabricate._photo(np.random.default_rng(7), (320, 240)).save(path, format="JPEG")
    assert image_view(task.tests["id_test"], SIZE, None, policy(tmp_path, "off"))[0][0][0].ne(before).any()
    with pytest.raises(UserError, match="source image files changed"):
        image_view(task.tests["id_test"], SIZE, None, policy(tmp_path, "read", "iwildcam"))
    view, _ = image_view(task.tests["id_test"], SIZE, None, p)
    assert view.cache.folder == first.cache.folder and not torch.equal(view[0][0], before)
    assert_identical(view, task.tests["id_test"])


class Interrupting(torch.utils.data.Dataset):
    """The live view, stopped by a Ctrl-C after `stop` images; counts the images decoded."""

    def __init__(self, view, stop=None):
        self.view, self.stop, self.decoded = view, stop, []

    def __len__(self):
        return len(self.view)

    def __getitem__(self, i):
        if self.stop is not None and len(self.decoded) == self.stop:
            raise KeyboardInterrupt
        self.decoded.append(i)
        return self.view[i]


def test_an_interrupted_build_resumes_where_it_stopped(wildcam, tmp_path):
    _, task = wildcam
    split = task.train
    spec = spec_for(split.dataset, "iwildcam", split.name, SIZE)
    p = policy(tmp_path, dataset="iwildcam")
    with pytest.raises(KeyboardInterrupt):
        build(Interrupting(UInt8View(split, SIZE), stop=5), spec, p.directory, flush_rows=2)
    partial = tmp_path / "caches" / f"{spec.name}.partial"
    assert partial.is_dir() and not (partial / "manifest.json").exists()
    assert image_view(split, SIZE, None, policy(tmp_path, "read", "iwildcam"))[1] == "live"  # never mistaken for a cache
    rest = Interrupting(UInt8View(split, SIZE))
    cache = build(rest, spec, p.directory, flush_rows=2)
    assert rest.decoded == list(range(4, len(split)))  # rows 0-3 were flushed and checked, not decoded again
    assert not partial.exists()
    assert_identical(CachedImages(cache, np.arange(len(split)), split.labels), split)


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs a 2 MB tmpfs (mount as root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_an_error_and_leaves_no_cache(wildcam, tiny_disk, caplog):
    """9 images at 224 px need 1.4 MB: one fits on the 2 MB disk, a second does not."""
    _, task = wildcam
    p = CachePolicy("auto", str(tiny_disk), "iwildcam")
    assert image_view(task.train, SIZE, None, p)[1] == "cache"
    spec = spec_for(task.train.dataset, "iwildcam", "again", SIZE)  # the same images under another name
    with pytest.raises(UserError, match=rf"no room for the image cache of iwildcam again \(9 images at 224px\): it needs "
                                        rf"1\.4 MB, {tiny_disk} has 0\.\d MB free\. Free space, point trainer.image_cache_dir"):
        build(UInt8View(task.train, SIZE), spec, tiny_disk)
    assert not [f for f in tiny_disk.iterdir() if f.name.startswith("iwildcam-again") and not f.name.endswith(".lock")]
    with caplog.at_level(logging.WARNING):  # on first use in a run: one warning, then live images
        assert image_view(task.train, SIZE, None, CachePolicy("auto", str(tiny_disk / "x"), "iwildcam"))[1] == "live"
    assert "no room for the image cache of iwildcam train" in caplog.text


def test_a_bad_mode_is_named_with_the_valid_ones():
    with pytest.raises(UserError, match="trainer.image_cache='on': must be one of auto, read, off"):
        CachePolicy("on", "/tmp")


def test_prepare_data_builds_every_split_then_only_checks(wildcam, tmp_path, capsys):
    """scripts/prepare_data.py --cache: one cache per split of the task train.py would run, where
    trainer.image_cache_dir says; a second call only checks them; the pool is served by train's."""
    from conftest import load_script

    prepare = load_script("prepare_data")
    root, task = wildcam
    args = ["--dataset", "iwildcam", "--root", str(root), "--cache", f"trainer.image_cache_dir={tmp_path / 'c'}",
            "dataset.task.ood_val_size=3"]
    assert prepare.main(args) == 0
    out = capsys.readouterr().out
    splits = ["train", "id_val", "ood_val", "id_test", "ood_test"]
    assert all(f"built in" in line for line in out.splitlines()[1:6]) and "at 224px" in out  # ViT-B/16's input
    assert sorted(f.name.split("-224px")[0] for f in (tmp_path / "c").iterdir() if f.is_dir()) == \
        sorted(f"iwildcam-{s}" for s in splits)
    assert prepare.main(args[:4] + ["--splits", "pool,ood_val", *args[4:]]) == 0
    out = capsys.readouterr().out
    assert "read from the cache of train" in out and "up to date (checked)" in out and "built" not in out
    p = CachePolicy("read", str(tmp_path / "c"), "iwildcam")
    assert_identical(image_view(task.ood_val, SIZE, None, p)[0], task.ood_val)


def test_bench_loader_reports_both_pipelines_on_a_fabricated_tree(tmp_path):
    """The benchmark's keys and its identity check (its speeds are measured by running it, not here)."""
    from conftest import load_script

    bench = load_script("bench_loader")
    out = bench.main(["--images", "12", "--workers", "0", "--json", str(tmp_path / "loader.json")])
    assert json.loads((tmp_path / "loader.json").read_text()) == out
    assert out["identical"] is True and out["images"] == 12 and out["image_size"] == SIZE
    assert out["live_images_per_s_per_core"] > 0 and out["cached_images_per_s_per_core"] > 0
    assert out["cached_over_live"] == out["cached_images_per_s_per_core"] / out["live_images_per_s_per_core"]
    # a user's shift from the YAML in a config directory of theirs (docs/own_data.md), a PACS-like tree
    fabricate.make_domain_tree(tmp_path / "tree", size=300)
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "myshift.yaml").write_text(
        "defaults: [folder, _self_]\nname: myshift\n"
        f"task: {{root: {tmp_path / 'tree'}, id_domain: photo, ood_val_domain: cartoon, test_domains: [sketch]}}\n")
    mine = bench.main(["--config-dir", str(tmp_path / "conf"), "--dataset", "myshift", "--split", "sketch",
                       "--images", "6", "--workers", "0"])
    assert (mine["dataset"], mine["split"], mine["fabricated"], mine["images"]) == ("myshift", "sketch", False, 6)
    assert mine["identical"] is True and mine["image_size"] == SIZE  # the folder config's ViT-B/16
