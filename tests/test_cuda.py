"""The CUDA path on the tiny CLIP (issue 13): bf16 autocast in training and fp32 in evaluation, the
fused AdamW kernel, channels-last weights and inputs, decoded data kept on the GPU, the per-trial
reset to theta0, memory released between trials, and a final run with its WiSE-FT curve.

Skipped without a GPU. Run with `pytest -m cuda`; `scripts/gpu_check.py` (make gpu-check) runs them
as one of its sections, beside the larger checks (ViT-B/16, torch.compile, NCCL, benchmark)."""
import numpy as np
import pytest
import torch

from autoft import engine
from autoft.engine import FinetuneSettings
from autoft.models.clip import load_clip
from autoft.pipeline import RunSpec, Workspace, run_final, search_trial
from conftest import TINY_CLIP, tiny_task_value

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = torch.device("cuda")
POOL = np.arange(32)
WEIGHTS = {"ce": 1.0, "hinge": 0.2, "l2init": 1.0, "l1zero": 1e-3}


def build(precision: str = "bf16") -> Workspace:
    torch.manual_seed(0)
    return Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), DEVICE, precision=precision,
                           channels_last=True)


def settings(precision: str = "bf16", seed: int = 0, lr: float = 5e-3, steps: int = 3) -> FinetuneSettings:
    return FinetuneSettings(steps=steps, lr=lr, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0,
                            precision=precision, seed=seed)


@pytest.fixture
def deterministic():
    """Deterministic kernels (cuDNN and, where PyTorch has one, every other op) for bitwise checks."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def test_trial_uses_fused_adamw_channels_last_and_device_data(monkeypatch):
    ws = build()
    built = []
    make = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda *a, **k: built.append(make(*a, **k)) or built[-1])
    search_trial(ws, WEIGHTS, settings(), "all", POOL, 8)
    (opt,) = built
    assert opt.defaults["fused"] is True and all(g["fused"] for g in opt.param_groups)
    assert all(s["exp_avg"].device.type == DEVICE.type for s in opt.state.values())
    conv = ws.classifier.clip.visual.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # kept through the reset and the steps
    images, _ = ws.split_tensors(ws.task.train, POOL)
    assert images.device.type == DEVICE.type and images.dtype == torch.uint8  # decoded once, kept on the GPU
    x = ws.normalizer(images[:4])
    assert x.device.type == DEVICE.type and x.is_contiguous(memory_format=torch.channels_last)


def test_bf16_training_fp32_evaluation():
    ws = build()
    seen = []
    hook = ws.classifier.head.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    try:
        res16 = search_trial(ws, {"ce": 1.0}, settings("bf16"), "all", POOL, 8)
        logits = ws.logits(ws.task.ood_val)
    finally:
        hook.remove()
    assert {d for training, d in seen if training} == {torch.bfloat16}
    assert {d for training, d in seen if not training} == {torch.float32}
    assert logits.dtype == torch.float32
    res32 = search_trial(ws, {"ce": 1.0}, settings("fp32"), "all", POOL, 8)
    assert res16["final_loss"] == pytest.approx(res32["final_loss"], rel=5e-2)


def test_same_seed_after_reset_gives_the_same_trial(deterministic):
    ws = build()
    first = search_trial(ws, WEIGHTS, settings(seed=1), "all", POOL, 8)
    after_first = {k: v.clone() for k, v in ws.classifier.state_dict().items()}
    search_trial(ws, {"ce": 1.0}, settings(seed=2, lr=2e-2), "all", POOL, 8)
    again = search_trial(ws, WEIGHTS, settings(seed=1), "all", POOL, 8)
    assert again["final_loss"] == first["final_loss"] and again["objective"] == first["objective"]
    for k, v in ws.classifier.state_dict().items():
        torch.testing.assert_close(v, after_first[k], rtol=0, atol=1e-6, msg=k)
    moved = max((after_first[k].float() - ws.theta0[k].float()).abs().max().item() for k in after_first)
    assert moved > 1e-5


def test_memory_is_released_between_trials():
    ws = build()
    search_trial(ws, WEIGHTS, settings(), "all", POOL, 8)  # decodes the pool and OOD-val once
    torch.cuda.synchronize()
    after, peaks = [], []
    for seed in range(4):
        torch.cuda.reset_peak_memory_stats()
        search_trial(ws, WEIGHTS, settings(seed=seed), "all", POOL, 8)
        torch.cuda.synchronize()
        after.append(torch.cuda.memory_allocated())
        peaks.append(torch.cuda.max_memory_allocated())
    assert max(after) - min(after) <= 2**20, after  # optimiser state and activations are freed
    assert max(peaks) - min(peaks) <= 2**20, peaks


def test_final_run_on_cuda(tmp_path):
    ws = build()
    spec = RunSpec(weights={"ce": 1.0, "flyp": 0.5, "l2init": 1.0}, lr=3e-3, weight_decay=0.1, epochs=2,
                   batch_size=8, curve_alphas=(0.0, 0.5, 1.0))
    res = run_final(ws, spec, tmp_path, progress=False)
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "last.pt").exists()
    assert set(res["wise"]) == {"0.0", "0.5", "1.0"} and "id_test" in res["metrics"]
    assert all(p.device.type == DEVICE.type for p in ws.classifier.parameters())
    saved = torch.load(tmp_path / "model.pt", map_location="cpu")
    assert all(v.device.type == "cpu" for v in saved.values())
