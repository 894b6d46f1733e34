"""Lost trials: heartbeats, stale detection and retries, on real Optuna storages (in-process)."""
import threading
import time

import optuna
import pytest

from autoft.search import reevaluation as rv
from autoft.search.liveness import Heartbeat, fail_stale, trial_heartbeat
from autoft.search.storage import ALIVE_ATTR, StudyStorage, open_storage, quiet_optuna
from autoft.search.study import RETRY_OF, RetryLost, count, fail_reason, requeue

quiet_optuna()


def make(url, grace=2):
    retry = RetryLost(max_retries=1)
    storage = open_storage(url, heartbeat_interval=1, grace_period=grace, stale_callback=retry)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    return study, retry


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_silent_trial_is_failed_and_its_parameters_retried_once(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    study, retry = make(url)
    alive, dead = study.ask(), study.ask()
    for t in (alive, dead):
        t.suggest_float("x", 0, 1)
    store = StudyStorage(study)
    hb_alive = trial_heartbeat(store, alive, 0.5)
    hb_dead = trial_heartbeat(store, dead, 0.5)
    hb_dead.stop()  # its worker dies: no more heartbeats
    try:
        assert fail_stale(study, grace_period=2, retry=retry) == 0  # within the grace period
        time.sleep(3.5)
        with store.claim_lock(url):
            assert fail_stale(study, grace_period=2, retry=retry) == 1
            assert fail_stale(study, grace_period=2, retry=retry) == 0  # only once
    finally:
        hb_alive.stop()
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "WAITING"]
    assert "lost" in fail_reason(trials[1])
    retried = study.ask()  # the queued parameters come first
    assert retried.number == 2 and retried.suggest_float("x", 0, 1) == dead.params["x"]
    assert store.trial(retried).user_attrs[RETRY_OF] == dead.number
    # a retry is retried at most max_retries times in all
    study.tell(retried, state=optuna.trial.TrialState.FAIL)
    assert not requeue(study, store.trial(retried), max_retries=1, why="test")


def test_a_worker_killed_before_its_first_heartbeat_is_detected(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study, retry = make(url, grace=1)
    orphan = study.ask()  # RUNNING, but no heartbeat ever started
    orphan.suggest_float("x", 0, 1)
    assert not StudyStorage(study).trial(orphan).system_attrs.get(ALIVE_ATTR)
    time.sleep(2.5)  # twice the grace period, on the trial's own start time
    assert fail_stale(study, grace_period=1, retry=retry) == 1
    assert count(study.get_trials()).waiting == 1


def test_one_heartbeat_thread_beats_until_stopped_and_never_after():
    beats, third = [], threading.Event()

    def beat():
        beats.append(time.time())
        if len(beats) >= 3:
            third.set()

    hb = Heartbeat(beat, 0.1, name="test-heartbeat").start()
    assert len(beats) == 1  # start() beats once in the caller's thread
    assert third.wait(5)
    hb.stop()  # joined: its thread is gone, so no beat can land after a final write
    assert not hb.running
    n = len(beats)
    hb.stop()  # stopping twice is harmless
    assert len(beats) == n and hb.last_beat >= beats[-1]


def test_a_reevaluation_claim_beats_until_another_worker_takes_it_over(tmp_path):
    study, _ = make(f"sqlite:///{tmp_path}/s.db")
    t = study.ask()
    t.suggest_float("x", 0, 1)
    study.tell(t, 0.5)
    plan = rv.Plan(top_k=1, n_seeds=1)
    claim = rv.claim_record(study.trials[0], plan, None)
    rv.write_record(study, 0, {**claim, "heartbeat": 0.0})
    assert rv.refresh_claim(study, 0, claim["token"])  # ours: its heartbeat moves
    assert rv.records(study)[0]["heartbeat"] > 0.0
    taken = rv.claim_record(study.trials[0], plan, None)  # declared lost, taken over
    rv.write_record(study, 0, taken)
    hb = Heartbeat(lambda: rv.refresh_claim(study, 0, claim["token"]), 0.1).start(beat_now=False)
    hb.join(5)  # the first beat sees another token and ends the thread by itself
    assert not hb.running
    assert rv.records(study)[0] == taken  # the new owner's record is left alone
