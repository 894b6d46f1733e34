"""The one hyperparameters type: best_hparams.yaml in its old and new formats, bad files named by
file and key, the mapping from a trial and to a final run."""
import math

import optuna
import pytest
import yaml

from autoft.errors import UserError
from autoft.hparams import WISE_ALPHA_ATTR, Hyperparameters, search_params
from autoft.names import LOSS_NAMES
from autoft.reporting.selection import same_hparams
from autoft.reporting.results import RunResult
from autoft.records import read_best_hparams, write_best_hparams
from autoft.search_app import best_hparams
from conftest import compose_config

# a best_hparams.yaml as searches wrote it before wise_alpha existed (trimmed: records elided)
OLD_FORMAT = """\
# Best hyperparameters of study shapes-shapes_rn10t-autoft-1a2b3c4d5e (trial 7, accuracy 0.779 on OOD-val).
# Final retrain: python train.py method=autoft hparams=<this file> seed=0
loss_weights:
  ce: 1.0
  hinge: 0.0123
  entropy: 0.0004
  dcm: 0.5
  flyp: 1.9
  l1init: 0.0015
  l2init: 0.00017
  l1zero: 0.00019
  l2zero: 0.00011
lr_scale: 3.5
lr: 0.0035
base_lr: 0.001
weight_decay: 0.42
objective: 0.779
metric: accuracy
direction: maximize
trial_number: 7
study_name: shapes-shapes_rn10t-autoft-1a2b3c4d5e
storage: sqlite:///outputs/shapes/shapes_rn10t/search-autoft/optuna.db
n_complete: 16
params:
  method.loss_weights.hinge: 0.0123
  trainer.lr_scale: 3.5
dataset: shapes
model: shapes_rn10t
search_ci:
- 0.75
- 0.8
"""


def test_a_file_in_the_old_format_loads_with_alpha_one_and_saves_back_unchanged(tmp_path):
    path = tmp_path / "best_hparams.yaml"
    path.write_text(OLD_FORMAT)
    hp = read_best_hparams(path)
    assert hp.loss_weights["hinge"] == 0.0123 and hp.loss_weights["flyp"] == 1.9 and list(hp.loss_weights) == list(LOSS_NAMES)
    assert (hp.lr_scale, hp.weight_decay, hp.base_lr, hp.seed) == (3.5, 0.42, 0.001, None)
    assert hp.wise_alpha == 1.0  # absent: the fine-tuned model
    assert hp.records["trial_number"] == 7 and hp.records["search_ci"] == [0.75, 0.8]
    again = tmp_path / "again.yaml"
    write_best_hparams(again, hp)
    old, new = yaml.safe_load(OLD_FORMAT), yaml.safe_load(again.read_text())
    assert new == {**old, "wise_alpha": 1.0}  # every key kept, the one new key added
    assert read_best_hparams(again) == hp


def test_partial_and_warm_start_files(tmp_path):
    # the published iWildCam values (lr and base_lr, no lr_scale), and a file naming two terms only
    (tmp_path / "w.yaml").write_text("loss_weights: {hinge: 0.5}\nlr: 1.36e-4\nbase_lr: 1.0e-5\nweight_decay: 0.6\n")
    hp = read_best_hparams(tmp_path / "w.yaml")
    assert hp.lr_scale == 13.6 and hp.loss_weights == {**dict.fromkeys(LOSS_NAMES, 0.0), "ce": 1.0, "hinge": 0.5}
    # terms the file leaves out take the defaults given (a final run: the method's own weights)
    l2sp = Hyperparameters(loss_weights={"ce": 1.0, "l2init": 2.0})
    assert read_best_hparams(tmp_path / "w.yaml", defaults=l2sp).loss_weights["l2init"] == 2.0


BAD = [
    ("corrupt", "loss_weights: {ce: 1.0\n  hinge: [0.1\n", "not a readable YAML file"),
    ("list", "- 1\n- 2\n", "holds list, not a mapping"),
    ("unknown-term", "loss_weights: {focal: 1.0}\nlr_scale: 1\nweight_decay: 0\n", "loss_weights.focal: unknown loss term"),
    ("negative-weight", "loss_weights: {dcm: -1}\nlr_scale: 1\nweight_decay: 0\n", "loss_weights.dcm=-1: must be"),
    ("negative-lr", "loss_weights: {}\nlr_scale: -0.5\nweight_decay: 0\n", "lr_scale=-0.5: must be a finite number > 0"),
    ("nan-wd", "loss_weights: {}\nlr_scale: 1\nweight_decay: .nan\n", "weight_decay=nan"),
    ("missing-wd", "loss_weights: {}\nlr_scale: 1\n", "missing key weight_decay"),
    ("missing-lr", "loss_weights: {}\nweight_decay: 0.1\nlr: 0.1\n", "missing key lr_scale (or lr with base_lr)"),
    ("missing-weights", "lr_scale: 1\nweight_decay: 0.1\n", "missing key loss_weights"),
    ("weights-not-mapping", "loss_weights: 3\nlr_scale: 1\nweight_decay: 0.1\n", "loss_weights=3: must be a mapping"),
    ("alpha-above-one", "loss_weights: {}\nlr_scale: 1\nweight_decay: 0\nwise_alpha: 1.5\n", "wise_alpha=1.5: must be"),
    ("alpha-text", "loss_weights: {}\nlr_scale: 1\nweight_decay: 0\nwise_alpha: half\n", "wise_alpha=half: must be"),
]


@pytest.mark.parametrize("case,text,named", BAD, ids=[c[0] for c in BAD])
def test_bad_files_name_the_file_and_the_key(case, text, named, tmp_path):
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_best_hparams(path)
    assert f"hparams={path}: " in str(err.value) and named in str(err.value), str(err.value)
    with pytest.raises(UserError, match="file not found"):
        read_best_hparams(tmp_path / "nowhere.yaml")


def test_from_trial_takes_the_searched_values_and_the_config_for_the_rest(tmp_path):
    cfg = compose_config("method=autoft", "trainer.lr_scale=0.5", "trainer.weight_decay=0.2")
    defaults = Hyperparameters.from_config(cfg)
    assert defaults.lr_scale == 0.5 and defaults.weight_decay == 0.2 and defaults.base_lr == float(cfg.trainer.base_lr)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.suggest_float("method.loss_weights.dcm", 1e-4, 10, log=True)
    trial.suggest_float("trainer.lr_scale", 1e-2, 1e2, log=True)
    trial.set_user_attr(WISE_ALPHA_ATTR, 0.75)
    study.tell(trial, 0.5)
    t = study.trials[0]
    hp = best_hparams(cfg, t, study_name="s", storage="sqlite:///x.db", direction="maximize", n_complete=1)
    assert hp.loss_weights["dcm"] == t.params["method.loss_weights.dcm"] and hp.lr_scale == t.params["trainer.lr_scale"]
    assert hp.weight_decay == 0.2 and hp.wise_alpha == 0.75  # unsearched: the config's; alpha: the trial's choice
    write_best_hparams(tmp_path / "best.yaml", hp)
    text = (tmp_path / "best.yaml").read_text()
    assert "method=autoft method.name=autoft_alpha hparams=<this file>" in text  # the final command says it
    assert yaml.safe_load(text)["wise_alpha"] == 0.75 and read_best_hparams(tmp_path / "best.yaml") == hp
    assert math.isclose(hp.lr(0.01, lr_mult=2.0), 0.01 * hp.lr_scale * 2.0)


def test_override_keys_map_both_ways_in_one_place():
    hp = Hyperparameters(loss_weights={"dcm": 0.5, "flyp": 0.02}, lr_scale=2.5, weight_decay=0.1, seed=7)
    params = search_params(hp.values())
    assert params["method.loss_weights.dcm"] == 0.5 and params["trainer.lr_scale"] == 2.5
    assert (params["trainer.weight_decay"], params["seed"]) == (0.1, 7) and len(params) == len(LOSS_NAMES) + 3
    assert Hyperparameters.from_trial(params) == hp  # the inverse
    # a warm-start entry: the published lr with the base lr it was found with; what it leaves out stays out
    assert search_params({"lr": 1.36e-4, "base_lr": 1.0e-5}) == {"trainer.lr_scale": 13.6}
    assert search_params({"lr": 3e-4}, base_lr=1e-4) == {"trainer.lr_scale": 3.0}
    assert search_params({"lr": 3e-4}) == {}  # no base lr: no lr_scale, left to the sampler


def test_a_final_run_matches_the_file_it_was_run_with(tmp_path):
    hp = Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1, wise_alpha=0.5)
    run = RunResult(tmp_path / "results.json", {"hparams": {**hp.values(), "source": "x.yaml", "epochs": 3}})
    assert same_hparams(run, hp)
    assert not same_hparams(run, Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1))
    # a run written before wise_alpha existed trained the fine-tuned model: alpha 1
    old = RunResult(tmp_path / "old.json", {"hparams": {"loss_weights": {"ce": 1.0, "dcm": 0.5}, "lr_scale": 2.0,
                                                         "weight_decay": 0.1}})
    assert same_hparams(old, Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1))
    assert not same_hparams(RunResult(tmp_path / "r.json", {"hparams": {"lr": 1e-3}}), hp)


def test_the_selection_report_counts_the_runs_of_the_files_hyperparameters(tmp_path):
    from autoft.reporting import selection

    chosen = Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1,
                             records={"study_name": "s", "trial_number": 3, "objective": 0.7, "metric": "accuracy"})
    write_best_hparams(tmp_path / "search-autoft" / "best_hparams.yaml", chosen)
    metrics = {"id_test": {"accuracy": 0.8}, "ood_val": {"accuracy": 0.7}, "snow": {"accuracy": 0.6}}

    def run(seed, hp):
        data = {"dataset": "d", "model": "m", "method": "autoft", "seed": seed, "objective_metric": "accuracy",
                "higher_is_better": True, "metrics": metrics, "hparams": {**hp.values(), "source": "x"}}
        return RunResult(tmp_path / f"autoft/seed{seed}/results.json", data)

    runs = [run(0, chosen), run(1, chosen), run(2, Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0,
                                                                    weight_decay=0.1, wise_alpha=0.5))]
    (sel,) = selection.build(tmp_path, runs)
    assert [r.seed for r in sel.runs] == [0, 1] and [r.seed for r in sel.others] == [2]
    assert sel.as_dict()["trial_number"] == 3 and sel.final("snow").mean == 0.6


def test_the_selection_report_finds_the_alpha_searched_runs(tmp_path):
    """A search that chose the WiSE-FT alpha is compared with its final runs, named autoft_alpha."""
    from autoft.reporting import selection

    chosen = Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1, wise_alpha=0.75,
                             records={"study_name": "alpha", "trial_number": 1, "objective": 0.7})
    write_best_hparams(tmp_path / "search-alpha" / "best_hparams.yaml", chosen)
    metrics = {"id_test": {"accuracy": 0.8}, "ood_val": {"accuracy": 0.7}, "snow": {"accuracy": 0.6}}

    def run(method, seed, hp):
        data = {"dataset": "d", "model": "m", "method": method, "seed": seed, "objective_metric": "accuracy",
                "higher_is_better": True, "metrics": metrics, "hparams": hp.values()}
        return RunResult(tmp_path / f"{method}/seed{seed}/results.json", data)

    plain = Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1)
    runs = [run("autoft", 0, plain), run("autoft_alpha", 0, chosen), run("autoft_alpha", 1, chosen)]
    (sel,) = selection.build(tmp_path, runs)
    assert sel.method == "autoft_alpha" and [r.seed for r in sel.runs] == [0, 1] and sel.others == []
    assert sel.as_dict()["final_method"] == "autoft_alpha"
