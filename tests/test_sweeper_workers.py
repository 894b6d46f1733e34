"""Several workers on one machine: per-worker thread budgets, heartbeats that survive an
overloaded CPU, and progress lines inside long trials (issue 12, item 1).

The PostgreSQL test starts four toy workers against one study (127.0.0.1:5432, trust auth; a fresh
database per test, dropped afterwards); the others run in-process or on SQLite.
"""
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest

from autoft.search import liveness as lv
from autoft.search import threads as th
from autoft.search.storage import StudyStorage, open_storage, quiet_optuna
from autoft.search.liveness import fail_stale
from autoft.search.study import RetryLost
from sweep_helpers import APP, FAST, run_app
from test_sweeper import the_study
from test_sweeper_postgres import pg_url  # noqa: F401 (fixture)

quiet_optuna()


def test_parse_threads():
    assert th.parse_threads("auto") == "auto" and th.parse_threads(3) == 3 and th.parse_threads("2") == 2
    assert th.parse_threads(None) is None and th.parse_threads("null") is None
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError):
            th.parse_threads(bad)


def test_apply_threads_sets_torch_and_the_omp_variables(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    try:
        assert th.apply_threads(1) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def _study(tmp_path, grace=2):
    url = f"sqlite:///{tmp_path}/s.db"
    retry = RetryLost(max_retries=1)
    storage = open_storage(url, heartbeat_interval=1, grace_period=grace, stale_callback=retry)
    return optuna.create_study(study_name="s", storage=storage, direction="maximize"), retry


def test_a_starved_heartbeat_of_a_live_local_worker_is_slow_not_lost(tmp_path):
    study, retry = _study(tmp_path, grace=1)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store = StudyStorage(study)
        store.set_trial_user_attrs(trial, {"worker": f"{socket.gethostname()}:{worker.pid}"})
        hb = lv.trial_heartbeat(store, trial, 0.5)
        hb.stop()  # its heartbeat thread is starved: no beat for longer than the grace period
        time.sleep(2.5)
        assert store.stale_trial_ids() == [store.trial_id(trial)]  # stale by the database's clock...
        assert fail_stale(study, grace_period=1, retry=retry) == 0  # ...but its process lives: not lost
        assert study.trials[0].state.name == "RUNNING"
        worker.kill()
        worker.wait()
        deadline, failed = time.time() + 15, 0
        while not failed and time.time() < deadline:  # now it is gone
            failed = fail_stale(study, grace_period=1, retry=retry)
            time.sleep(0.2)
        assert failed == 1
    finally:
        if worker.poll() is None:
            worker.kill()
    t = study.trials[0]
    assert t.state.name == "FAIL" and "lost" in t.user_attrs["fail_reason"]


def test_long_trials_log_their_progress_and_record_their_threads(tmp_path):
    done = run_app(tmp_path, "search.n_trials=1", "toy.sleep=0.7", "toy.steps=4", "hydra.sweeper.threads=1",
                   "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5",
                   "hydra.sweeper.progress_interval=1")
    assert "trial 0 running for" in done.stdout and "last heartbeat" in done.stdout
    assert "/4 reported" in done.stdout  # the toy reports its step through TrialReporter.progress
    t = the_study(tmp_path).trials[0]
    assert t.user_attrs["threads"] == 1 and t.user_attrs["omp_threads"] == "1"
    assert "threads per trial: 1" in done.stdout


@pytest.mark.postgres
def test_four_workers_with_auto_threads_share_one_postgres_study(tmp_path, pg_url, monkeypatch):  # noqa: F811
    n, k = 12, 4
    monkeypatch.setenv(lv.WORKERS_DIR_ENV, str(tmp_path / "registry"))  # not other test runs' workers
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, f"hydra.sweeper.storage={pg_url}",
           f"search.n_trials={n}", "toy.sleep=0.15", "hydra.sweeper.threads=auto",
           "hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=10"]
    dirs = [tmp_path / f"w{i}" for i in range(k)]
    for d in dirs:
        d.mkdir()
    workers = [subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for d in dirs]
    try:
        outs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), outs

    from autoft.search.storage import normalize_url

    url = normalize_url(pg_url)
    names = optuna.get_all_study_names(url)
    assert len(names) == 1
    study = optuna.load_study(study_name=names[0], storage=url)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * n  # no lost trial, no surplus
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # no duplicate
    cores = th.cpu_count()
    for t in trials:  # every worker recorded the budget it used, and its process ran with it
        assert 1 <= t.user_attrs["threads"] <= cores
        assert t.user_attrs["omp_threads"] == str(t.user_attrs["threads"])
    # once the workers saw each other, they split the cores
    assert min(t.user_attrs["threads"] for t in trials) == max(1, cores // k)
    assert list((tmp_path / "registry").glob("*.json")) == []  # every worker left the machine registry
    for out in outs:
        assert "was lost" not in out and f"{n}/{n} finished" in out
