"""Guards against selection noise: seed-averaged trials and bootstrap intervals in the trial record."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from autoft import cli

CONF = str(Path(__file__).parents[1] / "conf")
BASE = ["phase=search", "experiment=synthetic_tiny_vit", "dataset.task.image_size=32",
        "dataset.task.n_train=128", "dataset.task.n_ood_val=64", "trainer.batch_size=16", "trainer.inner_steps=3",
        "trainer.lr_scale=300"]


def trial(tmp_path, name, *overrides):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, *overrides])
    out = tmp_path / name
    objective = cli.run_search(cfg, cli.workspace(cfg), cli.hyperparameters(cfg), out)["objective"]
    return objective, json.loads((out / "trial.json").read_text())


def test_k_seed_trial_is_the_mean_of_k_single_seed_trials(tmp_path):
    both, record = trial(tmp_path, "k2", "seed=5", "+search.seeds_per_trial=2")
    s5, _ = trial(tmp_path, "s5", "seed=5")
    s6, _ = trial(tmp_path, "s6", "seed=6")
    assert record["seeds"] == [5, 6]
    assert record["per_seed"] == pytest.approx([s5, s6])
    assert both == pytest.approx((s5 + s6) / 2)
    losses = [r["final_loss"] for r in record["runs"]]
    assert losses[0] != losses[1]  # the seeds really differ (data order, prompt draws)
    lo, hi = record["ci"]
    assert lo <= both <= hi and hi > lo


def test_bad_seed_count_is_a_user_error():
    from autoft.config_checks import validate
    from autoft.errors import UserError

    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, "+search.seeds_per_trial=0"])
    with pytest.raises(UserError, match="seeds_per_trial"):  # refused before a trial runs (cli.run validates first)
        validate(cfg)
