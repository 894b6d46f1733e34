import json

import numpy as np
import pytest

from autoft.data.subsets import check_disjoint, class_balanced_indices, save_subset, stratified_holdout
from autoft.errors import UserError


def test_class_balanced_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(5), [50, 40, 30, 20, 10])
    idx = class_balanced_indices(labels, 25, seed=3)
    assert len(idx) == 25 and len(set(idx)) == 25 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=5).tolist() == [5, 5, 5, 5, 5]
    assert np.array_equal(idx, class_balanced_indices(labels, 25, seed=3))
    assert not np.array_equal(idx, class_balanced_indices(labels, 25, seed=4))


def test_class_balanced_water_fills_small_classes():
    labels = np.repeat(np.arange(4), [100, 100, 2, 1])
    idx = class_balanced_indices(labels, 23, seed=0)
    counts = np.bincount(labels[idx], minlength=4)
    # the two small classes give all they have; the other 20 split evenly
    assert counts.tolist() == [10, 10, 2, 1]
    odd = class_balanced_indices(labels, 24, seed=0)
    assert sorted(np.bincount(labels[odd], minlength=4)[:2].tolist()) == [10, 11]


def test_class_balanced_candidates_and_all():
    labels = np.arange(20) % 4
    cand = np.arange(10)
    idx = class_balanced_indices(labels, 4, seed=1, candidates=cand)
    assert set(idx) <= set(cand) and sorted(labels[idx].tolist()) == [0, 1, 2, 3]
    assert np.array_equal(class_balanced_indices(labels, None, 0), np.arange(20))
    assert np.array_equal(class_balanced_indices(labels, 100, 0, candidates=cand), cand)


def test_stratified_holdout():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    keep, held = stratified_holdout(labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [1, 2, 3]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 60
    k2, h2 = stratified_holdout(labels, 0.1, seed=0)
    assert np.array_equal(held, h2)
    with pytest.raises(UserError, match="id_val_fraction"):
        stratified_holdout(labels, 1.5, 0)


def test_save_subset_writes_reuses_and_refuses_changes(tmp_path):
    path = save_subset(tmp_path / "study", "ood_val_x", [3, 1, 4], ["a", "b", "c"], {"seed": 0})
    record = json.loads(path.read_text())
    assert record["indices"] == [3, 1, 4] and record["example_ids"] == ["a", "b", "c"] and record["info"]["seed"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["ood_val_x.json"]  # no temporary file left behind
    assert save_subset(tmp_path / "study", "ood_val_x", [3, 1, 4], ["a", "b", "c"]) == path  # resume: same subset
    with pytest.raises(UserError, match="different OOD-val subset"):
        save_subset(tmp_path / "study", "ood_val_x", [3, 1, 5], ["a", "b", "d"])


def test_check_disjoint():
    check_disjoint(["a", "b"], {"t1": np.array(["c"]), "t2": np.array(["d", "e"])})
    with pytest.raises(UserError, match=r"shares 1 example\(s\) with the test set 't2'"):
        check_disjoint(["a", "b"], {"t1": np.array(["c"]), "t2": np.array(["b", "e"])})
