"""Workers on one machine: who is alive, and how many CPU threads each concurrent trial may use.

Several workers (the same command run several times, or searches of other studies) on one machine
each default to torch's thread count (all cores): 8 workers on 2 cores run 16+ busy threads per
core and no trial ends. `hydra.sweeper.threads: auto` gives each concurrent trial
`cores // concurrent trials on this machine` threads (at least 1), re-evaluated before every
trial; an integer fixes it; null leaves torch's default.

Concurrent trials on this machine are counted two ways, and the larger count wins:
- the machine registry: one small JSON file per live worker process, `<host>-<pid>.json` in
  `$AUTOFT_WORKERS_DIR` (default `<temp dir>/autoft-workers`, shared by all users), holding how
  many trials it runs at once here (1 with the basic launcher, n_jobs with joblib). It sees
  workers of every study. A file whose process is gone (or whose pid now names another process:
  its start time differs) is ignored and removed, so a killed worker needs no clean-up;
- the study's worker records (`autoft:worker:<host>:<pid>` system attributes -> {host, pid, time,
  threads, slots, stopped}), refreshed by a daemon thread every heartbeat interval and marked
  stopped on exit. A record counts while fresh (within the grace period) or, on this host, while
  its process exists. They also see workers whose temp dir differs.
"""
from __future__ import annotations

import logging
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

WORKER_PREFIX = "autoft:worker:"
THREADS_ATTR = "threads"  # user attribute of each trial: the thread budget its worker used
WORKERS_DIR_ENV = "AUTOFT_WORKERS_DIR"


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def parse_threads(value: Any) -> Optional[object]:
    """None (leave torch alone), 'auto', or a positive int; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "off")):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and value.isdigit()):
        raise ValueError(f"hydra.sweeper.threads must be auto, a positive integer or null, got {value!r}")
    n = int(value)
    if n < 1:
        raise ValueError(f"hydra.sweeper.threads must be auto, a positive integer or null, got {value!r}")
    return n


_INTEROP_TRIED = False


def apply_threads(n: int) -> int:
    """Give this process (and the processes it starts) n intra-op threads. Before torch is
    imported the OMP/MKL variables decide its pool; afterwards torch.set_num_threads does."""
    global _INTEROP_TRIED
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if not _INTEROP_TRIED:  # allowed only before any inter-op work started
            _INTEROP_TRIED = True
            try:
                torch.set_num_interop_threads(max(1, min(n, 4)))
            except RuntimeError:
                pass
    return n


def thread_budget(cores: int, concurrent: int) -> int:
    """Threads for one trial when `concurrent` trials share `cores` cores (at least 1)."""
    return max(1, int(cores) // max(1, int(concurrent)))


# ----------------------------------------------------------------------------- the machine registry

def workers_dir() -> Path:
    """Where live workers of this machine register: $AUTOFT_WORKERS_DIR, else <temp dir>/autoft-workers."""
    return Path(os.environ.get(WORKERS_DIR_ENV) or Path(tempfile.gettempdir()) / "autoft-workers")


def process_start(pid: int) -> Optional[str]:
    """The kernel's start time of a process (Linux; None elsewhere or when it is gone): a pid that
    was reused after a worker died has another start time."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after 'pid (comm) '; field 22 is the start time
    return fields[19] if len(fields) > 19 else None


def _entry_alive(entry: dict, host: str) -> bool:
    if entry.get("host") != host:
        return True  # another machine sharing the directory: not ours to judge (and not counted)
    pid = int(entry.get("pid", -1))
    if pid <= 0 or not pid_alive(pid):
        return False
    start = process_start(pid)
    return start is None or entry.get("start") in (None, start)


def register_worker(slots: int, study: str = "", directory: Optional[Path] = None) -> Optional[Path]:
    """Announce this process and the trials it runs at once on this machine; the file's path, or
    None when the directory cannot be written (then only the study's records count)."""
    directory = Path(directory or workers_dir())
    host, pid = socket.gethostname(), os.getpid()
    path = directory / f"{host}-{pid}.json"
    try:
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o1777)  # every user's workers register here; each removes only its own
        tmp = directory / f".{host}-{pid}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps({"host": host, "pid": pid, "start": process_start(pid), "slots": int(slots),
                                   "study": study, "time": time.time()}))
        os.replace(tmp, path)
        return path
    except OSError as err:
        log.debug("worker not registered in %s: %s", directory, err)
        return None


def unregister_worker(path: Optional[Path]) -> None:
    if path is not None:
        try:
            Path(path).unlink()
        except OSError:
            pass


def live_workers(directory: Optional[Path] = None) -> list[dict]:
    """The registered workers of this machine whose process still runs (dead ones' files removed)."""
    directory = Path(directory or workers_dir())
    host, out = socket.gethostname(), []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return out
    for path in paths:
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # gone meanwhile, or being replaced
        if not isinstance(entry, dict) or entry.get("host") != host:
            continue
        if _entry_alive(entry, host):
            out.append(entry)
        else:
            unregister_worker(path)  # best effort: another user's file stays (sticky directory)
    return out


def concurrent_trials_here(directory: Optional[Path] = None) -> int:
    """Trials that live registered workers of any study run at once on this machine."""
    return sum(max(0, int(e.get("slots", 1))) for e in live_workers(directory))


# ----------------------------------------------------------------------------- one worker

class WorkerRegistry:
    """This worker in the study's records (kept fresh by a daemon thread) and in the machine
    registry; counts the trials that share this machine's cores.

    `slots`: the trials this worker runs at once on this machine (1 with the basic launcher,
    n_jobs with joblib; 0 when its trials run elsewhere, e.g. SLURM: then it is not registered).
    """

    def __init__(self, store, interval: float, grace_period: float, *, slots: int = 1,
                 directory: Optional[Path] = None):
        self.store = store  # autoft.search.storage.StudyStorage
        self.interval, self.grace_period = max(float(interval), 0.1), float(grace_period)
        self.slots, self.directory = max(0, int(slots)), directory
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.key = f"{WORKER_PREFIX}{self.host}:{self.pid}"
        self.threads: Optional[int] = None
        self.concurrent = 1
        self.machine_file: Optional[Path] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def beat(self, stopped: bool = False) -> None:
        self.store.write_study_record(self.key, {
            "host": self.host, "pid": self.pid, "time": time.time(), "threads": self.threads, "slots": self.slots,
            "stopped": stopped}, system=True)

    def start(self) -> "WorkerRegistry":
        self.beat()
        if self.slots:
            self.machine_file = register_worker(self.slots, self.store.name, self.directory)
        self._thread = threading.Thread(target=self._run, name="autoft-worker-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as err:  # a storage hiccup: next time
                log.debug("worker heartbeat failed: %s", err)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        unregister_worker(self.machine_file)
        self.machine_file = None
        try:
            self.beat(stopped=True)
        except Exception as err:
            log.debug("worker record not closed: %s", err)

    def records(self) -> dict:
        recs = self.store.study_records(WORKER_PREFIX, system=True)
        return {tag: rec for tag, rec in recs.items() if isinstance(rec, dict)}

    def _others_here(self) -> list[dict]:
        """Live records of this study's other workers on this machine."""
        now, out = time.time(), []
        for rec in self.records().values():
            if rec.get("host") != self.host or rec.get("stopped") or int(rec.get("pid", -1)) == self.pid:
                continue
            if now - float(rec.get("time", 0)) <= self.grace_period or pid_alive(rec.get("pid", -1)):
                out.append(rec)
        return out

    def live_on_host(self) -> int:
        """Live workers of this study on this machine, this one included."""
        return len(self._others_here()) + 1

    def concurrent_here(self) -> int:
        """Trials running at once on this machine, this worker's included: the larger of the
        machine registry's count (every study) and this study's records' count."""
        own = max(self.slots, 1)
        machine = sum(max(0, int(e.get("slots", 1))) for e in live_workers(self.directory)
                      if int(e.get("pid", -1)) != self.pid)
        study = sum(max(0, int(r.get("slots", 1))) for r in self._others_here())
        return own + max(machine, study)

    def budget(self, setting: Any) -> Optional[int]:
        """The thread count for each of this worker's next trials (None: leave torch's default);
        `auto` also keeps the count it divided by in `self.concurrent` (for the log line)."""
        if setting is None:
            return None
        if setting == "auto":
            self.concurrent = self.concurrent_here()
            return thread_budget(cpu_count(), self.concurrent)
        return int(setting)


def trial_threads() -> Optional[int]:
    """The running trial's thread budget (`hydra.sweeper.trial.threads`; None: none was set)."""
    from autoft.search.trial import hydra_trial_identity

    n = (hydra_trial_identity() or {}).get("threads")
    return int(n) if n else None


class BudgetedTask:
    """An app's task function, run under its trial's thread budget in whichever process the
    launcher runs it: with joblib each worker process applies its own share before the task (the
    sweeper's process cannot set another process's torch threads). Picklable when the task is."""

    def __init__(self, task_function):
        self.task_function = task_function

    def __call__(self, cfg):
        n = trial_threads()
        if n is not None:
            apply_threads(n)
        return self.task_function(cfg)
