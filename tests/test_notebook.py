"""notebooks/results.ipynb executes top to bottom on the embedded demo's results (a small search,
the final retrain of zero-shot, FT and AutoFT on two seeds) and shows the tables and plots."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_results_notebook

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = Path(__file__).resolve().parent / "conf"
SMALL = ["++dataset.task.n_train=64", "++dataset.task.n_val=40", "++dataset.task.n_test=40",
         "++dataset.task.ood_val_size=40", "++trainer.batch_size=16", "++trainer.inner_steps=4",
         "++trainer.epochs=2", "++trainer.base_lr=1e-3"]


def dataset_args():
    """The embedded shapes task (made small) once its config exists; until then the same world
    through the tests' own small config."""
    if (ROOT / "conf" / "dataset" / "shapes.yaml").is_file():
        return "shapes", SMALL
    return "tinyshapes", []


# slow (about 40 s): the tables and plots it draws are tested in test_reporting.py; CI runs it
@pytest.mark.slow
def test_results_notebook_runs_on_the_demo_results(tmp_path, monkeypatch):
    dataset, small = dataset_args()
    out = tmp_path / "outputs" / dataset / "tiny_vit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", AUTOFT_CACHE_DIR=str(tmp_path / "cache"))
    common = [f"experiment={dataset}_tiny_vit", "device=cpu", "trainer.num_workers=0", "logger=none", *small]
    steps = [
        [sys.executable, "train.py", "-m", "--config-dir", str(TEST_CONF), "search=autoft", *common,
         "search.n_trials=3", f"hydra.sweep.dir={out}/search-autoft"],
        [sys.executable, "scripts/final_retrain.py", "--config-dir", str(TEST_CONF), "--dataset", dataset,
         "--model", "tiny_vit", "--methods", "zeroshot,ft,autoft", "--seeds", "0,1", "--out", str(out),
         *common[1:]],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "ft" / "seed7").mkdir()  # a run that never finished: the notebook must name it

    text, markdown, images = run_results_notebook(out, monkeypatch, timeout=600)
    assert f"NOT INCLUDED: {out / 'ft' / 'seed7' / 'results.json'}: missing" in text
    for row in ("| Zero-shot |", "| FT |", "| WiSE-FT (α=0.5) |", "| AutoFT |"):
        assert row in markdown
    assert len(images) >= 4  # ID vs OOD, WiSE-FT curves, training curves, search history
    assert "local results only" in text
    assert (out / "results_table.md").is_file() and (out / "plots" / "id_vs_ood.png").is_file()
