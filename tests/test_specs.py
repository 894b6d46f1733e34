"""cli.py maps the config to typed specs, each run kind's FinetuneSettings built by its spec."""
import pytest
import torch

from autoft import cli
from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.pipeline import FinalSpec, TrialSpec
from conftest import compose_config

BASE = ["experiment=tinyshapes_tiny_vit", "device=cpu"]


def specs(*overrides):
    cfg = compose_config(*BASE, *overrides)
    hp = cli.hyperparameters(cfg)
    return cfg, hp, cli.final_spec(cfg, hp), cli.trial_spec(cfg, hp)


def test_the_config_becomes_a_final_and_a_trial_spec():
    cfg, hp, final, trial = specs("method=lpft", "trainer.lr_scale=2", "seed=3", "+search.seeds_per_trial=2",
                                  "+search.wise_alphas=[0.5,1]")
    base = float(cfg.trainer.base_lr)
    assert isinstance(final, FinalSpec) and isinstance(trial, TrialSpec)
    assert final.lr == trial.lr == pytest.approx(base * 2 * float(cfg.method.lr_mult))
    assert final.lp_epochs == int(cfg.method.lp_epochs) > 0
    assert final.lp_lr == pytest.approx(base * 2 * float(cfg.method.lp_lr_mult))
    assert (final.epochs, final.seed, final.wise_alpha) == (int(cfg.trainer.epochs), 3, 1.0)
    assert trial.seeds == (3, 4) and trial.steps == int(cfg.trainer.inner_steps) and trial.wise_alphas == (0.5, 1.0)
    assert final.weights == trial.weights == hp.loss_weights
    # each spec builds its runs' settings
    s = trial.settings("fp32", seed=4)
    assert (s.steps, s.lr, s.seed, s.warmup_steps) == (trial.steps, trial.lr, 4,
                                                       round(float(cfg.trainer.warmup_fraction) * trial.steps))
    lp = final.settings(10, "fp32", lr=final.lp_lr)
    assert (lp.steps, lp.lr, lp.seed) == (10, final.lp_lr, 3)


def test_the_optimiser_reaches_every_run_kind():
    _, _, final, trial = specs("trainer.optimizer._target_=torch.optim.SGD", "+trainer.optimizer.momentum=0.8")
    for settings in (final.settings(5, "fp32"), trial.settings("fp32", 0)):
        opt = settings.optimizer([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=0.0)
        assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8


def test_a_hparams_file_reaches_the_final_spec(tmp_path):
    path = Hyperparameters(loss_weights={"hinge": 0.3}, lr_scale=4.0, weight_decay=0.05, wise_alpha=0.25).save(
        tmp_path / "best_hparams.yaml")
    cfg, hp, final, _ = specs("method=autoft", f"hparams={path}")
    assert final.weights["hinge"] == 0.3 and final.weights["ce"] == float(cfg.method.loss_weights.ce)
    assert final.lr == pytest.approx(float(cfg.trainer.base_lr) * 4.0) and final.weight_decay == 0.05
    assert final.wise_alpha == 0.25
    record = cli.hparams_record(cfg, hp)
    assert record["source"] == str(path) and record["wise_alpha"] == 0.25 and record["lr"] == final.lr


def test_bad_spec_values_are_user_errors():
    with pytest.raises(UserError, match="search.seeds_per_trial"):
        specs("+search.seeds_per_trial=0")
    with pytest.raises(UserError, match="wise_alpha=2"):
        FinalSpec(weights={"ce": 1.0}, lr=1e-3, weight_decay=0.0, epochs=1, batch_size=8, wise_alpha=2)
