"""End to end through the real entry point: `train.py -m search=autoft`, then the final retrain
reading the search's best_hparams.yaml. Tiny budget on the synthetic task and the tiny CLIP."""
import json

import optuna
import pytest
import yaml

from conftest import run_train
from sweep_helpers import TINY


def train(cwd, *args):
    """train.py in this process: the test is about what the runs write."""
    done = run_train(args, cwd)
    assert done.returncode == 0, done.stdout[-6000:]
    return done


def test_train_py_search_then_final_retrain(tmp_path):
    train(tmp_path, "-m", "search=autoft", "search.n_trials=3", "hydra.sweeper.plots=false", "search.bootstrap=0",
          *TINY)
    sweep = tmp_path / "outputs/synthetic/tiny_vit/search-autoft"
    url = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:
        trial = json.loads((sweep / name / f"trial_{t.number}" / "trial.json").read_text())
        assert trial["objective"] == pytest.approx(t.value)  # the objective train.py computed is what was told
        assert trial["hparams"]["lr_scale"] == pytest.approx(t.params["trainer.lr_scale"])
        assert trial["hparams"]["loss_weights"]["flyp"] == pytest.approx(t.params["method.loss_weights.flyp"])
    best = yaml.safe_load((sweep / "best_hparams.yaml").read_text())
    assert best["trial_number"] == study.best_trial.number and best["study_name"] == name

    # the final phase reads the file as written
    train(tmp_path, "method=autoft", "phase=final", f"hparams={sweep / 'best_hparams.yaml'}", *TINY)
    (results,) = (tmp_path / "outputs").glob("synthetic/tiny_vit/autoft/seed0/results.json")
    hp = json.loads(results.read_text())["hparams"]
    assert hp["lr_scale"] == pytest.approx(best["lr_scale"]) and hp["weight_decay"] == pytest.approx(best["weight_decay"])
    assert hp["loss_weights"] == pytest.approx(best["loss_weights"])
