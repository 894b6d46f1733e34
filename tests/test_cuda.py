"""The CUDA path (issue 13), as `pytest -m cuda` runs it on a GPU (`make gpu-check` runs these, then
the benchmarks, and writes the report): bf16 autocast in training and fp32 in evaluation, within
stated tolerances of an fp32 run; the fused AdamW kernel, channels-last weights and inputs, decoded
data kept on the GPU; the per-trial reset to theta0; memory released between trials; torch.compile
reused across trials; a search and a final run through train.py; data-parallel training over NCCL.

Every test here is marked `cuda`; without a GPU, tests/conftest.py skips them with the reason."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoft import engine
from autoft.cli import resolve_channels_last, resolve_precision
from autoft.engine import FinetuneSettings
from autoft.models.clip import load_clip
from autoft.pipeline import RunSpec, Workspace, run_final, search_trial
from conftest import TINY_CLIP, tiny_task_value
from sweep_helpers import TINY, train

pytestmark = pytest.mark.cuda

DEVICE = torch.device("cuda")
POOL = np.arange(32)
WEIGHTS = {"ce": 1.0, "hinge": 0.2, "l2init": 1.0, "l1zero": 1e-3}
HERE = Path(__file__).parent


def build(precision: str = "bf16", compile: bool = False) -> Workspace:
    torch.manual_seed(0)
    return Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), DEVICE, precision=precision,
                           channels_last=True, compile=compile)


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


def test_auto_settings_pick_bf16_and_channels_last_on_cuda():
    assert resolve_precision("auto", DEVICE) == "bf16"  # trainer.precision=auto, the default
    assert resolve_channels_last("auto", DEVICE) is True  # trainer.channels_last=auto


def test_trial_uses_fused_adamw_channels_last_and_device_data(monkeypatch):
    ws = build()
    built = []
    make = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda *a, **k: built.append(make(*a, **k)) or built[-1])
    search_trial(ws, WEIGHTS, settings(), "all", POOL, 8)
    (opt,) = built
    assert opt.defaults["fused"] is True and all(g["fused"] for g in opt.param_groups)
    assert all(s["exp_avg"].device.type == DEVICE.type and s["step"].device.type == DEVICE.type
               for s in opt.state.values())  # moments and step counters: no host sync per step
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


def test_bf16_run_stays_within_tolerance_of_the_fp32_run():
    """Same seed, same batches, 20 steps: the bf16-autocast run (fp32 master weights) and the fp32 run,
    both evaluated in fp32 on OOD-val. Tolerance: the bf16 run's logits deviate from the fp32 run's by
    at most 10% of how far training moved them, ||L_bf16 - L_fp32|| <= 0.1 ||L_fp32 - L_0||, and the
    two predict the same class for at least 90% of the images."""
    ws = build()
    zero_shot = ws.logits(ws.task.ood_val)
    logits = {}
    for precision in ("fp32", "bf16"):
        search_trial(ws, {"ce": 1.0}, settings(precision, steps=20), "all", np.arange(48), 8)
        logits[precision] = ws.logits(ws.task.ood_val)
    moved = (logits["fp32"] - zero_shot).norm().item()
    assert moved > 1e-2  # training moved the logits: the comparison is not vacuous
    assert (logits["bf16"] - logits["fp32"]).norm().item() <= 0.1 * moved
    agreement = (logits["bf16"].argmax(1) == logits["fp32"].argmax(1)).float().mean().item()
    assert agreement >= 0.9


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
    for seed in range(5):
        torch.cuda.reset_peak_memory_stats()
        search_trial(ws, WEIGHTS, settings(seed=seed, lr=(0.5, 1.0, 2.0, 1.0, 0.7)[seed] * 5e-3), "all", POOL, 8)
        torch.cuda.synchronize()
        after.append(torch.cuda.memory_allocated())
        peaks.append(torch.cuda.max_memory_allocated())
    assert max(after) - min(after) <= 2**20, after  # optimiser state and activations are freed
    assert max(peaks) - min(peaks) <= 2**20, peaks


def test_compiled_workspace_is_reused_across_trials():
    """torch.compile (inductor) compiles in the first trial only: a trial with other weights, lr and
    seed, and the first trial again, compile nothing new, and the repeat gives the first trial's loss."""
    from torch._dynamo.utils import counters

    def compiled_so_far() -> dict:
        return {"graphs": counters["stats"].get("unique_graphs", 0), "frames": counters["frames"].get("total", 0),
                "recompiles": sum(counters["recompiles"].values())}

    torch._dynamo.reset()
    eager = search_trial(build(), {"ce": 1.0, "l2init": 1.0, "flyp": 0.3}, settings(), "all", POOL, 8)
    ws = build(compile=True)
    runs = []
    for weights, s in (({"ce": 1.0, "l2init": 1.0, "flyp": 0.3}, settings()),
                       ({"ce": 1.0, "hinge": 0.5}, settings(seed=5, lr=1.5e-3)),
                       ({"ce": 1.0, "l2init": 1.0, "flyp": 0.3}, settings())):
        before = compiled_so_far()
        res = search_trial(ws, weights, s, "all", POOL, 8)
        runs.append((res, {k: v - before[k] for k, v in compiled_so_far().items()}))
    torch._dynamo.reset()
    assert runs[0][1]["graphs"] > 0  # the first trial did compile
    assert [new for _, new in runs[1:]] == [{"graphs": 0, "frames": 0, "recompiles": 0}] * 2
    assert runs[2][0]["final_loss"] == pytest.approx(runs[0][0]["final_loss"], rel=1e-4)
    assert runs[0][0]["final_loss"] == pytest.approx(eager["final_loss"], rel=2e-2)  # bf16 both


def test_search_then_final_run_through_train_py(tmp_path):
    """The user's two commands on the GPU (the search preset and its trial count, the config's own lr)."""
    on_gpu = [o for o in TINY if not o.startswith("device=")] + ["device=cuda"]
    train(tmp_path, "-m", "search=autoft", "search.n_trials=3", "hydra.sweeper.plots=false", "search.bootstrap=0",
          *on_gpu)
    sweep = tmp_path / "outputs/synthetic/tiny_vit/search-autoft"
    trials = sorted(sweep.glob("*/trial_*/trial.json"))
    assert len(trials) == 3
    for path in trials:
        used = json.loads(path.read_text())["resources"]
        assert used["device"].startswith("cuda") and used["cuda_peak_allocated_bytes"] > 0
    train(tmp_path, "method=autoft", "phase=final", f"hparams={sweep / 'best_hparams.yaml'}", *on_gpu)
    run = tmp_path / "outputs/synthetic/tiny_vit/autoft/seed0"
    results = json.loads((run / "results.json").read_text())
    assert results["hparams"]["source"] == str(sweep / "best_hparams.yaml")
    assert results["resources"]["device"].startswith("cuda") and (run / "model.pt").is_file()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 GPUs")
def test_two_gpus_over_nccl_end_with_identical_weights(tmp_path):
    """tests/dist_worker.py (the CPU test's worker) on two GPUs: gradient all-reduce and the flyp
    feature all-gather over NCCL; both ranks end with the same weights, and they trained."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "dist_worker.py"), str(tmp_path), "cuda"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", map_location="cpu") for i in (0, 1))
    theta0 = build().theta0
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert max((r0[k].float() - theta0[k].float().cpu()).abs().max().item() for k in r0) > 1e-4
    assert (tmp_path / "run" / "model.pt").is_file()
