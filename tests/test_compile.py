"""torch.compile survives the per-trial reset: a compiled workspace gives the same trials, in any order."""
import numpy as np
import pytest
import torch

from autoft.engine import FinetuneSettings
from autoft.models.clip import load_clip
from autoft.pipeline import Workspace, search_trial
from conftest import TINY_CLIP, tiny_task_value


@pytest.mark.slow
def test_compiled_trials_match_eager_and_reset_cleanly():
    pool = np.arange(32)
    a = FinetuneSettings(steps=3, lr=5e-3, weight_decay=0.1, warmup_steps=1, seed=1)
    b = FinetuneSettings(steps=2, lr=2e-2, weight_decay=0.0, seed=2)
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        ws = Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), torch.device("cpu"), compile=compiled)
        first = search_trial(ws, {"ce": 1.0, "l2init": 1.0}, a, "all", pool, 8)
        search_trial(ws, {"ce": 1.0}, b, "all", pool, 8)
        again = search_trial(ws, {"ce": 1.0, "l2init": 1.0}, a, "all", pool, 8)
        assert again["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)
        results[compiled] = first
    assert results[True]["final_loss"] == pytest.approx(results[False]["final_loss"], rel=1e-3)
