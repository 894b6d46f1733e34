"""The autoft_optuna sweeper, run for real: `python tests/apps/toy_app.py -m search=autoft ...`.

The toy app (tests/apps/) composes the shipped conf/search/autoft.yaml, method and trainer configs;
its objective is a cheap function of the sampled values with knobs to sleep, diverge, return NaN,
raise or raise a UserError. Each test runs the app against a real SQLite study: in this process
(run_app_here) unless the processes are what it is about (a worker killed mid-trial, two workers).
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sweep_helpers import APP, FAST, SWEEP, run_app_here


def storage_url(cwd):
    return f"sqlite:///{Path(cwd) / SWEEP / 'optuna.db'}"


def the_study(cwd):
    names = optuna.get_all_study_names(storage_url(cwd))
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage_url(cwd))


def states(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_search_writes_outputs_and_resumes_to_the_total(tmp_path):
    first = run_app_here(tmp_path, "search.n_trials=3", "hydra.sweeper.plots=true")
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 3}
    study_dir = tmp_path / SWEEP / study.study_name
    assert study.study_name.startswith("toy-toy-autoft-")
    assert sorted(p.name for p in study_dir.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]
    # a progress line per finished trial, with the best so far and an ETA
    assert "trial 2: " in first.stdout and "best " in first.stdout and "3/3 finished" in first.stdout
    assert "ETA" in first.stdout
    # every trial got the sampled values and its identity
    cfg2 = yaml.safe_load((study_dir / "trial_2" / ".hydra" / "config.yaml").read_text())
    t2 = study.trials[2]
    hydra2 = yaml.safe_load((study_dir / "trial_2" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert cfg2["phase"] == "search" and hydra2["sweeper"]["trial"]["number"] == 2
    assert hydra2["sweeper"]["trial"]["id"] == study.trials[2]._trial_id and "trial_number" not in cfg2["search"]
    assert cfg2["method"]["loss_weights"]["flyp"] == t2.params["method.loss_weights.flyp"]
    assert cfg2["trainer"]["lr_scale"] == t2.params["trainer.lr_scale"]
    assert t2.user_attrs["id_val_accuracy"] == pytest.approx(t2.value / 2, abs=1e-6)  # reporter's extra score

    best = yaml.safe_load((study_dir / "best_hparams.yaml").read_text())
    assert best == yaml.safe_load((tmp_path / SWEEP / "best_hparams.yaml").read_text())
    assert best["objective"] == study.best_value and best["trial_number"] == study.best_trial.number
    assert set(best["loss_weights"]) == {"ce", "hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero",
                                         "l2zero"} and best["loss_weights"]["ce"] == 1.0
    assert best["lr"] == pytest.approx(1e-3 * best["lr_scale"])  # toy dataset base_lr 1e-3
    assert best["metric"] == "accuracy" and best["study_name"] == study.study_name
    assert best["storage"] == storage_url(tmp_path)
    rows = list(csv.DictReader((study_dir / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 and all(float(r["duration_s"]) >= 0 for r in rows)
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"} <= {
        p.name for p in (study_dir / "plots").iterdir()}

    # rerun after completion: trains nothing, reports the best
    again = run_app_here(tmp_path, "search.n_trials=3")
    assert "Launching" not in again.stdout and "3/3 finished" in again.stdout
    assert f"best {study.best_value:.6g}" in again.stdout
    assert len(the_study(tmp_path).trials) == 3
    # a larger total resumes the same study to it (n_trials is the total, not "more")
    run_app_here(tmp_path, "search.n_trials=5")
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 5} and [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    # another config never mixes into it
    run_app_here(tmp_path, "search.n_trials=1", "trainer.inner_steps=7")
    assert len(optuna.get_all_study_names(storage_url(tmp_path))) == 2


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    reasons = {0: "diverged: loss is nan at step 2", 2: "objective is nan",
               3: "RuntimeError: toy trial crashed on purpose"}
    done = run_app_here(tmp_path, "search.n_trials=4", "toy.fail_on=[0,2,3]", "toy.failure=[diverge,return_nan,raise]")
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 4, "FAIL": 3}
    failed = {t.number: t.user_attrs["fail_reason"] for t in study.trials if t.state.name == "FAIL"}
    assert failed == reasons
    rows = list(csv.DictReader((tmp_path / SWEEP / study.study_name / "trials.csv").open()))
    assert {int(r["number"]): r["fail_reason"] for r in rows if r["state"] == "FAIL"} == reasons
    assert f"trial 0: FAIL ({reasons[0]})" in done.stdout
    assert "RuntimeError: toy trial crashed on purpose" in done.stdout  # the traceback is logged


def test_user_error_stops_everything_at_once(tmp_path):
    done = run_app_here(tmp_path, "search.n_trials=5", "toy.fail_on=[1]", "toy.failure=user_error", check=False)
    assert done.returncode != 0
    assert "toy.failure=user_error: dataset.root does not exist" in done.stdout
    assert "Traceback" not in done.stdout
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 1, "FAIL": 1}
    assert study.trials[1].user_attrs["fail_kind"] == "user_error"


def test_bad_search_space_fails_before_any_training(tmp_path):
    done = run_app_here(tmp_path, "trainer.weight_decay=interval(1,0)", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stdout
    assert "'trainer.weight_decay: interval(1,0)' is an empty or negative range" in done.stdout
    done = run_app_here(tmp_path, "method.loss_weights.flyp=tag(log,interval(0,10))", check=False)
    assert "method.loss_weights.flyp" in done.stdout and "low bound must be > 0" in done.stdout
    done = run_app_here(tmp_path, "trainer.weight_dekay=interval(0,1)", check=False)
    assert "unknown config key 'trainer.weight_dekay'" in done.stdout
    done = run_app_here(tmp_path, "search.pruner=mediam", "search.eval_every=1", check=False)
    assert "search.pruner 'mediam' is not a pruner" in done.stdout
    # nothing was trained: no storage, no trial directory
    assert not (tmp_path / SWEEP / "optuna.db").exists()
    assert not list(tmp_path.glob("outputs/**/trial_*"))


def test_max_failures_stops_a_search_that_keeps_failing(tmp_path):
    done = run_app_here(tmp_path, "search.n_trials=3", "toy.fail_on=[0,1,2,3,4,5]", "toy.failure=raise",
                   "hydra.sweeper.max_failures=2", check=False)
    assert done.returncode != 0 and "max_failures=2" in done.stdout
    assert states(the_study(tmp_path)) == {"FAIL": 2}


def test_worker_killed_mid_trial_then_rerun_finishes_exactly_n_trials(tmp_path):
    started = tmp_path / "started"
    args = ["search.n_trials=4", "toy.sleep=0.4", f"toy.started_dir={started}", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=3"]
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, *args]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (started / "trial_1.started").exists():
            assert worker.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # in the middle of trial 1 (4 steps of 0.4 s)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 1, "RUNNING": 1}
    lost_params = study.trials[1].params

    done = run_app_here(tmp_path, *args)
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}
    lost = study.trials[1]
    assert lost.state.name == "FAIL" and lost.user_attrs["fail_kind"] == "lost"
    assert lost.user_attrs["fail_reason"].startswith("lost: ")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    # the lost trial's parameters were retried, exactly once; no duplicated trial
    retried = [t for t in complete if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == lost_params
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == 4
    assert "was lost" in done.stdout


def test_pruning_stops_hopeless_trials(tmp_path):
    run_app_here(tmp_path, "search.n_trials=6", "search.eval_every=1",
            "search.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:2}")
    study = the_study(tmp_path)
    s = states(study)
    assert s.get("PRUNED", 0) >= 1 and s.get("COMPLETE", 0) + s.get("PRUNED", 0) == 6  # pruned trials count
    for t in study.trials:
        assert t.intermediate_values  # the inner loop reported
        if t.state.name == "PRUNED":
            assert max(t.intermediate_values) < 3  # stopped before its last report


def test_warm_start_enqueues_the_published_values_once(tmp_path):
    run_app_here(tmp_path, "search.n_trials=2", "search/warm_start=iwildcam")
    study = the_study(tmp_path)
    first = study.trials[0]
    assert first.user_attrs["warm_start"] == "search.warm_start:iwildcam"
    assert first.params["method.loss_weights.dcm"] == 0.622 and first.params["trainer.weight_decay"] == 0.604
    assert first.params["trainer.lr_scale"] == pytest.approx(13.6)
    run_app_here(tmp_path, "search.n_trials=3", "search/warm_start=iwildcam")
    study = the_study(tmp_path)
    assert len(study.trials) == 3 and sum("warm_start" in t.user_attrs for t in study.trials) == 1


def test_two_workers_on_one_sqlite_study(tmp_path):
    args = [*FAST, "search.n_trials=6", "toy.sleep=0.05"]
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *args]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=180)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 6}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6
