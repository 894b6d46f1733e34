"""One classifier for what a launched job came back with, shared by search trials and top-k
re-evaluations (the sweeper records each kind its own way).

    kind         meaning                                          the search
    complete     finite objective value(s)                        records them
    pruned       the task raised optuna.TrialPruned               PRUNED (trials)
    nan          a non-finite objective                           FAIL, goes on
    diverged     autoft.errors.TrialDiverged                      FAIL, goes on
    error        any other exception                              FAIL, goes on (traceback logged)
    storage      the study storage stayed unreachable past the    the trial is given back, this worker
                 window (outage.StorageUnreachable, from the      stops with that message (a rerun
                 task's own reports)                              resumes)
    user_error   a UserError anywhere in the exception's chain    stops everything with its message
    bad_return   not an objective (None, a string, wrong length)  stops: the app is misconfigured
    lost         the cluster lost the job (submitit)              FAIL, parameters retried
    launcher     the launcher itself raised                       FAIL, stops (re-raised)

`run_job` is the one launch-and-classify of trials and re-evaluations alike: it calls the launcher
(a plain callable `launch(overrides, job_idx) -> JobReturn`, so this package never imports Hydra's
launcher machinery) and classifies what came back; KeyboardInterrupt passes through.

A UserError counts however deeply it is wrapped: the chain of __cause__/__context__ is walked
(Hydra wraps a builder's UserError in an InstantiationException; apps wrap in RuntimeError).
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from autoft.errors import UserError
from autoft.search.outage import StorageUnreachable, chain


def find_user_error(err: Optional[BaseException]) -> Optional[UserError]:
    """The UserError behind an exception, following __cause__/__context__; else None."""
    return next((e for e in chain(err) if isinstance(e, UserError)), None)


@dataclass
class Outcome:
    kind: str
    values: Optional[list] = None  # complete: one float per objective
    reason: str = ""  # nan / diverged / error / user_error / bad_return: why
    extra: dict = field(default_factory=dict)  # complete: the task's other returned scores
    error: Optional[BaseException] = None  # the exception (user_error: the UserError itself)
    returned: Any = None  # bad_return: what came back
    traceback: str = ""  # error: the formatted traceback
    job: Any = None  # the launcher's JobReturn (None when the launch itself failed)


def _number(x: Any) -> bool:
    return x is not None and not isinstance(x, bool) and (isinstance(x, (int, float)) or hasattr(x, "item"))


def objectives(value: Any, n_objectives: int) -> Optional[list]:
    """The task's return value as n floats, or None when it is not that. A dict gives its
    'objective'; a single objective may come as a 1-element list."""
    if isinstance(value, dict):
        value = value.get("objective")
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if n_objectives > 1:
        if not isinstance(value, (list, tuple)) or len(value) != n_objectives or not all(_number(v) for v in value):
            return None
        return [float(v) for v in value]
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return [float(value)] if _number(value) else None


def classify(ret, n_objectives: int = 1) -> Outcome:
    """Classify a Hydra JobReturn."""
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.COMPLETED:
        value = ret._return_value
        extra = {k: v for k, v in value.items() if k != "objective"} if isinstance(value, dict) else {}
        values = objectives(value, n_objectives)
        if values is None:
            returned = value.get("objective") if isinstance(value, dict) else value
            return Outcome("bad_return", returned=returned, reason=f"the task returned {returned!r}, not an objective")
        if not all(math.isfinite(v) for v in values):
            return Outcome("nan", values=values, extra=extra,
                           reason=f"objective is {values[0] if len(values) == 1 else values}")
        return Outcome("complete", values=values, extra=extra)
    exc = ret._return_value
    import optuna

    from autoft.errors import TrialDiverged

    if isinstance(exc, optuna.TrialPruned):
        return Outcome("pruned", error=exc, reason=str(exc))
    user = find_user_error(exc)
    if isinstance(user, StorageUnreachable):
        return Outcome("storage", error=user, reason=str(user))
    if user is not None:
        return Outcome("user_error", error=user, reason=f"{type(user).__name__}: {user}")
    if isinstance(exc, TrialDiverged):
        return Outcome("diverged", error=exc, reason=f"diverged: {exc}")
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
    return Outcome("error", error=exc, reason=f"{type(exc).__name__}: {exc}", traceback=tb.rstrip())


def is_lost_job(err: BaseException) -> bool:
    """submitit raises these when the cluster killed, preempted or timed out the job."""
    return type(err).__module__.startswith("submitit") and type(err).__name__ in (
        "UncompletedJobError", "FailedJobError", "FailedSubmissionError")


def run_job(launch: Callable[[list, int], Any], overrides: list, job_idx: int, n_objectives: int = 1) -> Outcome:
    """Launch one job and classify it (the table above); KeyboardInterrupt is the caller's."""
    try:
        ret = launch(overrides, job_idx)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 (classified; the caller re-raises a launcher error)
        if is_lost_job(err):
            return Outcome("lost", error=err, reason=f"lost: the cluster job ended without a result ({err})")
        return Outcome("launcher", error=err, reason=f"launcher: {type(err).__name__}: {err}")
    out = classify(ret, n_objectives)
    out.job = ret
    return out
