"""hydra-optuna-sweeper 1.3 compatibility: its users switch with `override hydra/sweeper: autoft_optuna`.

Our own versions of that plugin's checks (discovery, distributions and parameters from overrides,
launching jobs, the sphere example with and without command-line parameters, failure rates, a
custom search space, a multi-objective study, the grid sampler) against our example apps in
tests/apps/optuna_examples/, plus what the issue added: the sampler group from any app, no
`search.*` key injected into an app without one, a pre-flight hook, and a UserError that stops
the search however deeply it is wrapped. Differences from hydra-optuna-sweeper are documented in
src/hydra_plugins/autoft_optuna_sweeper/config.py (range excludes its stop; n_trials is a total;
max_failure_rate counts over the whole study).
"""
import itertools
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autoft.search.space import grid_values, parse_space
from sweep_helpers import FAST, SWEEP, run_app

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "tests" / "apps" / "optuna_examples"


def run_example(script, tmp_path, *args, check=True, timeout=240):
    sweep = tmp_path / "sweep"
    flags = [a for a in args if a.startswith("--")]  # Hydra's own flags come before the overrides
    cmd = [sys.executable, str(EXAMPLES / script), "--multirun", *flags, f"hydra.sweep.dir={sweep}",
           "hydra.sweeper.plots=false", *[a for a in args if not a.startswith("--")]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done, sweep


def results(sweep):
    return yaml.safe_load((sweep / "optimization_results.yaml").read_text())


def load(sweep, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_discovery():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "AutoFTOptunaSweeper" in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


def test_the_sampler_group_is_registered_and_builds_each_sampler():
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    from autoft.search.study import make_sampler

    Plugins.instance()  # plugin discovery imports the config module
    options = {name.rsplit(".", 1)[0] for name in ConfigStore.instance().list("hydra/sweeper/sampler")}
    assert {"tpe", "random", "cmaes", "grid", "nsgaii", "qmc", "gp"} <= options
    space, _ = parse_space({"x": "choice(1, 2)", "y": "range(0, 3)"})
    from hydra_plugins.autoft_optuna_sweeper.config import SAMPLERS

    for name, node in SAMPLERS.items():
        sampler = make_sampler({**node, "seed": 7}, grid_values(space))
        inner = sampler._inner
        assert type(inner).__name__ == node["_target_"].rsplit(".", 1)[1], name


@pytest.mark.parametrize("text, expected", [
    ("choice(1,2)", CategoricalDistribution([1, 2])),
    ("choice(true, false)", CategoricalDistribution([True, False])),
    ("choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("shuffle(range(1,3))", CategoricalDistribution([1, 2])),
    ("range(1,3)", IntDistribution(1, 2)),  # Python's range: 3 is excluded (hydra-optuna-sweeper: included)
    ("range(1,10,step=3)", IntDistribution(1, 7, step=3)),
    ("interval(1, 5)", FloatDistribution(1, 5)),
    ("int(interval(1, 5))", IntDistribution(1, 5)),
    ("tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    ("tag(int, interval(1, 5))", IntDistribution(1, 5)),
    ("range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1)),
])
def test_distributions_from_overrides(text, expected):
    space, _ = parse_space({"key": text})
    actual = space.distributions["key"]
    if isinstance(expected, CategoricalDistribution):
        assert isinstance(actual, CategoricalDistribution) and set(actual.choices) == set(expected.choices)
    else:
        assert actual == expected


@pytest.mark.parametrize("args, searched, passed", [
    (["key=choice(1,2)"], {"key": CategoricalDistribution([1, 2])}, []),
    (["key=5"], {}, ["key=5"]),
    (["key1=choice(1,2)", "key2=5"], {"key1": CategoricalDistribution([1, 2])}, ["key2=5"]),
    (["key1=choice(1,2)", "key2=5", "key3=range(1,3)"],
     {"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 2)}, ["key2=5"]),
])
def test_params_from_overrides(args, searched, passed):
    space, passthrough = parse_space({}, args)
    assert space.distributions == searched and passthrough == passed


def test_launching_jobs_with_n_jobs_on_the_basic_launcher(tmp_path):
    done, sweep = run_example("sphere.py", tmp_path, "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=3")
    assert "runs one trial at a time" in done.stdout + done.stderr
    assert [t.state.name for t in load(sweep, "sphere").trials] == ["COMPLETE"] * 8


@pytest.mark.parametrize("with_commandline", [True, False])
def test_sphere_example(tmp_path, with_commandline):
    args = ["hydra.sweeper.n_trials=20", "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z"]
    if with_commandline:
        args += ["x=choice(0, 1, 2)", "y=0"]  # a sweep joins the space; a plain value fixes a searched key
    done, sweep = run_example("sphere.py", tmp_path, *args)
    out = results(sweep)
    study = load(sweep, "sphere")
    best = study.best_trial
    assert out["name"] == "optuna" and out["study_name"] == "sphere"
    assert out["best_params"] == best.params and out["best_value"] == best.value
    if with_commandline:
        assert set(best.params) == {"x"} and best.params["x"] in (0, 1, 2)
        assert best.value == 0.0  # x=0 is in the choice, and TPE finds it within 20 trials
    else:
        assert set(best.params) == {"x", "y"}
        assert out["best_value"] <= 2.27  # TPE with seed 123 finds the bowl (hydra-optuna-sweeper's bound)
    # the trial identity reached the app only through hydra.sweeper.trial: no `search` key added
    trial_dir = sweep / "sphere" / "trial_0" / ".hydra"
    assert "search" not in yaml.safe_load((trial_dir / "config.yaml").read_text())
    ident = yaml.safe_load((trial_dir / "hydra.yaml").read_text())["hydra"]["sweeper"]["trial"]
    assert ident["number"] == 0 and ident["study_name"] == "sphere"
    assert not any(o.startswith(("search.", "++search.")) for o in
                   yaml.safe_load((trial_dir / "overrides.yaml").read_text()))


def test_any_app_reports_to_its_trial_through_hydra_sweeper_trial(tmp_path):
    _, sweep = run_example("sphere.py", tmp_path, "hydra.sweeper.n_trials=2", "report=true")
    for t in load(sweep, "sphere").trials:
        assert t.user_attrs["reported"] == t.value


@pytest.mark.parametrize("n_trials", [20, 5])
def test_grid_sampler(tmp_path, n_trials):
    done, sweep = run_example("sphere.py", tmp_path, "--config-name=grid", f"hydra.sweeper.n_trials={n_trials}")
    trials = load(sweep, "grid").trials
    points = [(t.params["x"], t.params["y"], t.params["z"]) for t in trials]
    grid = set(itertools.product([-1, 1], [-1, 0, 1], ["foo", "bar"]))
    assert len(points) == len(set(points)) == min(n_trials, 12) and set(points) <= grid  # no point twice
    out = results(sweep)
    if n_trials >= 12:  # the whole grid: the optimum x=+-1, y=0
        assert out["best_value"] == 1 and abs(out["best_params"]["x"]) == 1 and out["best_params"]["y"] == 0
        assert "the grid holds 12 points" in done.stdout + done.stderr
    assert out["best_params"]["z"] in ("foo", "bar")


def _dominates(a, b):
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.parametrize("with_commandline", [True, False])
def test_multi_objective_example(tmp_path, with_commandline):
    args = ["hydra.sweeper.n_trials=20", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123"]
    if with_commandline:
        args += ["x=range(0, 5)", "y=range(0, 3)"]
    done, sweep = run_example("multi_objective.py", tmp_path, *args)
    out = results(sweep)
    assert out["name"] == "optuna" and out["direction"] == ["minimize", "minimize"] and out["solutions"]
    study = load(sweep, "multi-objective")
    assert {s["number"] for s in out["solutions"]} == {t.number for t in study.best_trials}
    for s in out["solutions"]:
        step = 1 if with_commandline else 0.5
        assert s["params"]["x"] % step == 0 and s["params"]["y"] % step == 0
        for other in out["solutions"]:
            assert not _dominates(other["values"], s["values"])  # a Pareto front
    assert "Pareto front" in done.stdout


def test_multi_objective_needs_one_value_per_direction(tmp_path):
    done, _ = run_example("sphere.py", tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=[minimize,maximize]",
                          check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "instead of 2 objectives" in done.stderr


def test_custom_search_space_example(tmp_path):
    _, sweep = run_example("custom_space.py", tmp_path, "hydra.sweeper.n_trials=20", "hydra/sweeper/sampler=random",
                           "hydra.sweeper.sampler.seed=123", "max_z_difference_from_x=0.3")
    out = results(sweep)
    best = out["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3 and 0 <= best["+w"] <= 1
    study = optuna.load_study(study_name=out["study_name"], storage=f"sqlite:///{sweep / 'optuna.db'}")
    for t in study.trials:  # every trial got the extra parameters as overrides
        cfg = yaml.safe_load((sweep / out["study_name"] / f"trial_{t.number}" / ".hydra" / "config.yaml").read_text())
        assert cfg["z"] == t.params["z"] and cfg["w"] == t.params["+w"]


def test_failure_rate_counts_failures_over_the_study(tmp_path):
    # every trial raises: 0.5 x 4 trials allows 2 failures; the third stops the search
    done, sweep = run_example("sphere.py", tmp_path, "hydra.sweeper.n_trials=4", "hydra/sweeper/sampler=random",
                              "hydra.sweeper.max_failure_rate=0.5", "error=true", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "max_failure_rate=0.5" in done.stderr and "(2 allowed)" in done.stderr
    assert [t.state.name for t in load(sweep, "sphere").trials] == ["FAIL"] * 3
    assert "RuntimeError: cfg.error is True" in done.stdout + done.stderr  # each failure is logged


def test_failure_rate_with_one_slot_tolerates_what_it_allows(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # 2 of 4 failures with 0.5: the search finishes its 4 trials
    run_app(a, "search.n_trials=4", "toy.fail_on=[0,1]", "toy.failure=raise", "hydra.sweeper.max_failure_rate=0.5")
    names = optuna.get_all_study_names(f"sqlite:///{a / SWEEP / 'optuna.db'}")
    study = optuna.load_study(study_name=names[0], storage=f"sqlite:///{a / SWEEP / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4 + ["FAIL"] * 2
    # 0.0: the first failure stops it
    done = run_app(b, "search.n_trials=4", "toy.fail_on=[1]", "toy.failure=raise", "hydra.sweeper.max_failure_rate=0",
                   check=False)
    assert done.returncode != 0 and "max_failure_rate=0" in done.stderr


def test_a_wrapped_user_error_stops_the_search(tmp_path):
    done = run_app(tmp_path, "search.n_trials=4", "toy.fail_on=[1]", "toy.failure=wrapped_user_error", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "toy.failure=wrapped_user_error: no such dataset split" in done.stderr
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / SWEEP / 'optuna.db'}")
    study = optuna.load_study(study_name=names[0], storage=f"sqlite:///{tmp_path / SWEEP / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["fail_kind"] == "user_error"


def test_preflight_stops_before_any_study_row(tmp_path):
    done = run_app(tmp_path, "search.n_trials=2", "hydra.sweeper.preflight=toy_app.preflight",
                   "toy.preflight_error='no GPU visible'", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "pre-flight: no GPU visible" in done.stderr
    assert not (tmp_path / SWEEP / "optuna.db").exists() and not list(tmp_path.glob("outputs/**/trial_*"))
    run_app(tmp_path, "search.n_trials=1", "hydra.sweeper.preflight=toy_app.preflight")  # passes: trains
    assert (tmp_path / SWEEP / "optuna.db").exists()


# ----------------------------------------------------------------------------- the deprecated search_space

@pytest.mark.parametrize("entry, expected", [
    ({"type": "float", "low": -5.5, "high": 5.5, "step": 0.5}, FloatDistribution(-5.5, 5.5, step=0.5)),
    ({"type": "float", "low": 0, "high": 4, "step": 2}, FloatDistribution(0.0, 4.0, step=2.0)),  # stays float
    ({"type": "float", "low": 0, "high": 1, "step": 0.25}, FloatDistribution(0.0, 1.0, step=0.25)),
    ({"type": "float", "low": 0, "high": 1}, FloatDistribution(0.0, 1.0)),
    ({"type": "float", "low": 1e-4, "high": 1, "log": True, "step": 0.1}, FloatDistribution(1e-4, 1.0, log=True)),
    ({"type": "int", "low": -5, "high": 5}, IntDistribution(-5, 5)),  # bounds inclusive, as there
    ({"type": "int", "low": 0, "high": 9, "step": 3}, IntDistribution(0, 9, step=3)),
    ({"type": "int", "low": 1, "high": 100, "log": True}, IntDistribution(1, 100, log=True)),
    ({"type": "categorical", "choices": [-5, 0, 5]}, CategoricalDistribution([-5, 0, 5])),
    ({"type": "categorical", "choices": ["a b", "c"]}, CategoricalDistribution(["a b", "c"])),
])
def test_search_space_entries_become_the_same_distributions(entry, expected):
    from hydra_plugins.autoft_optuna_sweeper.compat import entry_params

    space, _ = parse_space({"key": entry_params("key", entry)})
    assert space.distributions["key"] == expected


def test_search_space_is_deprecated_and_params_win_over_it():
    import warnings

    from hydra_plugins.autoft_optuna_sweeper.compat import space_params

    legacy = {"x": {"type": "int", "low": 0, "high": 3}}
    with pytest.warns(UserWarning, match="search_space is deprecated"):
        assert space_params(None, legacy) == {"x": "int(interval(0, 3))"}
    with pytest.warns(UserWarning, match="both set"):
        assert space_params({"y": "choice(1, 2)"}, legacy) == {"y": "choice(1, 2)"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert space_params({"y": "choice(1, 2)"}, None) == {"y": "choice(1, 2)"}
        assert space_params(None, None) is None


@pytest.mark.parametrize("entry, message", [
    ({"type": "float", "low": 0, "hihg": 1}, r"search_space.x has unknown key\(s\) \['hihg'\]; allowed: type"),
    ({"type": "uniform", "low": 0, "high": 1}, "search_space.x has type 'uniform'; allowed: float, int, categorical"),
    ({"type": "categorical"}, "search_space.x is categorical and needs a non-empty list 'choices'"),
    ({"type": "int", "high": 3}, "search_space.x needs a finite number 'low'"),
    ({"type": "float", "low": 0, "high": 1, "step": -1}, "search_space.x needs a positive 'step'"),
    ("interval(0, 1)", "search_space.x must be a mapping"),
])
def test_a_bad_search_space_entry_names_its_key(entry, message):
    from autoft.errors import UserError
    from hydra_plugins.autoft_optuna_sweeper.compat import space_params

    with pytest.warns(UserWarning), pytest.raises(UserError, match=message):
        space_params(None, {"x": entry})


def test_sphere_example_with_the_deprecated_search_space(tmp_path):
    done, sweep = run_example("sphere.py", tmp_path, "--config-name=legacy", "hydra.sweeper.n_trials=6")
    assert "search_space is deprecated" in done.stderr
    study = load(sweep, "legacy")
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    for t in study.trials:
        assert set(t.params) == {"x", "y"} and t.params["y"] in (-5, 0, 5)
        assert -5.5 <= t.params["x"] <= 5.5 and (t.params["x"] * 2).is_integer()
    assert set(results(sweep)["best_params"]) == {"x", "y"}
    # a command-line value still replaces an entry, as with params
    (tmp_path / "again").mkdir()
    done, sweep = run_example("sphere.py", tmp_path / "again", "--config-name=legacy", "hydra.sweeper.n_trials=2",
                              "y=0")
    assert all(set(t.params) == {"x"} for t in load(sweep, "legacy").trials)
