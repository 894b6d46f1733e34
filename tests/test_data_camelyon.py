"""dataset=camelyon17: Camelyon17-WILDS v1.0 through wilds' own Camelyon17Dataset, on a fabricated
camelyon17_v1.0 folder in the release's on-disk format (tests/fabricate.py, make_camelyon17)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import fabricate
from conftest import compose_config, load_script, run_train
from autoft import config_checks
from autoft.data import wilds_agreement, wilds_tasks
from autoft.data.base import Task
from autoft.data.images import example_ids
from autoft.errors import UserError
from autoft.evaluation import split_metrics
from autoft.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "id_val", "val", "test")
AGREE = "wilds' own Camelyon17Dataset reads the same 4 splits (sizes, labels, hospitals, sampled images)"


@pytest.fixture(scope="module")
def camelyon(tmp_path_factory):
    root = tmp_path_factory.mktemp("camelyon")
    return root, fabricate.make_camelyon17(root)


@pytest.fixture(scope="module")
def reference(camelyon):
    """A fresh Camelyon17Dataset on the fabricated folder and its official splits' dataset indices."""
    ds = wilds_agreement.open_reference("camelyon17", camelyon[0])
    return ds, {s: np.asarray(ds.get_subset(s).indices, dtype=np.int64) for s in SPLITS}


def hospitals_in_csv(manifest, indices) -> list[int]:
    """The `center` column of metadata.csv at these dataset indices (= metadata rows), read by us."""
    return [manifest["rows"][i]["center"] for i in indices]


# ------------------------------------------------------------------------------------------------
# the fabricated folder, read by the wilds class itself

def test_fabricated_camelyon17_is_what_wilds_reads(camelyon, reference):
    root, manifest = camelyon
    ds, official = reference
    d = root / "camelyon17_v1.0"
    assert (d / "metadata.csv").read_text().splitlines()[0] == ",patient,node,x_coord,y_coord,tumor,slide,center,split"
    assert type(ds).__name__ == "Camelyon17Dataset" and ds.n_classes == 2 and len(ds) == len(manifest["rows"]) == 82
    names = {v: k for k, v in ds.split_dict.items()}
    hospital = ds.metadata_fields.index("hospital")
    for i, row in enumerate(manifest["rows"]):  # dataset index = metadata row
        assert names[int(ds.split_array[i])] == row["split"]  # hospitals 1 and 2 override the split column
        assert int(ds.y_array[i]) == row["tumor"] and int(ds.metadata_array[i, hospital]) == row["center"]
    assert {s: len(official[s]) for s in SPLITS} == manifest["counts"] == \
        {"train": 32, "id_val": 22, "val": 16, "test": 12}
    for s in SPLITS:
        assert set(hospitals_in_csv(manifest, official[s])) == wilds_tasks.CAMELYON17_HOSPITALS[s]
    # the release's patches: 96x96 PNGs as openslide writes them (RGBA); wilds reads them as RGB
    row = manifest["rows"][0]
    folder = f"patient_{row['patient']}_node_{row['node']}"
    path = d / "patches" / folder / f"patch_{folder}_x_{row['x_coord']}_y_{row['y_coord']}.png"
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (96, 96))
    assert ds.get_input(0).mode == "RGB" and ds.get_input(0).size == (96, 96)


# ------------------------------------------------------------------------------------------------
# the task

def test_camelyon17_task_splits_are_the_official_ones(camelyon, reference, tmp_path):
    root, manifest = camelyon
    ds, official = reference
    task = wilds_tasks.camelyon17(root, ood_val_size=8, subset_seed=0, subset_dir=tmp_path)
    assert isinstance(task, Task) and task.name == "camelyon17" and task.metric == "accuracy"
    assert list(task.tests) == ["id_test", "hospital_2"]
    assert task.id_test == "id_test" and task.ood_tests == ["hospital_2"]
    y = ds.y_array.numpy()
    # train and the OOD test are the official splits, in wilds' order, with wilds' labels
    for ours, theirs in ((task.train, "train"), (task.tests["hospital_2"], "test")):
        assert np.array_equal(ours.evaluator.indices, official[theirs])
        assert np.array_equal(ours.labels, y[official[theirs]])
    # groups are hospitals, as the CSV says
    for s in (task.train, task.id_val, task.ood_val, *task.tests.values()):
        assert s.groups.tolist() == hospitals_in_csv(manifest, s.evaluator.indices)
        assert np.array_equal(s.labels, y[s.evaluator.indices])
    assert set(task.tests["hospital_2"].groups.tolist()) == {2}
    # id_val and id_test: disjoint, together the official id_val; id_test half of each class (rounded)
    id_val, id_test = task.id_val.evaluator.indices, task.tests["id_test"].evaluator.indices
    assert not set(id_val) & set(id_test)
    assert not set(example_ids(task.id_val.dataset)) & set(example_ids(task.tests["id_test"].dataset))
    assert np.array_equal(np.sort(np.concatenate([id_val, id_test])), official["id_val"])
    per_class = np.bincount(y[official["id_val"]], minlength=2)
    held = np.bincount(task.tests["id_test"].labels, minlength=2)
    assert held.tolist() == np.rint(per_class * 0.5).astype(int).tolist()
    # OOD-val: class balanced, from the official val split, all of hospital 1
    assert len(task.ood_val) == 8 and np.bincount(task.ood_val.labels).tolist() == [4, 4]
    assert set(task.ood_val.evaluator.indices) <= set(official["val"])
    assert set(hospitals_in_csv(manifest, task.ood_val.evaluator.indices)) == {1}
    # the images are the ones wilds reads
    for s in (task.train, task.ood_val, task.tests["hospital_2"]):
        image, label = s.dataset[1]
        assert image.mode == "RGB" and image.size == (96, 96) and label == s.labels[1]
        assert np.array_equal(np.asarray(image), np.asarray(ds.get_input(int(s.evaluator.indices[1]))))


def test_camelyon17_names_and_templates_are_clip_benchmarks():
    # LAION-AI/CLIP_benchmark, key "pcam" of en_classnames.json and en_zeroshot_classification_templates.json
    assert wilds_tasks.CAMELYON17_CLASSES == ["lymph node", "lymph node containing metastatic tumor tissue"]
    assert wilds_tasks.CAMELYON17_TEMPLATES == ["a histopathology slide showing {c}", "histopathology image of {c}"]


def test_camelyon17_prompts_and_template_override(camelyon):
    task = wilds_tasks.camelyon17(camelyon[0], ood_val_size=4)
    assert task.classnames == wilds_tasks.CAMELYON17_CLASSES and task.caption_classnames == task.classnames
    assert task.prompts("lymph node") == ["a histopathology slide showing lymph node",
                                          "histopathology image of lymph node"]
    assert wilds_tasks.camelyon17(camelyon[0], ood_val_size=4, templates="photo").templates == ["a photo of a {}."]
    with pytest.raises(UserError, match="each template needs"):
        wilds_tasks.camelyon17(camelyon[0], templates=["a slide"])


def test_camelyon17_draws_are_seeded_and_recorded(camelyon, tmp_path):
    root = camelyon[0]
    task = wilds_tasks.camelyon17(root, ood_val_size=8, subset_dir=tmp_path)
    ood = json.loads((tmp_path / "ood_val_camelyon17.json").read_text())
    assert ood["n"] == 8 and ood["info"]["seed"] == 0 and "hospital 1" in ood["info"]["pool"]
    assert ood["example_ids"] == example_ids(task.ood_val.dataset).tolist()
    ids = json.loads((tmp_path / "id_split_camelyon17.json").read_text())
    n_val, n_test = len(task.id_val), len(task.tests["id_test"])
    assert ids["info"]["n"] == {"id_val": n_val, "id_test": n_test} and ids["info"]["id_test_fraction"] == 0.5
    assert ids["indices"] == [*task.id_val.evaluator.indices.tolist(),
                              *task.tests["id_test"].evaluator.indices.tolist()]
    assert [i.split(":", 1)[0] for i in ids["example_ids"]] == ["id_val"] * n_val + ["id_test"] * n_test
    assert ids["example_ids"][0] == "id_val:" + example_ids(task.id_val.dataset)[0]
    # the same settings draw the same examples: a resumed study goes on
    again = wilds_tasks.camelyon17(root, ood_val_size=8, subset_dir=tmp_path)
    assert np.array_equal(again.tests["id_test"].evaluator.indices, task.tests["id_test"].evaluator.indices)
    # another seed draws another ID test, and a study recorded with the first refuses it
    other = wilds_tasks.camelyon17(root, ood_val_size=8, split_seed=1)
    assert not np.array_equal(other.tests["id_test"].evaluator.indices, task.tests["id_test"].evaluator.indices)
    with pytest.raises(UserError, match="records a different ID split"):
        wilds_tasks.camelyon17(root, ood_val_size=8, split_seed=1, subset_dir=tmp_path)


def test_camelyon17_accuracy_equals_the_wilds_evaluator(camelyon, reference):
    root, manifest = camelyon
    ds = reference[0]
    task = wilds_tasks.camelyon17(root, ood_val_size=8)
    rng = np.random.default_rng(0)
    for split in (task.train, task.id_val, task.ood_val, *task.tests.values()):
        logits = torch.as_tensor(rng.normal(size=(len(split), 2)), dtype=torch.float32)
        y_pred, y_true = logits.argmax(1), torch.as_tensor(split.labels)
        ours = split_metrics(logits, split)  # what a run records: our metrics, then the evaluator's
        official = split.evaluator(y_pred, y_true)
        direct, _ = ds.eval(y_pred, y_true, ds.metadata_array[torch.as_tensor(split.evaluator.indices)])
        assert METRICS["accuracy"](y_pred, y_true) == pytest.approx(official["acc_avg"], abs=1e-6)
        assert ours["accuracy"] == official["accuracy"] == pytest.approx(float(direct["acc_avg"]), abs=1e-9)
        # worst_group_accuracy is the worst hospital's (ours); the evaluator's acc_wg the worst slide's
        slides = torch.as_tensor([manifest["rows"][i]["slide"] for i in split.evaluator.indices])
        assert official["acc_wg"] == pytest.approx(METRICS["worst_group_accuracy"](y_pred, y_true, slides), abs=1e-6)
        hospitals = torch.as_tensor(split.groups)
        assert ours["worst_group_accuracy"] == pytest.approx(METRICS["worst_group_accuracy"](y_pred, y_true, hospitals))
        sub = np.array([0, 2, 3])  # a subset, addressed by positions in the split
        assert split.evaluator(y_pred[sub], y_true[sub], sub)["acc_avg"] == \
            pytest.approx(METRICS["accuracy"](y_pred[sub], y_true[sub]))


# ------------------------------------------------------------------------------------------------
# the check

def test_camelyon17_reader_agrees_with_wilds_and_the_check_passes(camelyon):
    root, manifest = camelyon
    splits = wilds_tasks.official_splits("camelyon17", root)
    assert list(splits) == list(SPLITS) and wilds_tasks.agreement("camelyon17", root, splits) == []
    report = wilds_tasks.check("camelyon17", root, expected=manifest["counts"], n_classes=2)
    assert report.complete, report.render()
    assert AGREE in report.ok
    assert "the official hospitals: train and id_val from 0, 3, 4; val 1; test 2" in report.ok
    release = wilds_tasks.check("camelyon17", root)  # against the release's counts
    assert not release.complete and any("expected 302436" in p for p in release.problems)
    assert any("--download" in m for m in release.manual)


def _copy(camelyon, tmp_path) -> Path:
    shutil.copytree(camelyon[0] / "camelyon17_v1.0", tmp_path / "camelyon17_v1.0")
    return tmp_path


def test_camelyon17_check_names_a_split_out_of_its_hospital(camelyon, tmp_path):
    root = _copy(camelyon, tmp_path)
    csv = root / "camelyon17_v1.0" / "metadata.csv"
    df = pd.read_csv(csv, index_col=0, dtype={"patient": "str"})
    first = df.index[df["center"] == 0][0]
    last = df.index[df["center"] == 3][0]
    df.loc[first, "split"] = 2  # a hospital-0 row the wilds class then puts in the OOD test
    df.loc[last, "split"] = 7  # a row in no split
    df.to_csv(csv)
    report = wilds_tasks.check("camelyon17", root, expected=camelyon[1]["counts"], n_classes=2)
    assert not report.complete
    assert any(p.startswith("split 'test' holds hospital(s) 0;") for p in report.problems), report.render()
    assert "1 metadata row(s) in no split: their `split` column is neither 0 (train) nor 1 (id_val)" in report.problems


def test_camelyon17_missing_and_corrupt_files_are_named(camelyon, tmp_path):
    root = _copy(camelyon, tmp_path)
    task = wilds_tasks.camelyon17(root, ood_val_size=None)
    bad, gone = task.train.dataset.path(3), task.tests["hospital_2"].dataset.path(0)
    fabricate.corrupt(bad)
    Path(gone).unlink()
    with pytest.raises(UserError, match="corrupt image file: " + bad):
        task.train.dataset[3]
    report = wilds_tasks.check("camelyon17", root, expected=camelyon[1]["counts"], n_classes=2, verify_images=True)
    assert any("1 corrupt" in p and bad in p for p in report.problems), report.render()
    assert any("1 missing" in p and gone in p for p in report.problems), report.render()


def test_prepare_data_checks_camelyon17(camelyon, tmp_path, capsys):
    script = load_script("prepare_data")
    root, manifest = camelyon
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"counts": manifest["counts"], "classes": 2}))
    code = script.main(["--dataset", "camelyon17", "--root", str(root), "--check", "--expect", str(expect)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"ok       {AGREE}" in out


# ------------------------------------------------------------------------------------------------
# bad input: one message each, nothing done

def test_camelyon17_malformed_metadata_names_the_file(camelyon, tmp_path):
    root = _copy(camelyon, tmp_path)
    csv = root / "camelyon17_v1.0" / "metadata.csv"
    pd.read_csv(csv, index_col=0, dtype={"patient": "str"}).drop(columns=["center"]).to_csv(csv)
    with pytest.raises(UserError, match=r"Camelyon17 metadata is malformed: .*metadata.csv \(KeyError.*"
                                        r"--dataset camelyon17"):
        wilds_tasks.camelyon17(root)


def test_camelyon17_id_test_fraction_out_of_range(camelyon):
    for bad in (0, 1.0, 1.5, True):
        with pytest.raises(UserError, match=r"dataset.task.id_test_fraction=.*must be in \(0, 1\)"):
            wilds_tasks.camelyon17(camelyon[0], id_test_fraction=bad)
    with pytest.raises(UserError, match="dataset.task.id_test_fraction"):  # the config's check, before any data
        config_checks.validate(compose_config("dataset=camelyon17", "dataset.task.id_test_fraction=1.5", "device=cpu",
                                       "logger=local"))


# ------------------------------------------------------------------------------------------------
# the config and a run

def test_camelyon17_config(camelyon):
    cfg = compose_config("dataset=camelyon17", f"data_root={camelyon[0]}", "device=cpu", "logger=local")
    config_checks.validate(cfg)
    assert (cfg.dataset.name, cfg.model.name, cfg.dataset.metric) == ("camelyon17", "vit_b16", "accuracy")
    assert cfg.budget.name == "user_data" and cfg.budget.calibrated is False  # no calibrated budget yet
    task = cfg.dataset.task
    assert task._target_ == "autoft.data.wilds_tasks.camelyon17"
    assert (task.ood_val_size, task.id_test_fraction, task.split_seed, task.subset_seed) == (1000, 0.5, 0, 0)
    built = instantiate(task, _convert_="all", ood_val_size=6)
    assert list(built.tests) == ["id_test", "hospital_2"] and len(built.ood_val) == 6
    tiny = compose_config("dataset=camelyon17", "model=tiny_vit", "device=cpu", "logger=local")
    assert tiny.model.name == "tiny_vit" and tiny.budget.name == "user_data"


def test_camelyon17_zero_shot_run_writes_every_split(camelyon, tmp_path):
    root = camelyon[0]
    run = tmp_path / "run"
    done = run_train(["dataset=camelyon17", f"data_root={root}", "method=zeroshot", "model=tiny_vit", "logger=local",
                      "device=cpu", "trainer.num_workers=0", "trainer.batch_size=4", "trainer.eval_batch_size=16",
                      "trainer.epochs=1", "dataset.task.ood_val_size=8", f"cache_dir={tmp_path / 'cache'}",
                      f"hydra.run.dir={run}"], tmp_path, OMP_NUM_THREADS="1")  # in this process
    assert done.returncode == 0, done.stdout[-3000:]
    record = json.loads((run / "results.json").read_text())
    assert (record["dataset"], record["model"], record["method"]) == ("camelyon17", "tiny_vit", "zeroshot")
    assert (record["objective_metric"], record["id_test_split"]) == ("accuracy", "id_test")
    assert set(record["metrics"]) == {"id_val", "ood_val", "id_test", "hospital_2"}
    for split, m in record["metrics"].items():
        assert m["accuracy"] == pytest.approx(m["acc_avg"]) and 0 <= m["accuracy"] <= 1, split
    # both draws recorded beside the run
    assert json.loads((run / "ood_val_camelyon17.json").read_text())["n"] == 8
    assert json.loads((run / "id_split_camelyon17.json").read_text())["info"]["n"] == {"id_val": 10, "id_test": 12}
