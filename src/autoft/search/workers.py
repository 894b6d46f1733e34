"""Workers of a study on one machine: who is alive, and how many CPU threads each may use.

Several workers (the same command run several times) on one machine each default to torch's
thread count (all cores): 8 workers on 2 cores run 16+ busy threads per core and no trial ends.
`hydra.sweeper.threads: auto` gives each worker `cores // live workers on this host` threads (at
least 1), re-evaluated before every trial; an integer fixes it; null leaves torch's default.

Liveness comes from a per-worker record in the study's system attributes
(`autoft:worker:<host>:<pid>` -> {host, pid, time, threads, stopped}), refreshed by a daemon
thread every heartbeat interval and marked stopped on exit. A record counts as live while it is
fresh (within the grace period) or, on this host, while its process exists.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

WORKER_PREFIX = "autoft:worker:"
THREADS_ATTR = "threads"  # user attribute of each trial: the thread budget its worker used


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


class WorkerRegistry:
    """This worker's record in the study, kept fresh by a daemon thread; counts live workers."""

    def __init__(self, store, interval: float, grace_period: float):
        self.store = store  # autoft.search.storage.StudyStorage
        self.interval, self.grace_period = max(float(interval), 0.1), float(grace_period)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.key = f"{WORKER_PREFIX}{self.host}:{self.pid}"
        self.threads: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def beat(self, stopped: bool = False) -> None:
        self.store.write_study_record(self.key, {
            "host": self.host, "pid": self.pid, "time": time.time(), "threads": self.threads, "stopped": stopped},
            system=True)

    def start(self) -> "WorkerRegistry":
        self.beat()
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
        try:
            self.beat(stopped=True)
        except Exception as err:
            log.debug("worker record not closed: %s", err)

    def records(self) -> dict:
        recs = self.store.study_records(WORKER_PREFIX, system=True)
        return {tag: rec for tag, rec in recs.items() if isinstance(rec, dict)}

    def live_on_host(self) -> int:
        """Live workers of this study on this machine, this one included."""
        now, n = time.time(), 0
        for tag, rec in self.records().items():
            if rec.get("host") != self.host or rec.get("stopped"):
                continue
            if int(rec.get("pid", -1)) == self.pid:
                continue
            fresh = now - float(rec.get("time", 0)) <= self.grace_period
            if fresh or pid_alive(rec.get("pid", -1)):
                n += 1
        return n + 1

    def budget(self, setting: Any) -> Optional[int]:
        """The thread count for the next trial (None: leave torch's default)."""
        if setting is None:
            return None
        if setting == "auto":
            return max(1, cpu_count() // self.live_on_host())
        return int(setting)
