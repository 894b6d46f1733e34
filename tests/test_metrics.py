"""Metrics on hand-worked cases, and the bootstrap interval's behaviour."""
import pytest
import torch

from autoft.metrics import accuracy, bootstrap_interval, macro_f1, worst_group_accuracy


def test_accuracy_by_hand():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 0.75


def test_macro_f1_by_hand():
    y_true = torch.tensor([0, 0, 1, 1, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 0 -> 0
    assert macro_f1(y_pred, y_true) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a class predicted but absent from y_true does not count (WILDS / sklearn labels=unique(y_true))
    assert macro_f1(torch.tensor([3, 0]), torch.tensor([0, 0])) == pytest.approx(2 / 3)


def test_worst_group_accuracy_by_hand():
    y_true = torch.tensor([0, 0, 1, 1, 1, 0])
    y_pred = torch.tensor([0, 1, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 1, 1, 1, 3])  # group 2 is empty and ignored
    assert worst_group_accuracy(y_pred, y_true, groups) == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_contains_the_estimate_and_narrows_with_more_data(metric):
    def interval(n):
        g = torch.Generator().manual_seed(1)
        y = torch.randint(0, 4, (n,), generator=g)
        pred = torch.where(torch.rand(n, generator=g) < 0.7, y, (y + 1) % 4)
        lo, hi = bootstrap_interval(metric, [pred], y, n_boot=400)
        point = accuracy(pred, y) if metric == "accuracy" else macro_f1(pred, y)
        return lo, point, hi

    small, large = interval(100), interval(1600)
    for lo, point, hi in (small, large):
        assert lo <= point <= hi
    assert (large[2] - large[0]) < 0.5 * (small[2] - small[0])  # width shrinks like 1/sqrt(n): 4x data, ~half


def test_bootstrap_of_identical_seeds_equals_single_seed():
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    p = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1])
    assert bootstrap_interval("accuracy", [p, p], y, n_boot=200) == bootstrap_interval("accuracy", [p], y, n_boot=200)
