"""Liveness: one heartbeat thread, and what is judged from it.

- `Heartbeat` calls a `beat()` every interval from a daemon thread until `stop()` (or until the
  beat returns False). Two things beat through it: a RUNNING trial (`trial_heartbeat`: Optuna's
  RDB heartbeat, or an `autoft:heartbeat` attribute on journal storages) and a top-k re-evaluation's
  claim (autoft.search.reevaluation.refresh_claim).
- Stale trials (`fail_stale`): RUNNING, silent for the grace period, and not the trial of a process
  alive on this machine: marked FAIL and retried. A trial also gets `autoft:alive` once its
  heartbeat runs, so a worker killed between asking for a trial and its first beat is found too
  (`datetime_start` older than twice the grace period).
- Storage outages silence every heartbeat at once, live or not. Beats never wait on an outage (they
  run fail-fast and are tried again every couple of seconds until one lands, so every live trial beats
  again moments after the storage returns), and a worker that saw the storage come back judges no
  trial or re-evaluation stale until one full grace period after that moment (`grace_after_outage`).
  A late beat is logged with its cause: a starved thread (the machine is overloaded) or a slow
  storage; while the storage is unreachable, the outage's own line has said so.
- The machine registry (`WorkerRegistry`) counts the trials that share this machine's cores, for
  the thread budget; autoft.search.threads says how. A file whose process is gone (or whose pid now
  names another process: its start time differs) is ignored and removed: the pid says who lives.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from autoft.io import atomic_write_text
from autoft.search import threads
from autoft.search.outage import fail_fast
from autoft.search.storage import ALIVE_ATTR, HEARTBEAT_ATTR, PROGRESS_ATTR, StudyStorage
from autoft.search.study import FAIL_KIND, FAIL_REASON

log = logging.getLogger(__name__)

WORKERS_DIR_ENV = "AUTOFT_WORKERS_DIR"


RETRY_BEAT = 2.0  # seconds between tries of a beat that failed (a storage back from an outage hears it soon)


class Heartbeat:
    """Calls `beat()` every `interval` s from a daemon thread until `stop()`, or until a beat returns
    False (the thing it keeps alive was taken over). `start()` beats once in the caller's thread
    first (an error there is the caller's). Later beats try once (autoft.search.outage.fail_fast): a
    failed one (an outage, a hiccup) is tried again after RETRY_BEAT s, so the thread never blocks on
    the storage and stop() never waits for it. `after_beat(heartbeat, late)` runs after each threaded
    beat; `late` is how many seconds the thread woke after it was due (starved of CPU: an overloaded
    machine); `beat_took` is how long the beat itself took (a slow storage), `failed` whether it failed."""

    def __init__(self, beat: Callable[[], Any], interval: float, *, name: str = "autoft-heartbeat",
                 after_beat: Optional[Callable[["Heartbeat", float], None]] = None):
        self.beat, self.interval, self.name = beat, max(float(interval), 0.1), name
        self.after_beat = after_beat
        self.started = time.time()
        self.last_beat: Optional[float] = None
        self.beat_took, self.failed = 0.0, False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, beat_now: bool = True) -> "Heartbeat":
        if beat_now:
            self.beat()
            self.last_beat = time.time()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.interval
        while True:
            asleep = time.time()
            if self._stop.wait(wait):
                return
            now = time.time()
            late = now - asleep - wait
            try:
                with fail_fast():
                    if self.beat() is False:
                        return
                self.last_beat = time.time()
                wait, self.failed = self.interval, False
            except Exception as err:  # noqa: BLE001 (an outage, a hiccup, or the trial just finished)
                log.debug("%s: beat failed: %s", self.name, err)
                wait, self.failed = min(self.interval, RETRY_BEAT), True
            self.beat_took = time.time() - now
            if self.after_beat is not None:
                self.after_beat(self, late)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the thread to end by itself (a beat returned False)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """Stop beating; joined, so no beat lands after this returns (it would undo a final write)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


# ----------------------------------------------------------------------------- trials

def trial_heartbeat(store: StudyStorage, trial, interval: float, *, label: str = "",
                    progress_interval: float = 0.0, grace_period: Optional[float] = None) -> Heartbeat:
    """A started Heartbeat that keeps a RUNNING trial alive. It also watches itself: a beat much
    later than its interval means the machine is overloaded (logged), and every `progress_interval`
    seconds it logs how long the trial has run, its last heartbeat and the step the task last
    reported (`TrialReporter.progress`), so a slow trial and a stuck one can be told apart."""
    trial_id = store.trial_id(trial)
    label = label or f"trial id {trial_id}"
    last_log = [time.time()]

    def watch(hb: Heartbeat, late: float) -> None:
        if grace_period:
            warn_at = 0.5 * (grace_period - hb.interval)
            if late > warn_at:
                log.warning("%s: heartbeat %.0fs late, its thread starved of CPU (the machine is overloaded; lower "
                            "hydra.sweeper.threads or run fewer workers); other workers declare it lost %ss after "
                            "its last beat", label, late, grace_period)
            elif not hb.failed and hb.beat_took > warn_at:  # a failed beat: the outage's own line says why
                log.warning("%s: the study storage took %.0fs to record a heartbeat (slow to answer); other workers "
                            "declare it lost %ss after its last beat", label, hb.beat_took, grace_period)
        if progress_interval and time.time() - last_log[0] >= progress_interval:
            last_log[0] = time.time()
            log_progress(store, trial_id, hb, label)

    hb = Heartbeat(lambda: store.record_heartbeat(trial_id), interval, name=f"autoft-heartbeat-{trial_id}",
                   after_beat=watch if (grace_period or progress_interval) else None).start()
    store.set_trial_system_attr(trial_id, ALIVE_ATTR, True)
    return hb


def log_progress(store: StudyStorage, trial_id: int, hb: Heartbeat, label: str) -> None:
    now, what = time.time(), ""
    try:
        with fail_fast():  # a log line never waits on the storage
            p = store.trial_system_attrs(trial_id).get(PROGRESS_ATTR)
        if isinstance(p, dict) and p.get("step") is not None:
            total = f"/{p['total']}" if p.get("total") else ""
            what = f", step {p['step']}{total} reported {now - float(p.get('time', now)):.0f}s ago"
        else:
            what = ", no step reported yet"
    except Exception:  # noqa: BLE001 (a log line only)
        pass
    beat = f"{now - hb.last_beat:.0f}s ago" if hb.last_beat else "never"
    log.info("%s running for %.0fs, last heartbeat %s%s", label, now - hb.started, beat, what)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def pid_tag() -> str:
    """This process as a trial's `worker` attribute: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive_here(worker: Optional[str]) -> bool:
    """Whether a trial's `worker` tag (host:pid) names a process alive on this machine: a
    starved heartbeat of a live local worker is a slow trial, not a lost one."""
    if not worker or ":" not in str(worker):
        return False
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) == os.getpid() or pid_alive(int(pid))


def grace_after_outage(store: StudyStorage, grace_period: float) -> float:
    """The grace period to judge heartbeats by now: infinite (nothing is stale) until one full grace
    period after the storage came back from an outage this process saw. During an outage every
    heartbeat stops reaching the database, the live ones too: they get a fair chance to beat again."""
    outage = store.outage
    if outage is not None and (outage.down or outage.back_within(grace_period)):
        return float("inf")
    return grace_period


def fail_stale(study, *, grace_period: float, retry: Callable) -> int:
    """Mark RUNNING trials of dead workers FAIL and re-queue their parameters; how many.

    Stale means no heartbeat for `grace_period` seconds (RDB: the database's clock; journal: our
    own heartbeat attribute). A stale trial whose worker is a process still alive on this machine
    is not failed: its heartbeat thread was starved by an overloaded CPU, the trial is slow, not lost.
    Nothing is stale within a grace period of the storage's return from an outage (grace_after_outage).
    """
    from optuna.trial import TrialState

    store = StudyStorage(study)
    if grace_after_outage(store, grace_period) == float("inf"):
        log.debug("the study storage came back from an outage less than %ss ago: no trial is judged stale yet",
                  grace_period)
        return 0
    now = time.time()
    candidates = store.stale_trial_ids()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.system_attrs.get(HEARTBEAT_ATTR)
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if beat is not None:
            stale = now - float(beat) > grace_period  # journal storages: our own heartbeat
        else:
            # never got a heartbeat: its worker died between ask and heartbeat start
            stale = not t.system_attrs.get(ALIVE_ATTR) and now - started > 2 * grace_period
        if stale and store.trial_id(t) not in candidates:
            candidates.append(store.trial_id(t))
    n = 0
    for trial_id in candidates:
        t = store.trial(trial_id)
        if t.state != TrialState.RUNNING:
            continue
        if worker_alive_here(t.user_attrs.get("worker")):
            log.warning("trial %d has had no heartbeat for over %ss but its worker %s is alive on this machine: "
                        "slow (its heartbeat thread starved of CPU, or the storage slow to answer it), not lost; "
                        "left running", t.number, grace_period, t.user_attrs.get("worker"))
            continue
        # False: another worker got there first, or it just finished
        if not store.fail_trial(trial_id, {FAIL_REASON: "lost: its worker stopped sending heartbeats "
                                                        "(killed or crashed)", FAIL_KIND: "lost"}):
            continue
        n += 1
        retry(study, store.trial(trial_id))
    return n


# ----------------------------------------------------------------------------- the machine registry

def workers_dir() -> Path:
    """Where this user's live workers on this machine register: $AUTOFT_WORKERS_DIR, else
    <temp dir>/autoft-workers-<uid>."""
    return Path(os.environ.get(WORKERS_DIR_ENV) or Path(tempfile.gettempdir()) / f"autoft-workers-{os.getuid()}")


def registry_dir(directory: Optional[Path] = None) -> Optional[Path]:
    """The registry's directory, created private (0o700) when missing; None (logged) when it cannot
    be, or when it is another user's or writable by others: whoever can write there could plant or
    remove entries, so such a directory is never used."""
    directory = Path(directory or workers_dir())
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as err:
        log.warning("worker registry %s unusable (%s): the thread budget counts only this worker's trials",
                    directory, err)
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        log.warning("worker registry %s is not private to this user (owner uid %d, mode %o): not used, so the "
                    "thread budget counts only this worker's trials; set %s to a directory of your own",
                    directory, st.st_uid, st.st_mode & 0o7777, WORKERS_DIR_ENV)
        return None
    return directory


def process_start(pid: int) -> Optional[str]:
    """The kernel's start time of a process (Linux; None elsewhere or when it is gone): a pid that
    was reused after a worker died has another start time."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after 'pid (comm) '; field 22 is the start time
    return fields[19] if len(fields) > 19 else None


def _entry_alive(entry: dict) -> bool:
    pid = int(entry.get("pid", -1))
    if pid <= 0 or not pid_alive(pid):
        return False
    start = process_start(pid)
    return start is None or entry.get("start") in (None, start)


def register_worker(slots: int, directory: Optional[Path] = None) -> Optional[Path]:
    """Announce this process and the trials it runs at once on this machine; the file's path, or
    None when the registry is unusable (then the budget counts only this worker's trials)."""
    directory = registry_dir(directory)
    if directory is None:
        return None
    host, pid = socket.gethostname(), os.getpid()
    path = directory / f"{host}-{pid}.json"
    try:
        entry = {"host": host, "pid": pid, "start": process_start(pid), "slots": int(slots)}
        atomic_write_text(path, json.dumps(entry))
        return path
    except OSError as err:
        log.warning("worker not registered in %s (%s): the thread budget counts only this worker's trials",
                    directory, err)
        return None


def unregister_worker(path: Optional[Path]) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            Path(path).unlink()


def live_workers(directory: Optional[Path] = None) -> list[dict]:
    """The registered workers of this machine whose process still runs (dead ones' files removed),
    each {host, pid, start, slots}.
    Files of other hosts (a directory on a shared file system) are neither counted nor judged."""
    directory = Path(directory or workers_dir())
    host, out = socket.gethostname(), []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return out
    for path in paths:
        try:
            entry = json.loads(path.read_text())
            if entry.get("host") != host:
                continue
            entry["slots"] = max(0, int(entry.get("slots", 1)))
            alive = _entry_alive(entry)
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # gone meanwhile, being replaced, or not an entry
        if alive:
            out.append(entry)
        else:
            unregister_worker(path)
    return out


class WorkerRegistry:
    """This worker in the machine registry while it runs, and the thread budget of its next trials.

    `slots`: the trials this worker runs at once on this machine (1 with the basic launcher,
    n_jobs with joblib; 0 when its trials run elsewhere, e.g. SLURM: then it is not registered).
    """

    def __init__(self, slots: int = 1, directory: Optional[Path] = None):
        self.slots, self.directory = max(0, int(slots)), directory
        self.threads: Optional[int] = None
        self.concurrent = 1
        self.machine_file: Optional[Path] = None

    def start(self) -> "WorkerRegistry":
        if self.slots:
            self.machine_file = register_worker(self.slots, self.directory)
        return self

    def stop(self) -> None:
        unregister_worker(self.machine_file)
        self.machine_file = None

    def concurrent_here(self) -> int:
        """Trials running at once on this machine: this worker's, and those of the other live
        registered workers (when this one could register)."""
        own = max(self.slots, 1)
        if self.machine_file is None:
            return own
        pid = os.getpid()
        return own + sum(e["slots"] for e in live_workers(self.machine_file.parent) if int(e["pid"]) != pid)

    def budget(self, setting: Any) -> Optional[int]:
        """The thread count for each of this worker's next trials (None: leave torch's default);
        `auto` also keeps the count it divided by in `self.concurrent` (for the log line)."""
        if setting is None:
            return None
        if setting == "auto":
            self.concurrent = self.concurrent_here()
            return threads.thread_budget(threads.cpu_count(), self.concurrent)
        return int(setting)
