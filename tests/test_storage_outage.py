"""The study's storage goes away and comes back (issue 27, item 1): outages are ridden out.

What counts as "unreachable" is checked on real driver errors; the retry, its two log lines, the
window and its one message on a real SQLite file held locked and on a PostgreSQL port nobody
listens on. The end-to-end checks start a PostgreSQL server of their own (initdb into a temporary
folder, a free port; tests/pg_server.py), stop it under two running workers and start it again:
within the window (two `train.py -m search=autoft` workers) the search finishes with exact counts
and no failed trial; past it (two toy-app workers: the same sweeper, faster to start) each worker
stops with one message and a rerun finishes the study. They skip when PostgreSQL is not installed.
"""
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

import optuna
import pytest

from autoft.errors import UserError
from autoft.search import liveness as lv
from autoft.search import outage as og
from autoft.search import storage as st
from autoft.search.study import FAIL_KIND, RetryLost
from conftest import offline_env
from pg_server import PgServer, free_port
from sweep_helpers import APP, FAST, REPO, TINY, run_app

st.quiet_optuna()
LOGGER = "hydra_plugins.autoft_optuna_sweeper.sweeper"


def fragile_sqlite(url: str, window: float, **heartbeat):
    """A SQLite study storage that gives up on a lock after 50 ms (ours waits 120 s), wrapped as
    open_storage wraps: a file held locked is then an outage we can start and end at will."""
    label = f"{url} (test)"
    return st.resilient_storage(
        lambda: optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}}, **heartbeat),
        og.Outage(label, window))


def hold_lock(path, seconds: float) -> threading.Thread:
    """Hold an exclusive lock on a SQLite file for `seconds` from another connection (a writer
    that does not let go); returns once the lock is held."""
    held = threading.Event()

    def run():
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert held.wait(10)
    return t


def outage_lines(text: str) -> tuple[int, int]:
    return text.count(" unreachable since "), text.count(" reachable again after ")


# ----------------------------------------------------------------------------- what counts as an outage

def test_connection_errors_are_unreachable_and_refused_queries_are_not(tmp_path):
    import sqlalchemy

    pytest.importorskip("psycopg2")
    engine = sqlalchemy.create_engine(f"postgresql+psycopg2://me@127.0.0.1:{free_port()}/db")
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        engine.connect()
    assert og.unreachable(refused.value) and "Connection refused" in og.reason(refused.value)

    url = f"sqlite:///{tmp_path}/s.db"
    st.open_storage(url)  # the tables
    raw = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}})
    study_id = raw.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    locker = hold_lock(tmp_path / "s.db", 1.0)
    with pytest.raises(optuna.exceptions.StorageInternalError) as locked:  # "...invalid data in the commit..."
        raw.set_study_user_attr(study_id, "k", 1)
    locker.join()
    assert og.unreachable(locked.value) and og.reason(locked.value) == "database is locked"

    sqlite_engine = sqlalchemy.create_engine(url)
    with pytest.raises(sqlalchemy.exc.OperationalError) as missing, sqlite_engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not og.unreachable(missing.value)  # the schema is wrong: waiting will not fix it
    assert not og.unreachable(ValueError("a value the database refused"))


def test_the_window_is_five_minutes_by_default_and_must_be_positive(tmp_path):
    from hydra_plugins.autoft_optuna_sweeper.config import AutoFTOptunaSweeperConf

    assert AutoFTOptunaSweeperConf.storage_outage_window == og.DEFAULT_WINDOW == 300
    done = run_app(tmp_path, "search.n_trials=1", "hydra.sweeper.storage_outage_window=0", check=False)
    assert done.returncode == 1
    assert "hydra.sweeper.storage_outage_window=0.0: must be a number of seconds > 0" in done.stderr


# ----------------------------------------------------------------------------- the retry, in one process

def test_a_locked_sqlite_file_is_waited_out_with_one_line_each_way(tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/s.db"
    st.open_storage(url)
    study = optuna.create_study(study_name="s", storage=fragile_sqlite(url, window=30), direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    locker = hold_lock(tmp_path / "s.db", 1.5)
    t0 = time.time()
    with caplog.at_level("INFO", logger=LOGGER):
        study.tell(trial, 0.5)  # waits for the lock instead of failing the trial
    locker.join()
    assert time.time() - t0 >= 1.0
    assert study.trials[0].state.name == "COMPLETE" and study.trials[0].value == 0.5
    assert outage_lines(caplog.text) == (1, 1)
    assert "(database is locked); retrying for up to 30 s" in caplog.text


def test_past_the_window_one_error_names_the_storage_without_its_password(caplog):
    pytest.importorskip("psycopg2")
    url = f"postgresql://me:secret@127.0.0.1:{free_port()}/db"
    storage = st.cached_storage(url, outage_window=1.5)  # opens at its first call, inside the retry
    t0 = time.time()
    with caplog.at_level("INFO", logger=LOGGER), pytest.raises(og.StorageUnreachable) as stop:
        storage.get_all_studies()
    assert 1.5 <= time.time() - t0 < 10
    msg = str(stop.value)
    assert isinstance(stop.value, UserError)  # the sweeper prints it alone and exits 1
    assert "me:***@127.0.0.1" in msg and "secret" not in msg and "secret" not in caplog.text
    assert "storage_outage_window=1.5 s" in msg and "Connection refused" in msg
    assert "rerun the same command to resume" in msg
    assert outage_lines(caplog.text) == (1, 0)


def test_only_an_answer_from_the_database_ends_an_outage(tmp_path, caplog):
    """The engine and heartbeat getters answer from the open storage without a query: during an
    outage they must not log "reachable again" (a worker once did, then stopped at once)."""
    storage = st.open_storage(f"sqlite:///{tmp_path}/s.db", outage_window=30)
    storage.get_all_studies()  # opened
    with caplog.at_level("INFO", logger=LOGGER):
        storage.outage.failed(RuntimeError("server closed the connection unexpectedly"))
        assert storage.engine is not None and storage.get_heartbeat_interval() is None
        assert storage.outage.down and outage_lines(caplog.text) == (1, 0)
        storage.get_all_studies()  # a query that the database answered
    assert not storage.outage.down and outage_lines(caplog.text) == (1, 1)


def test_beats_never_wait_on_an_outage():
    pytest.importorskip("psycopg2")
    storage = st.cached_storage(f"postgresql://me@127.0.0.1:{free_port()}/db", outage_window=300)
    t0 = time.time()
    with og.fail_fast(), pytest.raises(Exception) as err:
        storage.get_all_studies()
    assert og.unreachable(err.value) and time.time() - t0 < 5 and storage.outage.down
    beats = []

    def beat():
        beats.append(time.time())
        storage.get_all_studies()  # what a trial's heartbeat does: reach the storage

    hb = lv.Heartbeat(beat, 0.1, name="test-heartbeat").start(beat_now=False)
    time.sleep(1.0)
    t0 = time.time()
    hb.stop()
    assert time.time() - t0 < 5 and not hb.running
    assert len(beats) >= 2  # the failed beats were tried again, none blocked for the window


def test_no_trial_is_judged_stale_until_a_grace_period_after_the_storage_returns(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    st.open_storage(url)
    storage = fragile_sqlite(url, window=30, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    store = st.StudyStorage(study)
    # a worker on another machine: nothing here can tell whether it lives, only its heartbeat
    store.set_trial_user_attrs(trial, {"worker": "elsewhere:1"})
    store.record_heartbeat(trial)
    locker = hold_lock(tmp_path / "s.db", 3.0)  # the storage goes away for longer than the grace period
    study.set_user_attr("k", 1)  # this worker's call waits it out
    locker.join()
    assert store.stale_trial_ids() == [store.trial_id(trial)]  # silent for longer than the grace period...
    assert lv.fail_stale(study, grace_period=2, retry=RetryLost(1)) == 0  # ...but the storage just came back
    assert study.trials[0].state.name == "RUNNING"
    time.sleep(2.2)  # a full grace period later its heartbeat is still silent: its worker is gone
    assert lv.fail_stale(study, grace_period=2, retry=RetryLost(1)) == 1
    assert study.trials[0].user_attrs[FAIL_KIND] == "lost"


# ----------------------------------------------------------------------------- SQLite under contention

WRITER = """
import sys
import optuna
from autoft.search.storage import open_storage, quiet_optuna
quiet_optuna()
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1]))
for i in range(int(sys.argv[2])):
    t = study.ask()
    t.suggest_float("x", 0, 1)
    for k in range(3):
        t.set_user_attr(f"a{k}", i)
    study.tell(t, float(i))
"""


def test_many_sqlite_writers_at_once_never_see_database_is_locked(tmp_path):
    """Our SQLite connections wait up to 120 s for the file's lock, and the driver begins a
    transaction at its first write (no read lock to upgrade, SQLite's one immediate 'database is
    locked'); so 6 processes writing flat out share one file without a single lock error."""
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=st.open_storage(url), direction="maximize")
    writers, per = 6, 6
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(per)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=offline_env()) for _ in range(writers)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert not any("locked" in o or "unreachable" in o for o in outs), outs
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == writers * per and all(t.state.name == "COMPLETE" for t in trials)


# ----------------------------------------------------------------------------- a real server goes away

@pytest.fixture(scope="module")
def pg():
    pytest.importorskip("psycopg2")
    server = PgServer.find()
    if server is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin)")
    try:
        server.init().start()
        yield server
    finally:
        server.destroy()


def _train_py(url: str, n: int, *more: str) -> list[str]:
    """A two-worker-sized train.py search: trials of a few seconds (30 tiny steps, an OOD-val report
    every 10, so reports meet the outage), and a grace period no loaded CPU mistakes for overload."""
    tiny = [o for o in TINY if not o.startswith("trainer.inner_steps=")]
    return [sys.executable, str(REPO / "train.py"), "-m", "search=autoft", *tiny, "trainer.inner_steps=30",
            "search.eval_every=10", "hydra.sweeper.plots=false", "hydra.sweeper.poll_interval=0.2",
            "hydra.sweeper.threads=1", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=10",
            f"hydra.sweeper.storage={url}", f"search.n_trials={n}", *more]


def _toy(url: str, n: int, *more: str) -> list[str]:
    """The toy app's search (tests/apps/toy_app.py: the same sweeper and reporter, trials of 1 s that
    report every step), with a short grace period: a rerun takes a stopped worker's trial back soon."""
    return [sys.executable, str(APP), "-m", "search=autoft", *FAST, "toy.steps=5", "toy.sleep=0.2",
            "search.eval_every=1", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4",
            f"hydra.sweeper.storage={url}", f"search.n_trials={n}", *more]


def _count(server: PgServer, db: str, state: str) -> int:
    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname=db, connect_timeout=2)
    except psycopg2.OperationalError:
        return 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM trials WHERE state = %s", (state,))
            return int(cur.fetchone()[0])
    except psycopg2.Error:
        return 0  # no tables yet
    finally:
        conn.close()


def _workers(cmd: list[str], tmp_path, names=("a", "b")) -> list[subprocess.Popen]:
    procs = []
    for name in names:
        (tmp_path / name).mkdir()
        with open(tmp_path / f"{name}.log", "w") as log:  # a file, not a pipe: nothing blocks a worker on its output
            procs.append(subprocess.Popen(cmd, cwd=tmp_path / name, stdout=log, stderr=subprocess.STDOUT, env=offline_env()))
        procs[-1].log = tmp_path / f"{name}.log"
    return procs


def _outputs(procs) -> list[str]:
    """What each worker printed, once it has exited."""
    for p in procs:
        p.wait(timeout=300)
    return [p.log.read_text(errors="replace") for p in procs]


def _outage(server: PgServer, db: str, procs, after: int, seconds: float, until_exit: bool = False
            ) -> tuple[datetime, datetime]:
    """Stop the server once `after` trials are complete and one is running, start it `seconds` later,
    or with `until_exit` once every worker has exited (at most `seconds`: they must stop by themselves);
    (stopped, started)."""
    deadline = time.time() + 300
    while _count(server, db, "COMPLETE") < after or _count(server, db, "RUNNING") < 1:
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the search did not get going"
        time.sleep(0.2)
    stopped = datetime.now()
    server.stop("fast")  # what a restart or a failover does: every connection is cut
    if until_exit:
        back = time.time() + seconds
        while any(p.poll() is None for p in procs):
            assert time.time() < back, f"the workers still ran {seconds} s into the outage"
            time.sleep(0.2)
    else:
        time.sleep(seconds)
    server.start()
    return stopped, datetime.now()


def _trials(url: str):
    url = st.normalize_url(url)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url).trials


@pytest.mark.postgres
def test_a_storage_outage_shorter_than_the_window_is_ridden_out(tmp_path, pg):
    n = 4
    url = pg.create_database("ridden_out")
    procs = _workers(_train_py(url, n, "hydra.sweeper.storage_outage_window=120"), tmp_path)
    stopped, started = _outage(pg, "ridden_out", procs, after=1, seconds=5)  # 5 beats of each worker
    outs = _outputs(procs)
    assert [p.returncode for p in procs] == [0, 0], outs

    trials = _trials(url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * n  # exact: none failed, lost, surplus or retried
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # trials that were training when the server stopped finished, and were recorded once it was back
    through = [t for t in trials if t.datetime_start < stopped and t.datetime_complete > started]
    assert through, [(t.number, t.datetime_start, t.datetime_complete, stopped, started) for t in trials]
    for out in outs:
        assert outage_lines(out) == (1, 1), out
        assert "retrying for up to 120 s" in out and "Traceback" not in out, out
        assert "overloaded" not in out and "declared lost" not in out and "re-queued" not in out, out
        assert f"{n}/{n} finished" in out


@pytest.mark.postgres
def test_an_outage_longer_than_the_window_stops_each_worker_with_one_message_and_a_rerun_finishes(tmp_path, pg):
    n = 6
    url = pg.create_database("past_window")
    cmd = _toy(url, n, "hydra.sweeper.storage_outage_window=3")
    procs = _workers(cmd, tmp_path)
    _outage(pg, "past_window", procs, after=2, seconds=60, until_exit=True)  # down until both stopped
    outs = _outputs(procs)
    assert all(p.returncode == 1 for p in procs), outs  # ended while the server was still down
    for out in outs:
        assert out.count("has been unreachable for") == 1, out
        assert "storage_outage_window=3 s" in out and "rerun the same command to resume" in out, out
        assert outage_lines(out) == (1, 0) and "Traceback" not in out, out

    rerun = subprocess.run(cmd, cwd=tmp_path / "a", capture_output=True, text=True, timeout=300, env=offline_env())
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = _trials(url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n and len({tuple(sorted(t.params.items())) for t in complete}) == n
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # the trials the stopped workers left behind were taken back and retried, not failed for their own fault
    assert all(t.user_attrs.get(FAIL_KIND) in ("lost", "interrupted") for t in trials if t.state.name == "FAIL")
    assert f"{n}/{n} finished" in rerun.stdout + rerun.stderr
