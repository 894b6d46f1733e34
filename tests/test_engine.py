"""The zero-shot classifier, the fine-tuning loop and WiSE-FT on a tiny open_clip model (CPU)."""
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from autoft.data.loading import TensorBatches, UInt8View, read_all
from autoft.engine import Finetuner, FinetuneSettings, optimizer_factory, warmup_cosine
from autoft.errors import TrialDiverged
from autoft.models.classifier import CLIPClassifier, freeze_batchnorm_stats, zeroshot_weights
from autoft.pipeline import RunSpec, Workspace, run_final, search_trial
from autoft.wise import interpolate
from autoft.models.clip import load_clip
from conftest import TINY_CLIP


def test_zeroshot_head_equals_open_clip(tiny_bundle, tiny_task):
    ours = zeroshot_weights(tiny_bundle.model, tiny_bundle.tokenizer, [tiny_task.prompts(c) for c in tiny_task.classnames])
    theirs = open_clip.build_zero_shot_classifier(tiny_bundle.model, tiny_bundle.tokenizer, tiny_task.classnames,
                                                  tiny_task.templates, num_classes_per_batch=2, device="cpu")
    torch.testing.assert_close(ours, theirs.T, atol=1e-5, rtol=1e-5)


def test_classifier_starts_as_zero_shot_clip(tiny_bundle, tiny_task):
    clip = tiny_bundle.model
    head = zeroshot_weights(clip, tiny_bundle.tokenizer, [tiny_task.prompts(c) for c in tiny_task.classnames])
    model = CLIPClassifier(clip, head).eval()
    images = torch.randn(4, 3, 16, 16)
    logits, feats = model(images)
    expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(images), dim=-1) @ head.T
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))


def test_warmup_then_cosine_peaks_at_the_runs_own_lr():
    total, warmup = 10, 3
    factors = [warmup_cosine(s, warmup, total) for s in range(total)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert max(factors) == 1.0
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))  # decays after the peak


def make_tuner(bundle, task, weights, lr=1e-3, steps=6, warmup=2, accum=1, max_loss=1e4, trainable="all", **extra):
    ws = Workspace.build(task, bundle, torch.device("cpu"))
    params, objective = ws.objective(weights, trainable)
    settings = FinetuneSettings(steps=steps, lr=lr, weight_decay=0.1, warmup_steps=warmup, clip_grad_norm=1.0,
                                accum_steps=accum, max_loss=max_loss, **extra)
    tuner = Finetuner(ws.classifier, params, objective, ws.normalizer, settings, ws.device, ws.caption_tokens)
    images, labels = read_all(UInt8View(task.train, bundle.image_size))
    return ws, tuner, iter(TensorBatches(images, labels, 8, seed=0))


def test_optimizer_follows_the_given_lr(tiny_bundle, tiny_task):
    ws, tuner, batches = make_tuner(tiny_bundle, tiny_task, {"ce": 1.0}, lr=3e-3, steps=6, warmup=2)
    hist = tuner.run(batches, 6)
    lrs = [h["lr"] for h in hist]
    assert lrs[:2] == pytest.approx([1.5e-3, 3e-3])
    assert max(lrs) == pytest.approx(3e-3)


def test_the_configured_optimiser_runs_the_schedule(tiny_bundle, tiny_task):
    """trainer.optimizer's partial is the run's optimiser, with the schedule's lr and weight decay;
    without one the run uses fused AdamW."""
    sgd = optimizer_factory({"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.5})
    ws, tuner, batches = make_tuner(tiny_bundle, tiny_task, {"ce": 1.0}, lr=3e-3, steps=4, warmup=2, optimizer=sgd)
    before = {n: p.detach().clone() for n, p in ws.classifier.named_parameters() if p.requires_grad}
    hist = tuner.run(batches, 4)
    opt = tuner.optimizer
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.5 and opt.defaults["weight_decay"] == 0.1
    assert [h["lr"] for h in hist][:2] == pytest.approx([1.5e-3, 3e-3])
    assert any(not torch.equal(p, before[n]) for n, p in ws.classifier.named_parameters() if n in before)
    _, default, _ = make_tuner(tiny_bundle, tiny_task, {"ce": 1.0})
    assert type(default.optimizer) is torch.optim.AdamW and default.optimizer.defaults["fused"] is True


def test_theta0_stays_put_while_parameters_move(tiny_bundle, tiny_task):
    weights = {k: 0.1 for k in ("hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")}
    ws, tuner, batches = make_tuner(tiny_bundle, tiny_task, {"ce": 1.0, **weights}, lr=1e-2)
    before = {k: v.clone() for k, v in ws.theta0.items()}
    hist = tuner.run(batches, 3)
    assert set(hist[-1]) >= {"ce", "flyp", "l1init", "l2init"}
    assert hist[0]["l1init"] == 0.0 and hist[-1]["l1init"] > 0  # the model moved away from theta0...
    for k, v in ws.theta0.items():
        assert torch.equal(v, before[k]), k  # ...and theta0 did not move with it
    moved = max((p - ws.theta0[n]).abs().max().item() for n, p in ws.classifier.named_parameters())
    assert moved > 0


def test_gradient_accumulation_matches_one_big_batch(tiny_bundle, tiny_task):
    results = []
    for accum in (1, 4):
        torch.manual_seed(0)
        bundle = load_clip(custom=TINY_CLIP)  # the same initial weights for both runs
        ws, tuner, batches = make_tuner(bundle, tiny_task, {"ce": 1.0, "hinge": 0.3, "l2init": 1.0}, accum=accum)
        tuner.run(batches, 1)
        results.append({n: p.grad.clone() for n, p in ws.classifier.named_parameters() if p.grad is not None})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:  # gradients, not Adam-updated weights (Adam magnifies rounding in tiny gradients)
        torch.testing.assert_close(results[0][k], results[1][k], atol=1e-6, rtol=1e-4)


def test_divergence_is_reported_not_trained_through(tiny_bundle, tiny_task):
    ws, tuner, batches = make_tuner(tiny_bundle, tiny_task, {"ce": 1.0}, max_loss=1e-3)
    with pytest.raises(TrialDiverged, match="max_loss"):
        tuner.run(batches, 2)


def test_batchnorm_statistics_stay_frozen():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net.train()
    freeze_batchnorm_stats(net)
    mean = net[1].running_mean.clone()
    net(torch.randn(8, 3, 8, 8) * 5 + 3).sum().backward()
    assert torch.equal(net[1].running_mean, mean)
    assert net[1].weight.grad is not None  # affine parameters still learn


def test_wise_endpoints_reproduce_both_models():
    zs = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    ft = {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(7)}
    assert torch.equal(interpolate(zs, ft, 0.0)["w"], zs["w"])
    assert torch.equal(interpolate(zs, ft, 1.0)["w"], ft["w"])
    assert interpolate(zs, ft, 0.5)["w"].tolist() == [0.5, 3.0]
    assert interpolate(zs, ft, 0.5)["n"].item() == 7  # integer buffers come from the fine-tuned model


def test_final_run_selects_on_id_val_and_wise_endpoints_match(tiny_bundle, tiny_task, tmp_path):
    ws = Workspace.build(tiny_task, tiny_bundle, torch.device("cpu"))
    untrained = RunSpec(weights={"ce": 1.0}, lr=1e-3, weight_decay=0.1, epochs=1, batch_size=8, train=False,
                        curve_alphas=())
    zero_shot = {k: v["accuracy"] for k, v in run_final(ws, untrained, tmp_path)["metrics"].items()}
    spec = RunSpec(weights={"ce": 1.0}, lr=3e-3, weight_decay=0.1, epochs=3, batch_size=8, curve_alphas=(0.0, 1.0))
    res = run_final(ws, spec, tmp_path)
    best = max(e["id_val"]["accuracy"] for e in res["epochs"])
    assert res["epochs"][res["selected_epoch"] - 1]["id_val"]["accuracy"] == best
    assert res["metrics"]["id_val"]["accuracy"] == pytest.approx(best)
    assert (tmp_path / "model.pt").is_file()
    for split, acc in zero_shot.items():
        assert res["wise"]["0.0"][split]["accuracy"] == pytest.approx(acc)  # a = 0 is the zero-shot model
    assert res["wise"]["1.0"] == res["metrics"]  # a = 1 is the fine-tuned model


def test_search_trial_resets_to_theta0_every_time(tiny_bundle, tiny_task):
    ws = Workspace.build(tiny_task, tiny_bundle, torch.device("cpu"))
    pool = np.arange(32)
    s = FinetuneSettings(steps=4, lr=5e-3, weight_decay=0.1, warmup_steps=1, seed=3)
    alone = search_trial(ws, {"ce": 1.0, "flyp": 0.5}, s, "all", pool, 8)
    search_trial(ws, {"ce": 1.0}, FinetuneSettings(steps=3, lr=2e-2, weight_decay=0.0), "all", pool, 8)
    again = search_trial(ws, {"ce": 1.0, "flyp": 0.5}, s, "all", pool, 8)
    assert again["final_loss"] == pytest.approx(alone["final_loss"], rel=1e-5)
    assert again["objective"] == alone["objective"]
    assert alone["peak_lr"] == pytest.approx(5e-3)
