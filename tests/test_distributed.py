"""Data-parallel final training (torchrun, 2 CPU processes over gloo) and resumable final runs."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoft.models.clip import load_clip
from autoft.pipeline import RunSpec, Workspace, run_final
from conftest import TINY_CLIP, tiny_task_value

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "dist_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    start = Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), torch.device("cpu")).theta0
    moved = 0.0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # gradients were averaged: the ranks never drift apart
        moved = max(moved, (r0[k].float() - start[k].float()).abs().max().item())
    assert moved > 1e-4  # and they did train
    assert (tmp_path / "run" / "model.pt").is_file()  # written once, by rank 0


def build_ws():
    torch.manual_seed(0)
    return Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), torch.device("cpu"))


class Killed(Exception):
    pass


def test_final_run_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path):
    weights = {"ce": 1.0, "flyp": 0.3, "l1init": 1.0}
    spec = RunSpec(weights=weights, lr=3e-3, weight_decay=0.1, epochs=3, batch_size=8, seed=4, curve_alphas=())
    ws = build_ws()
    whole = run_final(ws, spec, tmp_path / "whole", progress=False)
    reference = {k: v.clone() for k, v in ws.classifier.state_dict().items()}

    def kill_after_first(epoch, results):  # the hook runs before its epoch's checkpoint: last.pt holds epoch 1
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run_final(build_ws(), spec, tmp_path / "resumed", progress=False, on_epoch_end=kill_after_first)
    assert (tmp_path / "resumed" / "last.pt").is_file() and not (tmp_path / "resumed" / "model.pt").exists()
    ws2 = build_ws()  # a new process would start from scratch like this
    resumed = run_final(ws2, spec, tmp_path / "resumed", progress=False)
    for k, v in reference.items():
        torch.testing.assert_close(ws2.classifier.state_dict()[k], v, rtol=0, atol=0)
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]
    assert resumed["selected_epoch"] == whole["selected_epoch"]
    assert not (tmp_path / "resumed" / "last.pt").exists()  # a finished run leaves model.pt only
