"""Every loss term against a value worked out by hand on a tiny batch."""
import math

import pytest
import torch

from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.losses import AutoFTObjective, cross_entropy, dcm, entropy, flyp, hinge

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LABELS = torch.tensor([0, 2])


def softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def entropy_row(row):
    return -sum(p * math.log(p) for p in softmax_row(row))


def test_cross_entropy_by_hand():
    ce0 = math.log(math.exp(2) + 1 + math.exp(-1)) - 2.0
    ce1 = math.log(math.exp(0.5) + math.exp(1.5) + 1) - 0.0
    assert cross_entropy(LOGITS, LABELS).item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    assert (ce0 + ce1) / 2 == pytest.approx(1.067108, abs=1e-6)


def test_hinge_by_hand():
    # row 0 (y=0): relu(0-2+1)=0, relu(-1-2+1)=0; row 1 (y=2, logit 0): relu(0.5+1)=1.5, relu(1.5+1)=2.5
    assert hinge(LOGITS, LABELS).item() == pytest.approx((0.0 + 4.0) / 2)


def test_entropy_by_hand():
    expected = (entropy_row([2, 0, -1]) + entropy_row([0.5, 1.5, 0])) / 2
    assert entropy(LOGITS, LABELS).item() == pytest.approx(expected, abs=1e-6)


def test_dcm_counts_only_misclassified_but_averages_over_batch():
    # row 0 is right (argmax 0 = y), row 1 is wrong (argmax 1 != 2): mean over the batch of 2
    assert dcm(LOGITS, LABELS).item() == pytest.approx(entropy_row([0.5, 1.5, 0]) / 2, abs=1e-6)


def test_dcm_mask_has_no_gradient_but_entropy_does():
    logits = LOGITS.clone().requires_grad_(True)
    dcm(logits, LABELS).backward()
    assert torch.all(logits.grad[0] == 0)  # correct example: masked out
    assert logits.grad[1].abs().sum() > 0


def test_flyp_by_hand():
    feats = torch.eye(2)
    scale = torch.tensor(math.log(2.0))  # logits = 2 * identity
    expected = math.log(1 + math.exp(-2))  # each row: -log(e^2 / (e^2 + e^0)), same both ways
    assert flyp(feats, feats, scale).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.126928, abs=1e-6)


def make_params():
    p = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0], requires_grad=True)]
    theta0 = [torch.tensor([0.0, 2.0]), torch.tensor([1.0])]
    return p, theta0


@pytest.mark.parametrize("name,expected", [("l1init", 3 / 3), ("l2init", 5 / 3), ("l1zero", 6 / 3), ("l2zero", 14 / 3)])
def test_parameter_terms_are_per_element_means(name, expected):
    p, theta0 = make_params()
    obj = AutoFTObjective({"ce": 0.0, name: 1.0}, p, theta0)
    assert obj.param_terms()[name].item() == pytest.approx(expected)


def test_parameter_term_gradients():
    p, theta0 = make_params()
    obj = AutoFTObjective({"l2init": 1.0}, p, theta0)
    obj.combine(obj.param_terms()).backward()
    # d/dtheta sum (theta - theta0)^2 / N = 2 (theta - theta0) / N
    assert p[0].grad.tolist() == pytest.approx([2 / 3, 0.0])
    assert p[1].grad.tolist() == pytest.approx([4 / 3])


def test_weighted_sum_and_only_active_terms():
    p, theta0 = make_params()
    obj = AutoFTObjective({"ce": 1.0, "hinge": 0.5, "l1zero": 2.0}, p, theta0)
    data = obj.data_terms(LOGITS, LABELS)
    assert set(data) == {"ce", "hinge"}  # zero weights are never computed
    assert set(obj.param_terms()) == {"l1zero"}
    total = obj.combine({**data, **obj.param_terms()}).item()
    assert total == pytest.approx(1.067108 + 0.5 * 2.0 + 2.0 * 2.0, abs=1e-5)
    assert not obj.uses_text  # the text tower runs only for flyp


def test_theta0_must_not_alias_live_parameters():
    p, _ = make_params()
    with pytest.raises(ValueError, match="separate copy"):
        AutoFTObjective({"l1init": 1.0}, p, p)


@pytest.mark.parametrize("weights,key", [({"ce": 1.0, "hinge": -1.0}, "hinge"), ({"focal": 1.0}, "focal"),
                                         ({"flyp": float("nan")}, "flyp")])
def test_bad_weights_name_the_key(weights, key):
    # the one check of the weights: the hyperparameters type's (the objective receives them checked)
    with pytest.raises(UserError, match=key):
        Hyperparameters(loss_weights=weights).validate("method.loss_weights")


def test_an_unknown_term_is_refused_not_dropped():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="l2int"):
        AutoFTObjective({"ce": 1.0, "l2int": 0.5}, p, None)
