"""hydra.sweeper.app: the one hook through which the search learns about the app it sweeps
(autoft.search.app). Without it an app is swept as hydra-optuna-sweeper sweeps it, whatever keys its
config holds; train.py's hook (autoft.search_app.AutoftApp, set by search=autoft) reads autoft's keys."""
from pathlib import Path

import optuna
import pytest
import yaml

from autoft.errors import UserError
from autoft.search.app import SearchApp, load_app
from sweep_helpers import SWEEP, run_app_here
from test_optuna_sweeper_compat import results, run_example


class NoKeys:
    """A config that fails on any read: the base hook never reads one."""

    def __getattr__(self, name):
        raise AssertionError(f"the base SearchApp read the app's config ({name})")

    __getitem__ = __contains__ = __iter__ = __getattr__


def test_the_base_hook_reads_no_key_and_answers_as_hydra_optuna_sweeper():
    app = load_app(None, NoKeys())
    assert type(app) is SearchApp
    assert (app.label(), app.direction(), app.space_filter(), app.pruner()) == ("study", "minimize", None, None)
    assert app.fingerprint_exclude() == ["hydra"] and app.neutral_defaults() == {} and app.study_attrs() == {}
    assert app.warm_starts() == {} and app.warm_start_values({"params": {"x": 1}}) == {"x": 1}
    assert not app.reevaluation(None, "minimize", 2).enabled and app.reevaluation_overrides([7], 0) == []
    assert app.run_scores(Path("."), [0]) == {} and app.summary_files(None) == {}
    app.write_outputs(None, None, None, None, True)  # writes nothing


def test_a_hook_that_is_not_one_is_named():
    with pytest.raises(UserError, match=r"^hydra.sweeper.app 'nowhere.App' cannot be imported"):
        load_app("nowhere.App", None)
    with pytest.raises(UserError, match=r"^hydra.sweeper.app 'builtins.str' gave a str, not an autoft.search.app"):
        load_app("builtins.str", None)


def test_a_plain_hydra_app_is_swept_as_hydra_optuna_sweeper_sweeps_it(tmp_path):
    """Keys autoft's hook would read (dataset.higher_is_better, search.reevaluate_top_k, a bad
    search.pruner) mean nothing without it: direction minimize, studies named study-<fingerprint>,
    no re-evaluation, no best_hparams.yaml."""
    _, sweep = run_example("example/sphere.py", tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=null",
                           "hydra.sweeper.study_name=null", "+dataset={name:d,metric:acc,higher_is_better:true}",
                           "+search={reevaluation_of:null,reevaluate_top_k:2,pruner:mediam}")
    (name,) = optuna.get_all_study_names(f"sqlite:///{sweep / 'optuna.db'}")
    assert name.startswith("study-") and results(sweep)["direction"] == "minimize"
    study_dir = sweep / name
    assert not (sweep / "best_hparams.yaml").exists() and not (study_dir / "best_hparams.yaml").exists()
    assert (study_dir / "trials.csv").is_file() and not (study_dir / "reevaluation").exists()
    assert not {"metric", "dataset", "model", "method"} & set(optuna.load_study(
        study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}").user_attrs)


def test_search_autoft_sets_the_autoft_hook_and_without_it_the_same_app_is_a_plain_one(tmp_path):
    (tmp_path / "autoft").mkdir()
    (tmp_path / "plain").mkdir()
    done = run_app_here(tmp_path / "autoft", "search.n_trials=2")
    run_app_here(tmp_path / "plain", "search.n_trials=2", "hydra.sweeper.app=null")
    autoft, plain = (yaml.safe_load((tmp_path / d / SWEEP / "optimization_results.yaml").read_text())
                     for d in ("autoft", "plain"))
    assert autoft["study_name"].startswith("toy-toy-autoft-") and autoft["direction"] == "maximize"
    best = yaml.safe_load((tmp_path / "autoft" / SWEEP / autoft["study_name"] / "best_hparams.yaml").read_text())
    assert best["trial_number"] == autoft["best_trial_number"] and best["metric"] == "accuracy"
    assert (tmp_path / "autoft" / SWEEP / "best_hparams.yaml").is_file() and "best hyperparameters: " in done.stdout
    assert plain["study_name"].startswith("study-") and plain["direction"] == "minimize"
    assert not list((tmp_path / "plain").rglob("best_hparams.yaml"))


def test_autofts_hook_reads_back_a_reevaluation_record_only_for_the_seeds_it_ran(tmp_path):
    """The record is read from the run's folder (train.py wrote it); one an earlier plan left there
    (other seeds, say a run killed before the seed offset changed) is not this run's scores."""
    from autoft.records import write_trial
    from autoft.search_app import AutoftApp

    app = AutoftApp({})
    assert app.run_scores(tmp_path, [1000, 1001]) == {}  # nothing written
    write_trial(tmp_path, {"objective": 0.5, "seeds": [100, 101], "per_seed": [0.4, 0.6], "ci": [0.3, 0.7]})
    assert app.run_scores(tmp_path, [1000, 1001]) == {}
    write_trial(tmp_path, {"objective": 0.7, "seeds": [1000, 1001], "per_seed": [0.6, 0.8], "ci": [0.5, 0.9]})
    assert app.run_scores(tmp_path, [1000, 1001])["per_seed"] == [0.6, 0.8]
