"""The thread budget: how many CPU threads each concurrent trial may use.

Several workers on one machine each default to torch's thread count (all cores): 8 workers on 2
cores run 16+ busy threads per core and no trial ends. `hydra.sweeper.threads: auto` gives each
concurrent trial `cores // concurrent trials on this machine` threads (at least 1), re-evaluated
before every trial; an integer fixes it; null leaves torch's default. The budget travels to the
trial as `hydra.sweeper.trial.threads` and is applied in whichever process runs it (BudgetedTask).

The count comes from one registry, the machine registry (autoft.search.liveness.WorkerRegistry):
each worker process whose trials run here keeps a file `<host>-<pid>.json` (its concurrent trials)
in `$AUTOFT_WORKERS_DIR`, default `<temp dir>/autoft-workers-<uid>`, a directory private to the
user (0o700; one that is another user's or writable by others is not used): workers count each other
when they see the same directory (the same $TMPDIR, or $AUTOFT_WORKERS_DIR). Files rather than the
study's storage, because trials of other studies share the cores too; liveness is the pid itself
(and its start time), so no heartbeat keeps an entry fresh and a killed worker stops counting at
once. Other users' workers are not seen (that would need a directory everyone can write): on a
machine shared between users, set an integer, or let the scheduler's allocation (cpus_per_task) decide.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

THREADS_ATTR = "threads"  # user attribute of each trial: the thread budget its worker used


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_threads(value: Any) -> Optional[object]:
    """None (leave torch alone), 'auto', or a positive int; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "off")):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    n = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"hydra.sweeper.threads must be auto, a positive integer or null, got {value!r}")
    return n


def thread_budget(cores: int, concurrent: int) -> int:
    """Threads for one trial when `concurrent` trials share `cores` cores (at least 1)."""
    return max(1, int(cores) // max(1, int(concurrent)))


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


class BudgetedTask:
    """An app's task function, run under its trial's thread budget in whichever process the
    launcher runs it: with joblib each worker process applies its own share before the task (the
    sweeper's process cannot set another process's torch threads). Picklable when the task is."""

    def __init__(self, task_function):
        self.task_function = task_function

    def __call__(self, cfg):
        from autoft.search.trial import hydra_trial_identity

        n = (hydra_trial_identity() or {}).get("threads")  # the trial's budget; none set: torch's default
        if n:
            apply_threads(int(n))
        return self.task_function(cfg)
