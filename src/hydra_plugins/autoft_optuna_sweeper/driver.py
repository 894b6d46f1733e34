"""The search driver of the `autoft_optuna` sweeper: slots, claims and in-flight trials.

Each of the sweeper's slots (hydra.sweeper.n_jobs) loops: claim a trial under the study's claim
lock (never more than n_trials finished or running), suggest its parameters, launch it through the
Hydra launcher with a heartbeat running, classify what came back (autoft.search.outcome) and tell
the study. A UserError stops every slot at once; trials still out are given back (FAIL, parameters
re-queued). The Hydra glue (setup, composing the study) lives in sweeper.py, which mixes this in.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Optional

from autoft.errors import UserError
from autoft.search.outcome import classify
from autoft.search.workers import THREADS_ATTR
from hydra_plugins.autoft_optuna_sweeper.util import is_lost_job as _is_lost_job

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")  # one logger for the sweeper's lines


class SearchDriverMixin:
    """Runs the slots of an AutoFTOptunaSweeper (its state is set up by the sweeper's _prepare)."""

    def _run(self) -> Any:
        self._t0 = time.time()
        from autoft.search.study import count

        self._done0 = count(self.study.get_trials(deepcopy=False)).done(self.count_pruned)
        errors: list[BaseException] = []
        try:
            if self.slots == 1:
                self._slot(0)
            else:
                def body(i: int) -> None:
                    try:
                        self._slot(i)
                    except BaseException as err:  # noqa: BLE001 (handed to the main thread)
                        errors.append(err)
                        self._stop.set()
                        self._changed.set()

                threads = [threading.Thread(target=body, args=(i,), name=f"autoft-slot-{i}", daemon=True)
                           for i in range(self.slots)]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads) and not errors:
                    self._changed.wait(0.5)
                if errors:  # stop at once: trials still out are given back (FAIL, parameters re-queued)
                    self._abandon_inflight()
        except KeyboardInterrupt:
            self._stop.set()
            self._abandon_inflight()
            raise
        finally:
            self._write_outputs(final=True)
            if self.registry is not None:
                self.registry.stop()
        if errors:
            raise errors[0]
        self._summary()
        return self._returns

    def _abandon_inflight(self) -> None:
        with self._lock:
            trials = list(self._inflight.values())
            self._inflight.clear()
            claims = dict(self._inflight_reeval)
            self._inflight_reeval.clear()
        for trial in trials:
            self._interrupted(self.study, trial)
        from autoft.search import reevaluation as rv

        for number, (claim, heartbeat) in claims.items():  # a rerun takes them up at once, no grace period
            self._finish_reeval(self.study, number, claim, rv.released_record(claim), heartbeat)

    # ------------------------------------------------------------------ one slot

    def _handle(self):
        """A Study object of this slot's own (its own sampler; storage shared)."""
        from autoft.search.study import make_pruner, make_sampler

        return self.store.load(sampler=make_sampler(self.sampler_cfg, self.grid_space),
                               pruner=make_pruner(self.pruner_spec))

    def _slot(self, slot: int) -> None:
        study = self.study if slot == 0 else self._handle()
        while not self._stop.is_set():
            claimed = self._claim(study)
            if claimed is None:
                break
            trial, heartbeat = claimed
            with self._lock:
                self._inflight[trial.number] = trial
            try:
                self._run_trial(study, trial)
            finally:
                heartbeat.stop()
                with self._lock:
                    self._inflight.pop(trial.number, None)
        if self.reeval.enabled and not self._stop.is_set():
            self._reevaluate(study)

    def _claim(self, study):
        from autoft.search import storage as st
        from autoft.search import study as su

        announced = False
        locked = st.has_claim_lock(self.storage_url)
        while not self._stop.is_set():
            with self.store.claim_lock(self.storage_url):
                su.fail_stale(study, grace_period=self.grace_period, retry=self.retry)
                trials = study.get_trials(deepcopy=False)
                c = su.count(trials)
                done = c.done(self.count_pruned)
                if done >= self.n_trials:
                    return None
                self._check_failures(c, trials)
                if done + c.running < self.n_trials:
                    trial = study.ask()
                    heartbeat = self.store.heartbeat(trial, self.heartbeat_interval, label=f"trial {trial.number}",
                                                     progress_interval=self.progress_interval,
                                                     grace_period=self.grace_period)
                    try:
                        trial.set_user_attr("worker", st.pid_tag())
                        n_threads = self._apply_threads()
                        if n_threads is not None:
                            trial.set_user_attr(THREADS_ATTR, n_threads)
                            with self._lock:
                                self._threads_of[trial.number] = n_threads
                        self._suggest(trial)
                    except BaseException:
                        heartbeat.stop()
                        self._fail(study, trial, "error", "sampling failed: " + traceback.format_exc(limit=2))
                        raise
                    if locked or not self._surplus(study, trial):
                        return trial, heartbeat
                    heartbeat.stop()
                    continue
            if not announced:
                log.info("%d/%d trials finished and %d running elsewhere: waiting for them (a lost one is retried "
                         "%ds after its last heartbeat)", done, self.n_trials, c.running, self.grace_period)
                announced = True
            self._changed.wait(self.poll_interval)
            self._changed.clear()
        return None

    def _check_failures(self, c, trials) -> None:
        """Stop the search when failures exceed max_failures or max_failure_rate x n_trials. Past the
        rate, the message quotes the last failure's error (hydra-optuna-sweeper re-raises it)."""
        if c.counted_failures >= self.max_failures_n:
            raise UserError(f"the search stopped: {c.counted_failures} trials failed (raised, diverged or "
                            f"returned NaN), the limit hydra.sweeper.max_failures={self.max_failures_n}. "
                            f"Their reasons are in {self.study_dir / 'trials.csv'}.")
        if self.max_failure_rate is not None:
            from autoft.search.study import last_failure

            allowed = int(float(self.max_failure_rate) * self.n_trials + 1e-9)
            if c.counted_failures > allowed:
                raise UserError(f"the search stopped: {c.counted_failures} trials failed (raised, diverged or "
                                f"returned NaN), more than hydra.sweeper.max_failure_rate={self.max_failure_rate} x "
                                f"n_trials={self.n_trials} ({allowed} allowed). The last: {last_failure(trials)}. "
                                f"Their reasons are in {self.study_dir / 'trials.csv'}.")

    def _local_slots(self) -> int:
        """Trials this worker runs at once on this machine: 1 in this process (basic launcher), the
        slots with a joblib-style launcher (worker processes here), 0 when they run elsewhere."""
        if self.in_process:
            return 1
        return self.slots if "joblib" in type(self.launcher).__name__.lower() else 0

    def _apply_threads(self) -> Optional[int]:
        """The thread budget for the next trial (hydra.sweeper.threads); applied here when trials run
        in this process, and by the task (BudgetedTask) in a joblib worker process."""
        from autoft.search import workers as wk

        if self.threads is None or self.registry is None or not self.registry.slots:
            return None  # trials on other nodes: their launcher's resources (cpus_per_task) govern
        try:
            n = self.registry.budget(self.threads)
        except Exception as err:  # noqa: BLE001 (the storage hiccuped: keep the last budget)
            log.debug("thread budget not re-evaluated: %s", err)
            n = self.registry.threads
        if n is None:
            return None
        if n != self.registry.threads:
            why = (f" ({wk.cpu_count()} cores, {self.registry.concurrent} concurrent trial(s) on this machine, "
                   f"{self.registry.slots} of them this worker's)" if self.threads == "auto"
                   else " (hydra.sweeper.threads)")
            log.info("threads per trial: %d%s", n, why)
        self.registry.threads = wk.apply_threads(n) if self.in_process else n
        return n

    def _suggest(self, trial) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        for key, d in self.space.distributions.items():
            if isinstance(d, FloatDistribution):
                trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
            elif isinstance(d, IntDistribution):
                trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
            elif isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(key, d.choices)
        if self.custom_fn is not None:  # hydra.sweeper.custom_search_space: more parameters, conditional ones
            self.custom_fn(self.config, trial)

    def _surplus(self, study, trial) -> bool:
        """Storages without a claim lock: after asking, the later of two racing trials gives way."""
        from optuna.trial import TrialState

        from autoft.search import study as su

        trials = study.get_trials(deepcopy=False)
        running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
        ahead = running.index(trial.number) if trial.number in running else 0
        if su.count(trials).done(self.count_pruned) + ahead + 1 <= self.n_trials:
            return False
        if self._fail(study, trial, "surplus", "surplus: other workers already run the study's last trials") \
                and self.store.trial(trial).system_attrs.get("fixed_params"):
            su.requeue(study, self.store.trial(trial), max_retries=self.max_retries,
                       why="surplus", count_retry=False)
        return True

    # ------------------------------------------------------------------ one trial

    def _run_trial(self, study, trial) -> None:
        import optuna

        with self._lock:
            threads = self._threads_of.pop(trial.number, None)
        overrides = self._overrides(trial.params, trial_id=self.store.trial_id(trial), number=trial.number,
                                    threads=threads)
        try:
            ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except KeyboardInterrupt:
            self._interrupted(study, trial)
            raise
        except BaseException as err:
            if _is_lost_job(err):
                from autoft.search.study import requeue

                if self._fail(study, trial, "lost", f"lost: the cluster job ended without a result ({err})"):
                    requeue(study, self.store.trial(trial), max_retries=self.max_retries, why="lost job")
                self._progress(study, trial)
                return
            self._fail(study, trial, "error", f"launcher: {type(err).__name__}: {err}")
            raise
        with self._lock:
            self._returns.append(ret)
        out = classify(ret, len(self.direction) if self.multi else 1)
        if out.kind == "bad_return":
            self._fail(study, trial, "user_error", out.reason)
            want = (f"{len(self.direction)} objectives (a list or tuple of floats, one per direction)"
                    if self.multi else "the objective (a float)")
            raise UserError(f"the task function returned {out.returned!r} instead of {want}" +
                            ("" if self.multi else "; with train.py the search needs phase=search "
                                                   "(search=autoft sets it)"))
        if out.extra:
            self._set_attrs(study, trial, {k: v for k, v in out.extra.items() if isinstance(v, (int, float, str, bool))})
        if out.kind == "complete":
            self._tell(study, trial, values=out.values if self.multi else out.values[0])
        elif out.kind == "pruned":
            self._tell(study, trial, state=optuna.trial.TrialState.PRUNED)
        elif out.kind == "user_error":
            self._fail(study, trial, "user_error", out.reason)
            self._stop.set()
            raise out.error
        else:  # nan | diverged | error: recorded, the search goes on
            if out.traceback:
                log.warning("trial %d raised:\n%s", trial.number, out.traceback)
            self._fail(study, trial, out.kind, out.reason)
        self._progress(study, trial)

    def _set_attrs(self, study, trial, attrs: dict) -> bool:
        return self.store.set_trial_user_attrs(trial, attrs)

    def _tell(self, study, trial, **kwargs) -> bool:
        try:
            study.tell(trial, **kwargs)
            return True
        except (ValueError, RuntimeError) as err:
            # another worker declared it lost (heartbeat older than the grace period) and re-queued it
            log.warning("trial %d could not be recorded (%s): it was declared lost meanwhile; its parameters "
                        "were re-queued", trial.number, err)
            return False

    def _fail(self, study, trial, kind: str, reason: str) -> bool:
        """Record the trial FAILED with its reason; False when it had already finished elsewhere."""
        import optuna

        from autoft.search.study import FAIL_KIND, FAIL_REASON

        if self._set_attrs(study, trial, {FAIL_REASON: reason[:2000], FAIL_KIND: kind}):
            return self._tell(study, trial, state=optuna.trial.TrialState.FAIL)
        return False

    def _interrupted(self, study, trial) -> None:
        """Give a trial back unfinished: FAIL (kind 'interrupted') and its parameters re-queued."""
        from autoft.search.study import requeue

        try:
            if self._fail(study, trial, "interrupted", "interrupted before it finished; parameters re-queued"):
                requeue(study, self.store.trial(trial), max_retries=self.max_retries, why="interrupted",
                        count_retry=False)
        except Exception as err:  # never mask the interrupt
            log.warning("could not record interrupted trial %d: %s", trial.number, err)
