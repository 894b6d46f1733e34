"""`hydra.sweeper.threads: auto` counts every trial that shares this machine's cores: the concurrent
trials of this worker (n_jobs with joblib) and this user's live autoft workers of other studies
(the machine registry: one file per worker process in a private directory, dead ones ignored).
Real processes and real registry files throughout; each test has its own registry directory.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autoft.search import liveness as lv
from autoft.search import threads as th
from autoft.search.storage import quiet_optuna
from sweep_helpers import APP, FAST, run_app
from test_sweeper import the_study

quiet_optuna()

HOLD = ("import sys, time\nfrom autoft.search.liveness import register_worker\n"
        "print(register_worker(int(sys.argv[1]), sys.argv[2]), flush=True)\ntime.sleep(120)\n")


def hold_worker(directory, slots):
    """A live process (of another study) registered as a worker running `slots` trials here;
    returns it once registered."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(slots), str(directory)],
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


def concurrent(directory):
    return sum(e["slots"] for e in lv.live_workers(directory))


def test_the_machine_registry_counts_live_workers_and_drops_dead_ones(tmp_path):
    a, b = hold_worker(tmp_path, 2), hold_worker(tmp_path, 1)
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # a killed worker's file, a pid now held by another process (other start time), another host's file
    fakes = {f"{host}-{dead.pid}.json": {"host": host, "pid": dead.pid, "slots": 4},
             f"{host}-{os.getpid()}.json": {"host": host, "pid": os.getpid(), "start": "1", "slots": 4},
             "elsewhere-1.json": {"host": "elsewhere", "pid": 1, "slots": 4},
             "not-an-entry.json": {"host": host, "pid": os.getpid(), "slots": "many"}}
    for name, entry in fakes.items():
        (tmp_path / name).write_text(json.dumps(entry))
    (tmp_path / "garbage.json").write_text("{not json")
    try:
        assert sorted(e["pid"] for e in lv.live_workers(tmp_path)) == sorted([a.pid, b.pid])
        assert concurrent(tmp_path) == 3
        assert not (tmp_path / f"{host}-{dead.pid}.json").exists()  # dead: removed
        assert not (tmp_path / f"{host}-{os.getpid()}.json").exists()  # pid reused: removed
        assert (tmp_path / "elsewhere-1.json").exists()  # not ours to judge
        stop(a)  # killed: no clean-up of its own, its file is ignored from now on
        assert concurrent(tmp_path) == 1
    finally:
        stop(a, b)


def test_a_worker_registers_on_start_and_leaves_on_stop(tmp_path, monkeypatch):
    directory = tmp_path / "registry"  # created on first use, private to this user
    me = lv.WorkerRegistry(slots=2, directory=directory).start()
    try:
        entry = json.loads(me.machine_file.read_text())
        assert entry["pid"] == os.getpid() and entry["slots"] == 2
        assert directory.stat().st_mode & 0o777 == 0o700
        assert me.concurrent_here() == 2
    finally:
        me.stop()
    assert list(directory.glob("*.json")) == []
    remote = lv.WorkerRegistry(slots=0, directory=directory).start()
    remote.stop()  # trials on other nodes: not registered here, and no budget
    assert remote.machine_file is None and list(directory.glob("*.json")) == []
    monkeypatch.delenv(lv.WORKERS_DIR_ENV, raising=False)  # the default: one directory per user
    assert lv.workers_dir() == Path(tempfile.gettempdir()) / f"autoft-workers-{os.getuid()}"


def test_a_directory_others_can_write_is_never_used(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    # anyone could plant an entry there (here one naming a live process) or remove ours
    (shared / "planted.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "slots": 7}))
    me = lv.WorkerRegistry(slots=1, directory=shared).start()
    assert me.machine_file is None and [p.name for p in shared.iterdir()] == ["planted.json"]
    assert "not private to this user" in caplog.text
    assert me.concurrent_here() == 1 and me.budget("auto") == th.cpu_count()  # its own trial only
    me.stop()


def test_auto_counts_this_workers_slots_and_other_studies_workers(tmp_path):
    me = lv.WorkerRegistry(slots=2, directory=tmp_path).start()
    assert me.concurrent_here() == 2 and me.budget("auto") == th.thread_budget(th.cpu_count(), 2)
    other = hold_worker(tmp_path, 3)
    try:
        assert me.concurrent_here() == 2 + 3
        assert me.budget("auto") == th.thread_budget(th.cpu_count(), 5) and me.concurrent == 5
        assert me.budget(3) == 3 and me.budget(None) is None  # an explicit integer stays
        stop(other)  # killed: no clean-up of its own, it stops counting at once
        assert me.concurrent_here() == 2 and me.budget("auto") == th.thread_budget(th.cpu_count(), 2)
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


def test_eight_independent_workers_share_two_cores_without_oversubscription(tmp_path, monkeypatch):
    """Eight workers of eight studies (each its own SQLite file), started side by side with no thread
    setting in their environment: left alone, torch would give each all the cores (8 x cores busy
    threads). With threads: auto they find each other in the machine registry: a trial that starts
    while all eight are live runs on cores // 8 threads (at least 1). Each trial waits for the test's
    go, so the second trials all start while every worker is live; the first worker's trials import
    torch and record the count torch runs with (one torch import, not eight: the suite's time)."""
    k, cores = 8, th.cpu_count()
    registry, go = tmp_path / "registry", tmp_path / "go"
    monkeypatch.setenv(lv.WORKERS_DIR_ENV, str(registry))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, "search.n_trials=2", "toy.steps=1",
           "hydra.sweeper.threads=auto", f"toy.barrier={go}", "toy.started_dir=started"]
    dirs = [tmp_path / f"w{i}" for i in range(k)]
    workers = []

    def wait_for(ready, what):
        deadline = time.time() + 240
        while not ready():
            assert time.time() < deadline and all(w.poll() is None for w in workers), what
            time.sleep(0.1)

    try:
        for d in dirs:
            d.mkdir()
            workers.append(subprocess.Popen(cmd + [f"toy.torch={d == dirs[0]}"], cwd=d, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        wait_for(lambda: len(lv.live_workers(registry)) == k, "the workers did not all register")
        Path(f"{go}-0").touch()
        wait_for(lambda: all((d / "started" / "trial_1.started").exists() for d in dirs), "no second trials")
        Path(f"{go}-1").touch()  # no worker could end before this: each second trial's budget saw all eight
        outs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        stop(*workers)
    assert [w.returncode for w in workers] == [0] * k, outs
    share = th.thread_budget(cores, k)
    for d in dirs:
        trials = the_study(d).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 2
        first, second = trials
        assert 1 <= first.user_attrs["threads"] <= cores  # set as the worker started: as many as had registered
        assert second.user_attrs["threads"] == share and second.user_attrs["omp_threads"] == str(share)
        if d == dirs[0]:  # torch runs with the budget, not its default
            assert first.user_attrs["torch_threads"] == first.user_attrs["threads"]
            assert second.user_attrs["torch_threads"] == share
    assert lv.live_workers(registry) == []  # every worker left the registry
