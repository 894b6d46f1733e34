"""cli.py maps the config to one typed spec for both phases, whose settings() builds every run's
FinetuneSettings."""
import pytest
import torch

from autoft import cli, config_checks
from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.pipeline import RunSpec
from autoft.records import write_best_hparams
from conftest import compose_config

BASE = ["experiment=tinyshapes_tiny_vit", "device=cpu"]


def spec_of(*overrides):
    cfg = compose_config(*BASE, *overrides)
    hp = cli.hyperparameters(cfg)
    return cfg, hp, cli.run_spec(cfg, hp)


def test_the_config_becomes_one_spec_for_both_phases():
    overrides = ("method=lpft", "trainer.lr_scale=2", "seed=3", "+search.seeds_per_trial=2", "+search.wise_alphas=[0.5,1]")
    cfg, hp, spec = spec_of(*overrides)
    base = float(cfg.trainer.base_lr)
    assert isinstance(spec, RunSpec)
    assert spec.lr == pytest.approx(base * 2 * float(cfg.method.lr_mult))
    assert spec.lp_epochs == int(cfg.method.lp_epochs) > 0
    assert spec.lp_lr == pytest.approx(base * 2 * float(cfg.method.lp_lr_mult))
    assert (spec.epochs, spec.seed, spec.wise_alpha) == (int(cfg.trainer.epochs), 3, 1.0)
    assert spec.seeds == (3, 4) and spec.steps == int(cfg.trainer.inner_steps) and spec.wise_alphas == (0.5, 1.0)
    assert spec.weights == hp.loss_weights
    assert spec_of(*overrides, "phase=search")[2] == spec  # the phase picks what runs, not the spec
    # the spec builds its runs' settings: a trial's inner run at a seed, a final run's stage of n steps
    s = spec.settings("fp32", seed=4)
    assert (s.steps, s.lr, s.seed, s.warmup_steps) == (spec.steps, spec.lr, 4,
                                                       round(float(cfg.trainer.warmup_fraction) * spec.steps))
    lp = spec.settings("fp32", steps=10, lr=spec.lp_lr)
    assert (lp.steps, lp.lr, lp.seed) == (10, spec.lp_lr, 3)


def test_the_optimiser_reaches_every_run_kind():
    _, _, spec = spec_of("trainer.optimizer._target_=torch.optim.SGD", "+trainer.optimizer.momentum=0.8")
    for settings in (spec.settings("fp32", steps=5), spec.settings("fp32", seed=0)):
        opt = settings.optimizer([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=0.0)
        assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8


def test_a_hparams_file_reaches_the_final_spec(tmp_path):
    path = write_best_hparams(tmp_path / "best_hparams.yaml", Hyperparameters(
        loss_weights={"hinge": 0.3}, lr_scale=4.0, weight_decay=0.05, wise_alpha=0.25))
    cfg, hp, spec = spec_of("method=autoft", f"hparams={path}")
    assert spec.weights["hinge"] == 0.3 and spec.weights["ce"] == float(cfg.method.loss_weights.ce)
    assert spec.lr == pytest.approx(float(cfg.trainer.base_lr) * 4.0) and spec.weight_decay == 0.05
    assert spec.wise_alpha == 0.25
    record = cli.hparams_record(cfg, hp, spec)
    assert record["source"] == str(path) and record["wise_alpha"] == 0.25 and record["lr"] == spec.lr


@pytest.mark.parametrize("override,named", [("+search.seeds_per_trial=0", "search.seeds_per_trial=0"),
                                            ("+search.eval_every=-1", "search.eval_every=-1"),
                                            ("+search.bootstrap=-5", "search.bootstrap=-5")])
def test_bad_spec_values_are_refused_by_the_schema(override, named):
    with pytest.raises(UserError, match=named):
        config_checks.validate(compose_config(*BASE, override))
    with pytest.raises(UserError, match="wise_alpha=2"):
        Hyperparameters(wise_alpha=2).validate("hparams=best_hparams.yaml")
