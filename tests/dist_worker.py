"""Run by tests/test_distributed.py under torchrun: a final run on the tiny task, then each rank
saves its weights so the test can compare them."""
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
weights = {"ce": 1.0, "hinge": 0.2, "flyp": 0.5, "l2init": 1.0}
env = from_environment("cpu")
torch.manual_seed(0)
ws = Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), torch.device("cpu"))
spec = RunSpec(weights=weights, lr=3e-3, weight_decay=0.1, epochs=2, batch_size=8, curve_alphas=())
res = run_final(ws, spec, out / "run", progress=False, dist_env=env)
torch.save(ws.classifier.state_dict(), out / f"rank{env.rank}.pt")
dist.destroy_process_group()
