"""`hydra.sweeper.threads: auto` counts every trial that shares this machine's cores: the concurrent
trials of this worker (n_jobs with joblib) and the live autoft workers of other studies (the
machine registry: one file per worker process, dead ones ignored). Real processes and real
registry files throughout; each test has its own registry directory.
"""
import json
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
from sweep_helpers import run_app
from test_sweeper import the_study

quiet_optuna()

HOLD = ("import sys, time\nfrom autoft.search.liveness import register_worker\n"
        "print(register_worker(int(sys.argv[1]), sys.argv[2], sys.argv[3]), flush=True)\ntime.sleep(120)\n")


def hold_worker(directory, slots, study="other-study"):
    """A live process registered as a worker running `slots` trials here; returns it once registered."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(slots), study, str(directory)],
                            stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert path.endswith(f"-{proc.pid}.json"), path
    return proc


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_thread_budget_divides_the_cores_among_concurrent_trials():
    assert th.thread_budget(8, 1) == 8 and th.thread_budget(8, 3) == 2 and th.thread_budget(2, 8) == 1
    assert th.thread_budget(4, 0) == 4  # never divides by zero


def test_the_machine_registry_counts_live_workers_and_drops_dead_ones(tmp_path):
    a, b = hold_worker(tmp_path, 2), hold_worker(tmp_path, 1, "third-study")
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # a killed worker's file, a pid now held by another process (other start time), another host's file
    fakes = {f"{host}-{dead.pid}.json": {"host": host, "pid": dead.pid, "slots": 4},
             f"{host}-{os.getpid()}.json": {"host": host, "pid": os.getpid(), "start": "1", "slots": 4},
             "elsewhere-1.json": {"host": "elsewhere", "pid": 1, "slots": 4}}
    for name, entry in fakes.items():
        (tmp_path / name).write_text(json.dumps(entry))
    (tmp_path / "garbage.json").write_text("{not json")
    try:
        assert sorted(e["pid"] for e in lv.live_workers(tmp_path)) == sorted([a.pid, b.pid])
        assert lv.concurrent_trials_here(tmp_path) == 3
        assert not (tmp_path / f"{host}-{dead.pid}.json").exists()  # dead: removed
        assert not (tmp_path / f"{host}-{os.getpid()}.json").exists()  # pid reused: removed
        assert (tmp_path / "elsewhere-1.json").exists()  # not ours to judge
        stop(a)  # killed: no clean-up of its own, its file is ignored from now on
        assert lv.concurrent_trials_here(tmp_path) == 1
    finally:
        stop(a, b)


def test_a_worker_registers_on_start_and_leaves_on_stop(tmp_path):
    directory = tmp_path / "registry"  # created on first use, shared by every user (sticky, writable)
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    me = lv.WorkerRegistry(StudyStorage(study), 0.2, 2, slots=2, directory=directory).start()
    try:
        entry = json.loads(me.machine_file.read_text())
        assert entry["pid"] == os.getpid() and entry["slots"] == 2 and entry["study"] == "s"
        assert directory.stat().st_mode & 0o1777 == 0o1777
        plain = directory / "plain.txt"  # other users' workers read the file: the mode a plain write gives
        plain.write_text("")
        assert me.machine_file.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
        plain.unlink()
        assert me.concurrent_here() == 2
    finally:
        me.stop()
    assert list(directory.glob("*.json")) == []
    remote = lv.WorkerRegistry(StudyStorage(study), 0.2, 2, slots=0, directory=directory).start()
    remote.stop()  # trials on other nodes: not registered here, and no budget
    assert remote.machine_file is None and list(directory.glob("*.json")) == []


def test_auto_counts_this_workers_slots_and_other_studies_workers(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    me = lv.WorkerRegistry(StudyStorage(study), 0.2, 2, slots=2, directory=tmp_path).start()
    other = hold_worker(tmp_path, 3)
    try:
        assert me.concurrent_here() == 2 + 3
        assert me.budget("auto") == th.thread_budget(th.cpu_count(), 5) and me.concurrent == 5
        assert me.budget(3) == 3 and me.budget(None) is None  # an explicit integer stays
        stop(other)
        assert me.concurrent_here() == 2 and me.budget("auto") == th.thread_budget(th.cpu_count(), 2)
    finally:
        stop(other)
        me.stop()


def test_the_study_records_count_when_the_registry_cannot_see_a_worker(tmp_path):
    """A worker of this study whose temp dir differs is still counted through the study."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    store = StudyStorage(study)
    me = lv.WorkerRegistry(store, 0.2, 5, slots=1, directory=tmp_path / "mine").start()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.write_study_record(f"{lv.WORKER_PREFIX}{socket.gethostname()}:{other.pid}", {
            "host": socket.gethostname(), "pid": other.pid, "time": time.time(), "slots": 2, "stopped": False},
            system=True)
        assert me.concurrent_here() == 1 + 2
    finally:
        stop(other)
        me.stop()


def test_joblib_trials_each_run_with_their_share(tmp_path, monkeypatch):
    """n_jobs=2 with joblib, plus a live worker of another study: 3 trials share the cores; each
    joblib worker process applies its own budget (the task records what it saw)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    registry = tmp_path / "registry"
    monkeypatch.setenv(lv.WORKERS_DIR_ENV, str(registry))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    other = hold_worker(registry, 1)
    try:
        done = run_app(tmp_path, "hydra.sweeper.n_trials=4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                       "hydra.sweeper.n_jobs=2", "hydra.sweeper.threads=auto", "toy.sleep=0.05", timeout=300)
    finally:
        stop(other)
    expected = th.thread_budget(th.cpu_count(), 3)
    assert f"threads per trial: {expected} ({th.cpu_count()} cores, 3 concurrent trial(s)" in done.stdout
    trials = the_study(tmp_path).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert t.user_attrs["threads"] == expected and t.user_attrs["omp_threads"] == str(expected)
    assert lv.live_workers(registry) == []  # the sweeper unregistered; the killed worker's file is ignored
