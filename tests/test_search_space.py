"""Search space parsing, study naming, warm starts, best-hparams files, samplers, the reporter.

In-process and fast: real Hydra override parsing, real Optuna distributions and storages.
"""
from pathlib import Path

import optuna
import yaml
import pytest
from omegaconf import OmegaConf

from autoft.errors import UserError
from autoft.records import read_best_hparams, write_best_hparams
from autoft.search.space import parse_space
from autoft.search.storage import mask_url, normalize_url, storage_kind
from autoft.search.study import (fingerprint, load_warm_starts, make_pruner, make_sampler, open_study,
                                 study_name_for, warm_start_params)
from autoft.search.trial import TrialReporter
from autoft.search_app import WARM_START_KEYS, AutoftApp, best_hparams, loss_filter, warm_start_values

REPO = Path(__file__).resolve().parents[1]
PAPER = OmegaConf.load(REPO / "conf/search/autoft.yaml").hydra.sweeper.params


def config(**over):
    cfg = OmegaConf.create({
        "dataset": {"name": "toy", "metric": "accuracy", "higher_is_better": True, "base_lr": 1e-5, "n_trials": 10,
                    "final_epochs": 3},
        "model": {"name": "tiny"}, "seed": 0, "device": "cpu", "phase": "search",
        "method": {"name": "autoft", "loss_weights": {k: (1.0 if k == "ce" else 0.0) for k in
                   ("ce", "hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")}},
        "trainer": {"base_lr": "${dataset.base_lr}", "lr_scale": 1.0, "weight_decay": 0.1, "inner_steps": 5,
                    "epochs": "${dataset.final_epochs}"},
    })
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def test_paper_space_parses_to_the_papers_distributions():
    space, passthrough = parse_space(OmegaConf.to_container(PAPER), [], config=config())
    d = space.distributions
    assert sorted(k.split(".")[-1] for k in d if k.startswith("method.loss_weights.")) == sorted(
        ["hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero"])
    assert "method.loss_weights.ce" not in d
    w = d["method.loss_weights.flyp"]
    assert (w.low, w.high, w.log) == (1e-4, 10.0, True)
    lr = d["trainer.lr_scale"]
    assert (lr.low, lr.high, lr.log) == (1e-2, 1e2, True)
    wd = d["trainer.weight_decay"]
    assert (wd.low, wd.high, wd.log) == (0.0, 1.0, False)
    # phase=search comes from search/autoft.yaml's global key, not from the sweeper's params
    assert space.fixed == {} and passthrough == []
    assert "seed" not in d  # offered, off by default


def test_grammar_int_range_choice_and_command_line():
    params = {"trainer.weight_decay": "interval(0, 1)", "seed": "tag(int, interval(0, 10))"}
    space, passthrough = parse_space(params, ["dataset=toy", "trainer.inner_steps=range(2, 10, 4)",
                                              "model.name=choice(a, b)", "trainer.weight_decay=0.3"],
                                     config=config())
    d = space.distributions
    assert isinstance(d["seed"], optuna.distributions.IntDistribution) and (d["seed"].low, d["seed"].high) == (0, 10)
    steps = d["trainer.inner_steps"]
    assert (steps.low, steps.high, steps.step) == (2, 10, 4)  # range(2, 10, 4) = 2, 6, 10 (both ends included)
    assert d["model.name"].choices == ("a", "b")
    # a plain command-line value of a searched key fixes it; other overrides pass through
    assert "trainer.weight_decay" not in d and space.fixed["trainer.weight_decay"] == "0.3"
    assert passthrough == ["dataset=toy"]
    ov = space.overrides({"seed": 3, "model.name": "b"})
    assert "seed=3" in ov and "model.name='b'" in ov and "trainer.weight_decay=0.3" in ov
    # `seed=range(0,10)` on the command line turns the reference code's seed search on
    space, _ = parse_space(OmegaConf.to_container(PAPER), ["seed=range(0,10)"], config=config())
    assert (space.distributions["seed"].low, space.distributions["seed"].high) == (0, 10)


@pytest.mark.parametrize("key,text,words", [
    ("trainer.weight_decay", "interval(1, 0)", ["trainer.weight_decay", "empty or negative range"]),
    ("trainer.weight_decay", "interval(0.5, 0.5)", ["trainer.weight_decay", "empty or negative range"]),
    ("method.loss_weights.flyp", "tag(log, interval(0, 10))", ["method.loss_weights.flyp", "low bound must be > 0"]),
    ("seed", "range(6, 5)", ["seed", "empty range"]),
    ("seed", "range(5, 5)", ["seed", "holds a single value"]),
    ("seed", "tag(int, interval(0.5, 3))", ["seed", "non-integer"]),
    ("trainer.lr_scale", "tag(cosine, interval(1, 2))", ["trainer.lr_scale", "unknown tag"]),
    ("trainer.weight_dekay", "interval(0, 1)", ["trainer.weight_dekay", "unknown config key"]),
    ("trainer.lr_scale", "interval(0, ", ["trainer.lr_scale", "cannot be parsed"]),
])
def test_bad_space_names_the_key(key, text, words):
    with pytest.raises(UserError) as err:
        parse_space({key: text}, [], config=config())
    for w in words:
        assert w in str(err.value)


def test_losses_restriction_and_new_keys():
    space, _ = parse_space(OmegaConf.to_container(PAPER), [], config=config(), keep=loss_filter(["flyp", "l2init"]))
    assert sorted(k for k in space.distributions if k.startswith("method.")) == [
        "method.loss_weights.flyp", "method.loss_weights.l2init"]
    with pytest.raises(UserError, match="search.losses"):
        parse_space(OmegaConf.to_container(PAPER), [], config=config(), keep=loss_filter(["ce"]))
    space, _ = parse_space({"+trainer.extra": "interval(0, 1)"}, [], config=config())
    assert space.overrides({"trainer.extra": 0.5}) == ["+trainer.extra=0.5"]


def test_study_name_is_stable_and_separates_configs():
    params = OmegaConf.to_container(PAPER)
    kw = dict(direction="maximize", sampler={"seed": 0}, pruner=None,
              exclude=["device", "dataset.n_trials", "dataset.final_epochs", "trainer.epochs"])

    def name(cfg, params=params, **extra):
        space, _ = parse_space(params, [], config=cfg)
        return study_name_for(AutoftApp(cfg).label(), fingerprint(cfg, space=space, **{**kw, **extra}))

    base = name(config())
    assert base.startswith("toy-tiny-autoft-") and base == name(config())
    # operational settings resume the same study
    assert name(config(**{"device": "cuda:3", "dataset.n_trials": 500, "dataset.final_epochs": 20})) == base
    # anything a trial's objective depends on makes another study
    assert name(config(**{"trainer.inner_steps": 6})) != base
    assert name(config(**{"dataset.base_lr": 2e-5})) != base
    assert name(config(seed=1)) != base
    assert name(config(), sampler={"seed": 1}) != base
    assert name(config(), direction="minimize") != base
    assert name(config(), params={**params, "trainer.weight_decay": "interval(0, 0.5)"}) != base
    # a searched key's own config value does not matter
    assert name(config(**{"trainer.weight_decay": 0.7})) == base


def test_open_study_refuses_another_config_under_the_same_name(tmp_path):
    from autoft.search.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study, created = open_study(storage, "s", "maximize", "aaa", {"n_trials": 3})
    assert created and study.user_attrs["autoft_fingerprint"] == "aaa"
    _, created = open_study(storage, "s", "maximize", "aaa", {})
    assert not created
    with pytest.raises(UserError, match="another configuration"):
        open_study(storage, "s", "maximize", "bbb", {})
    with pytest.raises(UserError, match="direction"):
        open_study(storage, "s", "minimize", "aaa", {})


def test_unreachable_storage_is_a_user_error(tmp_path):
    from autoft.search.storage import open_storage

    with pytest.raises(UserError, match="cannot open the study storage postgresql"):
        open_storage("postgresql://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(UserError, match="not a storage URL"):
        storage_kind("somewhere/study")
    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert storage_kind("journal:///x/y.log") == "journal" and storage_kind("sqlite:///a.db") == "sqlite"
    assert normalize_url("sqlite:///a.db") == "sqlite:///a.db"


def test_shipped_warm_starts_map_onto_the_space():
    space, _ = parse_space(OmegaConf.to_container(PAPER), [], config=config())
    for name, lr_scale in (("iwildcam", 13.6), ("fmow", 2.52), ("imagenet", 0.303)):
        inline = OmegaConf.load(REPO / f"conf/search/warm_start/{name}.yaml")
        (origin, entry), = load_warm_starts([], {"search.warm_start": inline}, WARM_START_KEYS)
        assert origin == f"search.warm_start:{name}"
        p = warm_start_params(warm_start_values(entry, base_lr=5e-5), space, origin=origin)
        assert p["trainer.lr_scale"] == pytest.approx(lr_scale)  # relative to the base lr they were found with
        assert "method.loss_weights.ce" not in p
    p = warm_start_params(warm_start_values(OmegaConf.to_container(
        OmegaConf.load(REPO / "conf/search/warm_start/iwildcam.yaml"))["iwildcam"], None), space, "x")
    assert p["method.loss_weights.dcm"] == 0.622 and p["trainer.weight_decay"] == 0.604
    # FMoW's l1zero (2.6e-5) lies below the paper's range: left to the sampler, not forced
    fmow = OmegaConf.to_container(OmegaConf.load(REPO / "conf/search/warm_start/fmow.yaml"))["fmow"]
    assert "method.loss_weights.l1zero" not in warm_start_params(warm_start_values(fmow, None), space, "fmow")


def test_best_hparams_round_trip(tmp_path):
    cfg = config()
    space, _ = parse_space(OmegaConf.to_container(PAPER), [], config=cfg, keep=loss_filter(["flyp", "l2init"]))
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"method.loss_weights.flyp": 0.5, "method.loss_weights.l2init": 0.01, "trainer.lr_scale": 4.0,
                "trainer.weight_decay": 0.25},
        distributions={k: space.distributions[k] for k in ("method.loss_weights.flyp", "method.loss_weights.l2init",
                                                            "trainer.lr_scale", "trainer.weight_decay")},
        value=0.8))
    hp = best_hparams(cfg, study.best_trial, study_name="s", storage="sqlite:///x.db", direction="maximize",
                      n_complete=1)
    write_best_hparams(tmp_path / "best.yaml", hp)
    back = read_best_hparams(tmp_path / "best.yaml")
    assert back == hp  # the hyperparameters survive the file
    assert back.loss_weights == {"ce": 1.0, "hinge": 0.0, "entropy": 0.0, "dcm": 0.0, "flyp": 0.5, "l1init": 0.0,
                                 "l2init": 0.01, "l1zero": 0.0, "l2zero": 0.0}
    assert back.lr_scale == 4.0 and back.lr(back.base_lr) == pytest.approx(4e-5) and back.weight_decay == 0.25
    assert back.wise_alpha == 1.0 and back.seed is None
    rec = back.records
    assert (rec["objective"], rec["metric"], rec["trial_number"], rec["study_name"]) == (0.8, "accuracy", 0, "s")
    assert "seed" not in yaml.safe_load((tmp_path / "best.yaml").read_text())
    with pytest.raises(UserError, match="not found"):
        read_best_hparams(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("lr: 1.0\nweight_decay: 0.1\n")
    with pytest.raises(UserError, match="loss_weights"):
        read_best_hparams(tmp_path / "bad.yaml")
    # a warm-start file reads the same way (lr / base_lr -> lr_scale)
    iw = load_best_hparams_from_warm_start(tmp_path)
    assert iw.lr_scale == pytest.approx(13.6) and iw.loss_weights["ce"] == 1.0


def load_best_hparams_from_warm_start(tmp_path):
    entry = OmegaConf.load(REPO / "conf/search/warm_start/iwildcam.yaml").iwildcam
    OmegaConf.save(entry, tmp_path / "iw.yaml")
    return read_best_hparams(tmp_path / "iw.yaml")


def test_seeded_sampler_is_reproducible_and_never_replays_draws():
    def draws(n, seed=0):
        study = optuna.create_study(sampler=make_sampler({"_target_": "optuna.samplers.TPESampler", "seed": seed}))
        out = []
        for _ in range(n):
            t = study.ask()
            out.append(t.suggest_float("x", 0, 1))
            study.tell(t, out[-1])
        return out

    a, b = draws(14), draws(14)  # TPE's 10 random start-up trials, then 4 from its model
    assert a == b and len(set(a)) == 14
    assert draws(14, seed=1)[10:] != a[10:]


def test_pruner_specs():
    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("successive_halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}),
                      optuna.pruners.MedianPruner)
    with pytest.raises(UserError, match="search.pruner 'mediam'"):
        make_pruner("mediam", key="search.pruner")


def test_reporter_is_a_no_op_outside_a_search_and_reports_inside(tmp_path):
    r = TrialReporter.from_config({"name": "none"})
    assert not r.active and not r.should_prune()
    r.report(1, 0.5)
    r.set_user_attrs(a=1)

    url = f"sqlite:///{tmp_path}/r.db"
    study = optuna.create_study(study_name="r", storage=url, direction="maximize")
    for v in (0.9, 0.8):
        t = study.ask()
        t.report(v, 1)
        study.tell(t, v)
    trial = study.ask()
    r = TrialReporter("r", url, trial._trial_id, pruner={"_target_": "optuna.pruners.MedianPruner",
                                                           "n_startup_trials": 1})
    assert r.active and r.pruning
    r.set_user_attrs(id_val=0.7)
    with pytest.raises(optuna.TrialPruned):
        r.report(1, 0.1)  # far below the median of the finished trials
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {1: 0.1} and frozen.user_attrs["id_val"] == 0.7


def test_hydra_discovers_the_plugin():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "AutoFTOptunaSweeper" in names
    from hydra.core.config_store import ConfigStore

    assert "autoft_optuna.yaml" in ConfigStore.instance().list("hydra/sweeper")


def test_contains_checks_bounds_step_grid_and_choices():
    space, _ = parse_space({"a": "tag(log, interval(1e-4, 10))", "n": "range(0, 10, step=2)", "c": "choice(x, y)"}, [])
    assert space.contains("a", 1e-4) and space.contains("a", 10) and not space.contains("a", 11)
    assert not space.contains("a", float("nan")) and not space.contains("a", "1")
    assert space.contains("n", 4) and not space.contains("n", 5) and space.contains("n", 10)
    assert not space.contains("n", 12)
    assert space.contains("c", "x") and not space.contains("c", "z")
