import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fabricate
from autoft.data import cifar
from autoft.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "dataset"
C = fabricate.CIFAR10C


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, fabricate.make_cifar10(root)


def test_cifar10_task(cifar_root, tmp_path):
    root, m = cifar_root
    t = cifar.cifar10(root, ood_val_size=10, subset_seed=0, subset_dir=tmp_path, id_val_fraction=0.2, corruptions=C)
    assert t.classnames == fabricate.CIFAR_NAMES and t.templates == ["a photo of a {}."]
    assert len(t.train) + len(t.id_val) == m["train"]
    assert not set(t.train.dataset.example_ids()) & set(t.id_val.dataset.example_ids())
    assert {k: len(s) for k, s in t.tests.items()} == {"cifar10": m["test"] - 10, "cifar10.1": m["cifar10.1"],
                                                       "cifar10.2": m["cifar10.2"]}
    for split in [t.train, t.id_val, t.ood_val, *t.tests.values()]:
        assert split.labels.dtype == np.int64 and 0 <= split.labels.min() and split.labels.max() <= 9
        image, label = split.dataset[0]
        assert image.size == (32, 32) and image.mode == "RGB" and label == split.labels[0]
    # OOD-val: one image per class from CIFAR-10-C severity 5, each the corruption of a test image
    ood = t.ood_val
    assert sorted(ood.labels.tolist()) == list(range(10)) and set(ood.groups) <= {0, 1, 2}
    test_labels = np.array(m["test_labels"])
    x_test = cifar.load_cifar10(root)["test"][0]
    for i, ident in enumerate(ood.dataset.example_ids()):
        src = int(ident.split(":")[1])
        assert test_labels[src] == ood.labels[i]
        # severity 5 of the fabricated corruptions adds 50 to the source pixels (clipped)
        expected = np.clip(x_test[src].astype(int) + 50, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(ood.dataset[i][0]), expected)
    assert not set(ood.dataset.example_ids()) & set(t.tests["cifar10"].dataset.example_ids())
    record = json.loads((tmp_path / "ood_val_cifar10.json").read_text())
    assert sorted(record["example_ids"]) == sorted(ood.dataset.example_ids())


def test_cifar10c_rows_are_the_chosen_severity(cifar_root):
    root, m = cifar_root
    data = cifar.load_cifar10(root)
    arrays, labels, source, corr = cifar.cifar10c_pool(root, ["fog"], 5, data["test"][1])
    x_test = data["test"][0]
    assert np.array_equal(arrays["fog"][source[3]], np.clip(x_test[3].astype(int) + 50, 0, 255).astype(np.uint8))
    arrays, *_ = cifar.cifar10c_pool(root, ["fog"], 2, data["test"][1])
    assert np.array_equal(arrays["fog"][3], np.clip(x_test[3].astype(int) + 20, 0, 255).astype(np.uint8))
    with pytest.raises(UserError, match="severity must be in 1..5"):
        cifar.cifar10c_pool(root, ["fog"], 6, None)
    with pytest.raises(UserError, match="do not belong together"):
        cifar.cifar10c_pool(root, ["fog"], 5, np.roll(data["test"][1], 1))


def test_cifar102_swapped_files_are_refused(cifar_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(cifar_root[0], root)
    d = root / "CIFAR-10.2"
    os.replace(d / "cifar102_train.npz", d / "tmp.npz")
    os.replace(d / "cifar102_test.npz", d / "cifar102_train.npz")
    os.replace(d / "tmp.npz", d / "cifar102_test.npz")
    with pytest.raises(UserError, match="look swapped"):
        cifar.cifar10(root, corruptions=C)


def test_missing_root_and_corrupt_files(tmp_path, cifar_root):
    with pytest.raises(UserError) as err:
        cifar.cifar10(tmp_path / "none")
    assert str(tmp_path / "none" / "cifar-10-batches-py") in str(err.value)
    assert f"python scripts/prepare_data.py --dataset cifar10 --root {tmp_path / 'none'}" in str(err.value)
    root = tmp_path / "copy"
    shutil.copytree(cifar_root[0], root)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    fabricate.corrupt(bad)
    with pytest.raises(UserError, match=f"corrupt CIFAR-10 file: {bad}"):
        cifar.cifar10(root, corruptions=C)
    shutil.copy(cifar_root[0] / "cifar-10-batches-py" / "data_batch_3", bad)
    (root / "CIFAR-10-C" / "fog.npy").unlink()
    with pytest.raises(UserError, match=r"CIFAR-10-C 'fog' not found: looked for .*CIFAR-10-C/fog.npy"):
        cifar.cifar10(root, corruptions=C)


def test_check_report(cifar_root):
    root, m = cifar_root
    expected = {"train": m["train"], "test": m["test"], "cifar10.1": m["cifar10.1"], "cifar10.2": m["cifar10.2"],
                "cifar10c": 5 * m["test"]}
    report = cifar.check(root, expected=expected, corruptions=C)
    assert report.complete, report.render()
    real = cifar.check(root, corruptions=C)
    assert not real.complete and any("expected 50000" in p for p in real.problems)


def test_prepare_data_script(cifar_root, tmp_path):
    """The script checks, names what is missing and prints the command that fetches it."""
    root = tmp_path / "copy"
    shutil.copytree(cifar_root[0], root)
    shutil.rmtree(root / "CIFAR-10.1")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--dataset", "cifar10",
                          "--root", str(root)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "INCOMPLETE" in out.stdout and str(root / "CIFAR-10.1" / "cifar10.1_v6_data.npy") in out.stdout
    assert f"python scripts/prepare_data.py --dataset cifar10 --root {root} --download" in out.stdout


def test_dataset_config(cifar_root):
    cfg = OmegaConf.merge({"data_root": str(cifar_root[0])}, {"dataset": OmegaConf.load(CONF / "cifar10.yaml")})
    ds, exp = cfg.dataset, OmegaConf.load(CONF.parent / "budget" / "cifar10_vit_b16.yaml")  # the budgets' home
    t = exp.trainer
    assert (ds.metric, exp.search.n_trials, t.inner_steps, t.batch_size, t.epochs, t.base_lr, t.weight_decay,
            t.clip_grad_norm, ds.task.ood_val_size) == ("accuracy", 100, 10, 256, 20, 1e-5, 0.2, None, 100)
    t = instantiate(ds.task, _convert_="all", ood_val_size=10, corruptions=list(C))
    assert t.name == "cifar10" and len(t.ood_val) == 10 and sorted(t.tests) == ["cifar10", "cifar10.1", "cifar10.2"]


def test_the_reference_cifar102_file_is_an_optional_extra_test(cifar_root):
    """dataset.task.cifar102_train=true adds the reference's CIFAR-10.2 file (cifar102_train.npz) as the
    test `cifar10.2_train`, outside the OOD mean; off by default, the other tests unchanged."""
    root, m = cifar_root
    plain = cifar.cifar10(root, ood_val_size=10, corruptions=C)
    both = cifar.cifar10(root, ood_val_size=10, corruptions=C, cifar102_train=True)
    assert plain.extra_tests == () and "cifar10.2_train" not in plain.tests
    assert list(both.tests) == ["cifar10", "cifar10.1", "cifar10.2", "cifar10.2_train"]
    assert both.extra_tests == ("cifar10.2_train",)
    with np.load(root / "CIFAR-10.2" / "cifar102_train.npz") as z:
        images, labels = z["images"], z["labels"]
    extra = both.tests["cifar10.2_train"]
    assert len(extra) == m["cifar10.2_train"] == 30 and np.array_equal(extra.labels, labels)
    assert all(np.array_equal(np.asarray(extra.dataset[i][0]), images[i]) for i in (0, 17, 29))
    for name in plain.tests:  # the same images and labels as without the option
        assert list(plain.tests[name].dataset.example_ids()) == list(both.tests[name].dataset.example_ids())
    assert cifar.check(root, expected={"cifar10.2_train": 30}, corruptions=C).complete
    assert any("cifar10.2_train: 30 examples, expected 10000" in p for p in cifar.check(root, corruptions=C).problems)


def test_the_extra_column_follows_the_ood_mean_and_stays_out_of_it():
    from autoft.reporting.results import RunResult
    from autoft.reporting.tables import build_table, caption, to_markdown

    def run(seed, c101, c102, c102_train):
        metrics = {"id_val": {"accuracy": 0.9}, "ood_val": {"accuracy": 0.5}, "cifar10": {"accuracy": 0.95},
                   "cifar10.1": {"accuracy": c101}, "cifar10.2": {"accuracy": c102},
                   "cifar10.2_train": {"accuracy": c102_train}}
        return RunResult(Path(f"autoft/seed{seed}"), {
            "dataset": "cifar10", "model": "vit_b16", "method": "autoft", "seed": seed, "objective_metric": "accuracy",
            "higher_is_better": True, "metrics": metrics, "id_test_split": "cifar10",
            "extra_test_splits": ["cifar10.2_train"]})

    runs = [run(0, 0.80, 0.70, 0.60), run(1, 0.84, 0.74, 0.66)]
    assert runs[0].ood_splits == ["cifar10.1", "cifar10.2"] and runs[0].ood_mean() == pytest.approx(0.75)
    table = build_table(runs)
    assert table.columns == ["id", "cifar10.1", "cifar10.2", "ood_mean", "cifar10.2_train"]
    cells = table.rows[0].cells
    assert cells["ood_mean"].values == pytest.approx([0.75, 0.79]) and cells["cifar10.2_train"].values == [0.60, 0.66]
    assert table.header("cifar10.2_train") == "cifar10.2_train (not in mean)"
    assert "| cifar10.2 | OOD mean | cifar10.2_train (not in mean) |" in to_markdown(table)
    assert "63.0 ± 4.2" in to_markdown(table)
    assert "mean over the OOD test sets but cifar10.2_train (shown for comparison)" in caption(table)


def test_a_bad_cifar102_train_value_is_refused():
    from autoft.config_checks import validate
    from conftest import compose_config

    assert compose_config("dataset=cifar10").dataset.task.cifar102_train is False
    with pytest.raises(UserError, match=r"dataset.task.cifar102_train='?maybe'?: must be true or false"):
        validate(compose_config("dataset=cifar10", "dataset.task.cifar102_train=maybe"))
