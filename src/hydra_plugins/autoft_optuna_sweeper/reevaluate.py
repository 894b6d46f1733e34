"""Top-k re-evaluation, run by the sweeper once its study is complete (autoft.search.reevaluation
explains the records and how a killed re-evaluation resumes). A mixin of AutoFTOptunaSweeper."""
import logging
import time

from autoft.errors import UserError
from autoft.search.outcome import classify
from hydra_plugins.autoft_optuna_sweeper.util import is_lost_job as _is_lost_job

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")


class ReevaluationMixin:
    def _reevaluate(self, study) -> None:
        """Claim and run missing re-evaluations of the top-k trials until none is left here; then
        wait for those running elsewhere (a lost one is taken over after the grace period)."""
        from autoft.search import reevaluation as rv
        from autoft.search import storage as st

        announced = False
        while not self._stop.is_set():
            with self.store.claim_lock(self.storage_url):
                trials = study.get_trials(deepcopy=False)
                recs = rv.records(study)
                trial, live, stale = rv.next_claim(trials, recs, self.direction, self.reeval, self.reeval_seeds,
                                                   self.max_retries, self.grace_period)
                if trial is not None:
                    claim = rv.claim_record(trial, self.reeval_seeds, st.pid_tag(), recs.get(trial.number))
                    rv.write_record(study, trial.number, claim)
            if trial is None:
                if not live:
                    return
                if not announced:
                    log.info("re-evaluation: %d running elsewhere: waiting for them (a lost one is taken over %ds "
                             "after its last heartbeat)", live, self.grace_period)
                    announced = True
                self._changed.wait(self.poll_interval)
                self._changed.clear()
                continue
            if stale:
                log.warning("re-evaluation of trial %d was lost (no heartbeat): running it again", trial.number)
            log.info("re-evaluating trial %d (search %.6g) with seeds %s", trial.number, trial.value,
                     ", ".join(map(str, self.reeval_seeds)))
            heartbeat = rv.ClaimHeartbeat(study, trial.number, claim, self.heartbeat_interval).start()
            with self._lock:
                self._inflight_reeval[trial.number] = (claim, heartbeat)
            try:
                self._run_reevaluation(study, trial, claim, heartbeat)
            finally:
                heartbeat.stop()
                with self._lock:
                    self._inflight_reeval.pop(trial.number, None)

    def _run_reevaluation(self, study, trial, claim: dict, heartbeat) -> None:
        import json

        from autoft.search import reevaluation as rv

        n = trial.number
        job_dir = self.study_dir / "reevaluation" / f"trial_{n}"
        t0 = time.time()
        try:
            ret = self.launcher.launch([self._reeval_overrides(trial.params, number=n)], initial_job_idx=n)[0]
        except KeyboardInterrupt:  # give the claim back: a rerun takes it up at once
            self._finish_reeval(study, n, claim, rv.released_record(claim), heartbeat)
            raise
        except BaseException as err:
            if _is_lost_job(err):  # retried like a failed run (at most max_retries times)
                record = rv.failed_record(claim, "lost", f"lost: the cluster job ended without a result ({err})")
                self._finish_reeval(study, n, claim, record, heartbeat)
                self._reeval_progress(study, trial, record)
                return
            self._finish_reeval(study, n, claim, rv.failed_record(claim, "error", f"launcher: {type(err).__name__}: {err}"),
                                heartbeat)
            raise
        with self._lock:
            self._returns.append(ret)
        out = classify(ret)
        if out.kind == "bad_return":
            self._finish_reeval(study, n, claim, rv.released_record(claim), heartbeat)
            raise UserError(f"the task function returned {out.returned!r} instead of the objective (a float) in the "
                            f"re-evaluation of trial {n}")
        if out.kind == "user_error":
            self._finish_reeval(study, n, claim, rv.released_record(claim), heartbeat)
            self._stop.set()
            raise out.error
        if out.kind == "complete":
            info = None
            path = job_dir / "trial.json"
            if path.is_file() and path.stat().st_mtime >= t0 - 1:  # this run's, not a killed run's
                try:
                    info = json.loads(path.read_text())
                except (OSError, ValueError):
                    info = None
            record = rv.result_record(claim, out.values[0], info, time.time() - t0)
        elif out.kind in ("nan", "diverged"):
            record = rv.failed_record(claim, out.kind, out.reason)
        else:  # error, or a pruned re-evaluation (no pruner runs there: recorded as an error)
            if out.traceback:
                log.warning("re-evaluation of trial %d raised:\n%s", n, out.traceback)
            record = rv.failed_record(claim, "error", out.reason if out.kind == "error"
                                      else f"{type(out.error).__name__}: {out.error}")
        self._finish_reeval(study, n, claim, record, heartbeat)
        self._reeval_progress(study, trial, record)

    def _finish_reeval(self, study, number: int, claim: dict, record: dict, heartbeat=None) -> None:
        """Write a re-evaluation's outcome, unless another worker took the claim over meanwhile."""
        from autoft.search import reevaluation as rv

        if heartbeat is not None:
            heartbeat.stop()  # joined first: a late heartbeat must not turn the outcome back into 'running'
        try:
            with self.store.claim_lock(self.storage_url):
                current = rv.records(study).get(number)
                if current is not None and current.get("token") not in (None, claim["token"]) \
                        and current.get("state") == rv.RUNNING:
                    log.warning("re-evaluation of trial %d was taken over by %s meanwhile: its result stays theirs",
                                number, current.get("worker"))
                    return
                if current is not None and current.get("state") == rv.COMPLETE and record["state"] != rv.COMPLETE \
                        and rv.same_seeds(current, claim["seeds"]):
                    return  # a result already there wins over a release or a failure
                rv.write_record(study, number, record)
        except Exception as err:  # never mask the error that brought us here
            log.warning("could not record the re-evaluation of trial %d: %s", number, err)

    def _reeval_progress(self, study, trial, record: dict) -> None:
        from autoft.search import reevaluation as rv

        recs = rv.records(study)
        cands = rv.candidates(study.get_trials(deepcopy=False), self.direction, self.reeval.top_k)
        done = sum(rv.is_done(recs.get(t.number), self.reeval_seeds, self.max_retries) for t in cands)
        if record["state"] == rv.COMPLETE:
            what = f"{record['value']:.6g}"
            if record.get("per_seed") and len(record["per_seed"]) > 1:
                what += " (per seed " + ", ".join(f"{x:.4g}" for x in record["per_seed"]) + ")"
            if "ci_low" in record:
                what += f", 95% CI [{record['ci_low']:.4g}, {record['ci_high']:.4g}]"
        else:
            what = f"FAIL ({record.get('fail_reason')})"
        log.info("re-evaluation of trial %d (search %.6g): %s | %d/%d candidates re-evaluated", trial.number,
                 trial.value, what, done, len(cands))
        self._write_outputs(final=False)
        self._changed.set()
