"""Run by tests/test_distributed.py (CPU, gloo) and tests/test_cuda.py (one GPU per rank, NCCL) under
torchrun: a final run on the tiny task, then each rank saves its weights so the test can compare them.

    dist_worker.py OUT [cpu|cuda]"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_CLIP, tiny_task_value  # noqa: E402

from autoft.distributed import from_environment  # noqa: E402
from autoft.models.clip import load_clip  # noqa: E402
from autoft.pipeline import RunSpec, Workspace, run_final  # noqa: E402

out = Path(sys.argv[1])
device_type = sys.argv[2] if len(sys.argv) > 2 else "cpu"
weights = {"ce": 1.0, "hinge": 0.2, "flyp": 0.5, "l2init": 1.0}
device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if device_type == "cuda" else "cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)  # before NCCL joins: one GPU per rank
env = from_environment(device_type)
torch.manual_seed(0)
ws = Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), device)
spec = RunSpec(weights=weights, lr=3e-3, weight_decay=0.1, epochs=2, batch_size=8, curve_alphas=())
res = run_final(ws, spec, out / "run", progress=False, dist_env=env)
torch.save({k: v.cpu() for k, v in ws.classifier.state_dict().items()}, out / f"rank{env.rank}.pt")
dist.destroy_process_group()
