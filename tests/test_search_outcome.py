"""The one outcome classifier shared by search trials and re-evaluations (autoft.search.outcome)."""
import math

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import InstantiationException

from autoft.errors import TrialDiverged, UserError
from autoft.search.outcome import classify, find_user_error, run_job


def job(value=None, exc=None):
    ret = JobReturn()
    ret.status = JobStatus.FAILED if exc is not None else JobStatus.COMPLETED
    ret._return_value = exc if exc is not None else value
    return ret


def wrapped(depth_user_error):
    try:
        try:
            raise depth_user_error
        except UserError as inner:
            raise InstantiationException("Error in call to target 'x.Dataset'") from inner
    except InstantiationException as mid:
        try:
            raise RuntimeError("outer") from mid
        except RuntimeError as outer:
            return outer


def test_a_user_error_is_found_however_deeply_wrapped():
    err = wrapped(UserError("no such split"))
    assert str(find_user_error(err)) == "no such split"
    try:  # implicit chaining (raised while handling) counts too
        try:
            raise UserError("bad root")
        except UserError:
            raise ValueError("while handling")
    except ValueError as e:
        assert str(find_user_error(e)) == "bad root"
    assert find_user_error(RuntimeError("plain")) is None and find_user_error(None) is None
    out = classify(job(exc=err))
    assert out.kind == "user_error" and "no such split" in out.reason and isinstance(out.error, UserError)


@pytest.mark.parametrize("ret, n, kind", [
    (job(0.5), 1, "complete"),
    (job({"objective": 0.5, "id_val": 0.9}), 1, "complete"),
    (job([0.5]), 1, "complete"),
    (job((1.0, 2.0)), 2, "complete"),
    (job(float("nan")), 1, "nan"),
    (job((1.0, math.inf)), 2, "nan"),
    (job(None), 1, "bad_return"),
    (job("0.5"), 1, "bad_return"),
    (job(True), 1, "bad_return"),
    (job(1.0), 2, "bad_return"),
    (job(exc=optuna.TrialPruned("at step 2")), 1, "pruned"),
    (job(exc=TrialDiverged("loss is nan")), 1, "diverged"),
    (job(exc=RuntimeError("boom")), 1, "error"),
])
def test_classify(ret, n, kind):
    out = classify(ret, n)
    assert out.kind == kind
    if kind == "complete":
        assert len(out.values) == n and all(isinstance(v, float) for v in out.values)
    if kind == "error":
        assert out.reason == "RuntimeError: boom" and out.traceback.endswith("RuntimeError: boom")
    if isinstance(ret._return_value, dict):
        assert out.extra == {"id_val": 0.9}


def test_one_launch_and_classify_for_trials_and_reevaluations():
    calls = []

    def launch(overrides, job_idx):
        calls.append((list(overrides), job_idx))
        return job(value={"objective": 0.25, "id_val": 0.5})

    out = run_job(launch, ["x=1"], 7)
    assert calls == [(["x=1"], 7)]
    assert out.kind == "complete" and out.values == [0.25] and out.extra == {"id_val": 0.5}
    assert out.job is not None and out.job.return_value == {"objective": 0.25, "id_val": 0.5}
    assert run_job(lambda o, i: job(value=[1.0, 2.0]), [], 0, n_objectives=2).values == [1.0, 2.0]


def test_a_lost_cluster_job_and_a_failing_launcher_are_told_apart():
    lost_type = type("UncompletedJobError", (RuntimeError,), {"__module__": "submitit.core.utils"})

    def lose(overrides, job_idx):
        raise lost_type("job 123 was preempted")

    lost = run_job(lose, [], 0)
    assert lost.kind == "lost" and "job 123 was preempted" in lost.reason and lost.job is None

    def broken(overrides, job_idx):
        raise OSError("no space left on device")

    failed = run_job(broken, [], 0)
    assert failed.kind == "launcher" and isinstance(failed.error, OSError)
    assert failed.reason == "launcher: OSError: no space left on device"

    def interrupted(overrides, job_idx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the caller gives its trial or claim back
        run_job(interrupted, [], 0)
