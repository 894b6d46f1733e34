"""One search run: claim a trial, launch it, classify what came back, tell the study; once the
study is complete, the top-k re-evaluation step; the outputs beside the study, the summary.

    search = Search(settings, config, arguments, launch=launch, sweep_dir=..., ...)
    search.prepare()          # the space, the study, checks: every UserError before any trial
    returns = search.run()    # the slots until the study holds n_trials finished trials, then re-evaluation

Each slot (hydra.sweeper.n_jobs) loops: under the study's claim lock (never more than n_trials
finished or running) fail stale trials (liveness.fail_stale), ask, suggest, start the trial's
heartbeat; launch and classify (outcome.run_job); tell. A UserError stops every slot at once; what
they hold is given back (trials: FAIL, parameters re-queued). When the app asks for a top-k
re-evaluation, the slots then run autoft.search.reevaluation.reevaluate, a step that reads the
complete study (it explains its records). The app answers through its hook (autoft.search.app);
the launcher is a plain callable `launch(overrides, job_idx) -> JobReturn` (the Hydra plugin's).
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, ContextManager, List, Optional

from autoft.errors import UserError
from autoft.search import liveness as lv
from autoft.search import outage as og
from autoft.search import outputs as out
from autoft.search import reevaluation as rv
from autoft.search import space as sp
from autoft.search import storage as st
from autoft.search import study as su
from autoft.search.app import SearchApp, load_app, load_callable
from autoft.search.outcome import Outcome, find_user_error, run_job
from autoft.search.settings import SearchSettings
from autoft.search.threads import THREADS_ATTR, apply_threads, cpu_count, parse_threads

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")  # one logger for the search's lines


class Search:
    """The state of one search run in one worker process (see the module's docstring).

    `settings`: the sweeper's keys, checked (autoft.search.settings.checked); `config`: the composed
    sweep config; `arguments`: the command line's overrides; `launch`: runs one job; `sweep_dir`:
    where studies live; `slots`: trials at once in this process; `local_slots`: those sharing this
    machine's cores (for the thread budget; 0 when they run elsewhere);
    `in_process`: trials run in this process (the budget is applied here); `check_composes(batch)`:
    raises UserError when a batch of overrides does not compose; `trial_config(overrides)`: a context
    manager giving one trial's composed task config (pre-flight). `app` (hydra.sweeper.app, loaded
    in prepare) answers what the search asks of the app, and writes the app's own outputs."""

    def __init__(self, settings: SearchSettings, config, arguments: List[str], *,
                 launch: Callable[[list, int], Any], sweep_dir: Path, slots: int, local_slots: int,
                 in_process: bool, check_composes: Callable[[list], None],
                 trial_config: Callable[[list], ContextManager]):
        self.s, self.config, self.arguments = settings, config, list(arguments)
        self.launch, self.sweep_dir = launch, Path(sweep_dir).absolute()
        self.slots, self.local_slots, self.in_process = slots, local_slots, in_process
        self.check_composes, self.trial_config = check_composes, trial_config
        self.n_trials = settings.n_trials
        self.study = self.registry = None
        self.app: Optional[SearchApp] = None
        self.stopping = threading.Event()  # set: every slot stops
        self.changed = threading.Event()  # a slot finished a trial: waiting slots look again
        self._lock = threading.Lock()
        self._inflight: dict[Any, Callable[[], None]] = {}  # what the slots hold -> how to give it back
        self._threads_of: dict[int, int] = {}  # trial number -> its thread budget
        self.returns: list = []

    # ------------------------------------------------------------------ prepare

    def prepare(self) -> None:
        """Parse and check everything, then open (or resume) the study; UserError before any trial."""
        import optuna  # noqa: F401  (fail here, not in a thread, if it is missing)

        s, cfg = self.s, self.config
        st.quiet_optuna()
        self.app = app = load_app(s.app, cfg)
        self.space, self.passthrough = sp.parse_space(s.params or {}, self.arguments, config=cfg,
                                                      keep=app.space_filter())
        if not self.space.distributions and not s.custom_search_space:
            raise UserError("search space: hydra.sweeper.params holds no searched parameter (interval, range or "
                            "choice) and hydra.sweeper.custom_search_space is not set; nothing to search")
        self.pruner_spec = app.pruner()  # checked by the app
        self.direction = su.direction_for(app.direction() if s.direction is None else s.direction)
        self.multi = isinstance(self.direction, list)
        self.n_objectives = len(self.direction) if self.multi else 1
        self.reeval = app.reevaluation(self.space, self.direction, s.max_retries)
        self.threads = parse_threads(s.threads)  # the settings were checked (settings.checked)
        self.max_failures_n = int(s.max_failures) if s.max_failures is not None else int(self.n_trials)
        self._prepare_grid()
        su.make_sampler(s.sampler, self.grid_space)  # validate before any study row
        self.custom_fn = load_callable(s.custom_search_space, "custom_search_space") if s.custom_search_space \
            else None

        self.storage_url = st.normalize_url(s.storage or st.default_storage_url(self.sweep_dir))
        st.storage_kind(self.storage_url)  # validate the URL's form
        sampler_fp = dict(s.sampler)
        if s.custom_search_space:
            sampler_fp["custom_search_space"] = str(s.custom_search_space)
        exclude = app.fingerprint_exclude() if s.fingerprint_exclude is None else s.fingerprint_exclude
        self.fingerprint = su.fingerprint(cfg, space=self.space, direction=self.direction, sampler=sampler_fp,
                                          pruner=self.pruner_spec, exclude=exclude, neutral=app.neutral_defaults())
        self.study_name = s.study_name or su.study_name_for(app.label(), self.fingerprint)
        self.study_dir = self.sweep_dir / self.study_name.replace("/", "_")
        self.place = out.StudyPlace(self.study_dir, self.sweep_dir, self.study_name, st.mask_url(self.storage_url),
                                    self.direction)
        self._check_composes()
        self._preflight()
        warm_entries = su.load_warm_starts(s.warm_start, app.warm_starts(), app.warm_start_keys)
        self._open_study(warm_entries)

    def _prepare_grid(self) -> None:
        """A grid sampler walks hydra.sweeper.params' values; a grid smaller than n_trials ends the search."""
        sampler = self.s.sampler
        self.grid_space = None
        if not str(sampler.get("_target_", "")).endswith("GridSampler"):
            return
        if sampler.get("search_space") is None:
            self.grid_space = sp.grid_values(self.space)
        size = math.prod(len(values) for values in (self.grid_space or sampler["search_space"]).values())
        if size < self.n_trials:
            log.info("grid sampler: the grid holds %d points, fewer than n_trials=%d: the search ends after %d",
                     size, self.n_trials, size)
            self.n_trials = size

    def _check_composes(self) -> None:
        """Compose one trial's config (mid-space values) so a bad key fails before any training."""
        point = {k: sp.midpoint(d) for k, d in self.space.distributions.items()}
        batch = [self.overrides(point, trial_id=0, number=0)]
        if self.reeval.enabled:
            batch.append(rv.overrides(self, point, 0))
        self.check_composes(batch)

    def _preflight(self) -> None:
        """hydra.sweeper.preflight: fn(cfg) on the first trial's composed config, before any study
        row or trial exists; its UserError stops the search."""
        if not self.s.preflight:
            return
        fn = load_callable(self.s.preflight, "preflight")
        point = {k: sp.midpoint(d) for k, d in self.space.distributions.items()}
        with self.trial_config(self.overrides(point, trial_id=0, number=0)) as task_cfg:
            try:
                fn(task_cfg)
            except BaseException as err:
                user = find_user_error(err)
                if user is not None:
                    raise UserError(f"pre-flight check ({self.s.preflight}) failed, nothing was trained: {user}") \
                        from None
                raise

    def _open_study(self, warm_entries) -> None:
        s = self.s
        self.retry = su.RetryLost(s.max_retries)
        self.storage = st.open_storage(self.storage_url, heartbeat_interval=s.heartbeat_interval,
                                       grace_period=s.grace_period, stale_callback=self.retry,
                                       outage_window=s.storage_outage_window)
        attrs = {"n_trials": int(self.n_trials), "search_space": self.space.describe(), **self.app.study_attrs()}
        self.study, created = su.open_study(self.storage, self.study_name, self.direction, self.fingerprint, attrs,
                                            sampler=su.make_sampler(s.sampler, self.grid_space),
                                            pruner=su.make_pruner(self.pruner_spec))
        self.study.set_user_attr("n_trials", int(self.n_trials))
        self.store = st.StudyStorage(self.study)
        if warm_entries:
            with self.store.claim_lock(self.storage_url):
                su.enqueue_warm_starts(self.study, warm_entries, self.space, self.app.warm_start_values)
        out.write_config(self.study_dir, self.config)
        self.registry = lv.WorkerRegistry(slots=self.local_slots).start()
        c = su.count(self.study.get_trials(deepcopy=False))
        log.info("study %s (%s) in %s: %d/%d finished, %d running, %d failed; %s over %d parameters; outputs in %s",
                 self.study_name, "new" if created else "resumed", st.mask_url(self.storage_url),
                 c.done(s.count_pruned), self.n_trials, c.running, c.failed, self.direction,
                 len(self.space.distributions), self.study_dir)

    # ------------------------------------------------------------------ overrides

    def overrides(self, params: dict, *, trial_id: int, number: int, threads: Optional[int] = None) -> list[str]:
        """One trial's overrides. Its identity goes once, to `hydra.sweeper.trial`: every launcher
        (basic, joblib, submitit) hands the trial its Hydra config, and any app reads it through
        autoft.search.trial.hydra_trial_identity. No key of the app's config is added."""
        fmt = sp.format_value
        budget = f",threads:{int(threads)}" if threads else ""
        # the outage window goes along: a trial in another process (joblib, SLURM) waits as long as its worker
        ident = (f"++hydra.sweeper.trial={{id:{trial_id},number:{number},study_name:{fmt(self.study_name)},"
                 f"storage:{fmt(self.storage_url)},storage_outage_window:{float(self.s.storage_outage_window):g}"
                 f"{budget}}}")
        return [*self.passthrough, *self.space.overrides(params),
                f"hydra.sweep.dir={fmt(str(self.study_dir))}", f"hydra.sweep.subdir=trial_{number}", ident]

    # ------------------------------------------------------------------ run

    def run(self) -> list:
        """The sweep loop in the slots until the study is complete; then, when the app plans one, the
        re-evaluation step in the same slots. The launcher's job returns; outputs are written
        however it ends."""
        self._t0 = time.time()
        self._done0 = su.count(self.study.get_trials(deepcopy=False)).done(self.s.count_pruned)
        try:
            self._in_slots(self._slot)
            if self.reeval.enabled and not self.stopping.is_set():
                self._in_slots(lambda i: rv.reevaluate(self))
        finally:
            self.write_outputs(final=True)
            if self.registry is not None:
                self.registry.stop()
        self._summary()
        return self.returns

    def _in_slots(self, body: Callable[[int], None]) -> None:
        """body(slot) in each slot (threads when several); the first error stops them all at once and
        what they hold is given back."""
        errors: list[BaseException] = []
        try:
            if self.slots == 1:
                return body(0)

            def guarded(i: int) -> None:
                try:
                    body(i)
                except BaseException as err:  # noqa: BLE001 (handed to the main thread)
                    errors.append(err)
                    self.stopping.set()
                    self.changed.set()

            threads = [threading.Thread(target=guarded, args=(i,), name=f"autoft-slot-{i}", daemon=True)
                       for i in range(self.slots)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads) and not errors:
                self.changed.wait(0.5)
        except KeyboardInterrupt:
            self.stopping.set()
            self._abandon_inflight()
            raise
        if errors:
            self._abandon_inflight()
            raise errors[0]

    @contextlib.contextmanager
    def holding(self, key, give_back: Callable[[], None]):
        """A slot holds a trial or a re-evaluation claim meanwhile: a search stopped by another slot
        (or an interrupt) calls give_back."""
        with self._lock:
            self._inflight[key] = give_back
        try:
            yield
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _abandon_inflight(self) -> None:
        with self._lock:
            held = list(self._inflight.values())
            self._inflight.clear()
        for give_back in held:
            with og.fail_fast():  # one try: stopping never waits for an outage to end
                give_back()

    def _slot(self, slot: int) -> None:
        # each slot has a Study object of its own (its own sampler; the storage shared)
        study = self.study if slot == 0 else self.store.load(
            sampler=su.make_sampler(self.s.sampler, self.grid_space), pruner=su.make_pruner(self.pruner_spec))
        while not self.stopping.is_set():
            claimed = self._claim(study)
            if claimed is None:
                break
            trial, heartbeat = claimed
            try:
                with self.holding(trial.number, lambda: self._interrupted(self.study, trial)):
                    self._run_trial(study, trial)
            finally:
                heartbeat.stop()

    def wait(self, announced: bool, message: str, *args) -> bool:
        """Log why this slot waits (once), then wait for another slot's news or poll_interval; True."""
        if not announced:
            log.info(message, *args)
        self.changed.wait(self.s.poll_interval)
        self.changed.clear()
        return True

    # ------------------------------------------------------------------ claiming a trial

    def _claim(self, study):
        s = self.s
        announced = False
        while not self.stopping.is_set():
            with self.store.claim_lock(self.storage_url) as claim:
                lv.fail_stale(study, grace_period=s.grace_period, retry=self.retry)
                trials = study.get_trials(deepcopy=False)
                c = su.count(trials)
                done = c.done(s.count_pruned)
                if done >= self.n_trials:
                    return None
                self._check_failures(c, trials)
                if done + c.running < self.n_trials:
                    trial = study.ask()
                    heartbeat = lv.trial_heartbeat(self.store, trial, s.heartbeat_interval,
                                                   label=f"trial {trial.number}",
                                                   progress_interval=s.progress_interval,
                                                   grace_period=s.grace_period)
                    try:
                        trial.set_user_attr("worker", lv.pid_tag())
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
                    # a claim lost to an outage (its connection died) serialised nothing: check as if unlocked
                    if claim.held() or not self._surplus(study, trial):
                        return trial, heartbeat
                    heartbeat.stop()
                    continue
            announced = self.wait(announced, "%d/%d trials finished and %d running elsewhere: waiting for them (a "
                                   "lost one is retried %ds after its last heartbeat)", done, self.n_trials,
                                   c.running, s.grace_period)
        return None

    def _check_failures(self, c, trials) -> None:
        """Stop the search when failures exceed max_failures or max_failure_rate x n_trials. Past the
        rate, the message quotes the last failure's error (hydra-optuna-sweeper re-raises it)."""
        n, rate = c.counted_failures, self.s.max_failure_rate
        allowed = int(float(rate) * self.n_trials + 1e-9) if rate is not None else None
        if n >= self.max_failures_n:
            limit = f"the limit hydra.sweeper.max_failures={self.max_failures_n}"
        elif allowed is not None and n > allowed:
            limit = (f"more than hydra.sweeper.max_failure_rate={rate} x n_trials={self.n_trials} ({allowed} "
                     f"allowed). The last: {su.last_failure(trials)}")
        else:
            return
        raise UserError(f"the search stopped: {n} trials failed (raised, diverged or returned NaN), {limit}. "
                        f"Their reasons are in {self.study_dir / 'trials.csv'}.")

    def _apply_threads(self) -> Optional[int]:
        """The thread budget for the next trial (hydra.sweeper.threads); applied here when trials run
        in this process, and by the task (threads.BudgetedTask) in a joblib worker process."""
        reg = self.registry
        if self.threads is None or reg is None or not reg.slots:
            return None  # trials on other nodes: their launcher's resources (cpus_per_task) govern
        n = reg.budget(self.threads)
        if n is None:
            return None
        if n != reg.threads:
            why = (f" ({cpu_count()} cores, {reg.concurrent} concurrent trial(s) on this machine, "
                   f"{reg.slots} of them this worker's)" if self.threads == "auto" else " (hydra.sweeper.threads)")
            log.info("threads per trial: %d%s", n, why)
        reg.threads = apply_threads(n) if self.in_process else n
        return n

    def _suggest(self, trial) -> None:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        for key, d in self.space.distributions.items():
            if isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(key, d.choices)
            else:
                suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
                suggest(key, d.low, d.high, step=d.step, log=d.log)
        if self.custom_fn is not None:  # hydra.sweeper.custom_search_space: more parameters, conditional ones
            self.custom_fn(self.config, trial)

    def _surplus(self, study, trial) -> bool:
        """Storages without a claim lock: after asking, the later of two racing trials gives way."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
        ahead = running.index(trial.number) if trial.number in running else 0
        if su.count(trials).done(self.s.count_pruned) + ahead + 1 <= self.n_trials:
            return False
        if self._fail(study, trial, "surplus", "surplus: other workers already run the study's last trials") \
                and self.store.trial(trial).system_attrs.get("fixed_params"):
            su.requeue(study, self.store.trial(trial), max_retries=self.s.max_retries,
                       why="surplus", count_retry=False)
        return True

    # ------------------------------------------------------------------ one trial

    def launch_job(self, overrides: list, job_idx: int, n_objectives: int = 1) -> Outcome:
        o = run_job(self.launch, overrides, job_idx, n_objectives)
        if o.job is not None:
            with self._lock:
                self.returns.append(o.job)
        return o

    def bad_return(self, o: Outcome, where: str = "") -> UserError:
        want = (f"{self.n_objectives} objectives (a list or tuple of floats, one per direction)"
                if self.multi else "the objective (a float)")
        hint = "" if self.multi or where else "; with train.py the search needs phase=search (search=autoft sets it)"
        return UserError(f"the task function returned {o.returned!r} instead of {want}{where}{hint}")

    def _run_trial(self, study, trial) -> None:
        import optuna

        with self._lock:
            threads = self._threads_of.pop(trial.number, None)
        ovs = self.overrides(trial.params, trial_id=self.store.trial_id(trial), number=trial.number, threads=threads)
        try:
            o = self.launch_job(ovs, trial.number, self.n_objectives)
        except KeyboardInterrupt:
            self._interrupted(study, trial)
            raise
        if o.kind == "lost":
            if self._fail(study, trial, "lost", o.reason):
                su.requeue(study, self.store.trial(trial), max_retries=self.s.max_retries, why="lost job")
        elif o.kind == "storage":  # not the trial's fault: given back when the storage allows, and this worker stops
            self._interrupted(study, trial)
            raise o.error
        elif o.kind == "launcher":
            self._fail(study, trial, "error", o.reason)
            raise o.error
        elif o.kind in ("bad_return", "user_error"):
            self._fail(study, trial, "user_error", o.reason)
            self.stopping.set()
            raise self.bad_return(o) if o.kind == "bad_return" else o.error
        else:
            if o.extra:
                self.store.set_trial_user_attrs(trial, {k: v for k, v in o.extra.items()
                                                        if isinstance(v, (int, float, str, bool))})
            if o.kind == "complete":
                self._tell(study, trial, values=o.values if self.multi else o.values[0])
            elif o.kind == "pruned":
                self._tell(study, trial, state=optuna.trial.TrialState.PRUNED)
            else:  # nan | diverged | error: recorded, the search goes on
                if o.traceback:
                    log.warning("trial %d raised:\n%s", trial.number, o.traceback)
                self._fail(study, trial, o.kind, o.reason)
        self._progress(study, trial)

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

        if self.store.set_trial_user_attrs(trial, {su.FAIL_REASON: reason[:2000], su.FAIL_KIND: kind}):
            return self._tell(study, trial, state=optuna.trial.TrialState.FAIL)
        return False

    def _interrupted(self, study, trial) -> None:
        """Give a trial back unfinished: FAIL (kind 'interrupted') and its parameters re-queued. One
        try (an interrupt never waits for an outage to end): with the storage away the trial stays
        RUNNING and the next worker retries it as lost."""
        try:
            with og.fail_fast():
                if self._fail(study, trial, "interrupted", "interrupted before it finished; parameters re-queued"):
                    su.requeue(study, self.store.trial(trial), max_retries=self.s.max_retries, why="interrupted",
                               count_retry=False)
        except Exception as err:  # never mask the interrupt
            if og.unreachable(err):  # the outage has its own lines (and the stop its one message)
                log.debug("trial %d left RUNNING: the study storage is unreachable", trial.number)
            else:
                log.warning("could not record interrupted trial %d: %s", trial.number, err)

    # ------------------------------------------------------------------ progress, outputs, summary

    def _progress(self, study, trial) -> None:
        c = su.count(study.get_trials(deepcopy=False))
        done = c.done(self.s.count_pruned)
        t = self.store.trial(trial)
        what = t.state.name
        if what == "COMPLETE":
            what = ", ".join(f"{v:.6g}" for v in t.values)
        elif what == "FAIL":
            what += f" ({su.fail_reason(t)})"
        elif what == "PRUNED" and t.last_step is not None:
            what += f" at step {t.last_step}"
        if not c.complete:
            best_txt = "no complete trial yet"
        elif self.multi:
            best_txt = f"Pareto front of {len(study.best_trials)} trial(s)"
        else:
            best = study.best_trial
            best_txt = f"best {best.value:.6g} (trial {best.number})"
        finished = done - self._done0
        eta = (self.n_trials - done) * (time.time() - self._t0) / finished if finished > 0 else None
        log.info("trial %d: %s | %s | %d/%d finished, %d running, %d failed | ETA %s", t.number, what, best_txt,
                 done, self.n_trials, c.running, c.failed, su.format_eta(eta) if done < self.n_trials else "0:00:00")
        self.write_outputs(final=False)
        self.changed.set()

    def write_outputs(self, final: bool) -> None:
        """The files beside the study (autoft.search.outputs); with re-evaluation, the chosen trial as a
        study attribute (reevaluation.record_winner); at the end, plots; then the app's own outputs
        (SearchApp.write_outputs: autoft's best_hparams.yaml, and at the end its study's W&B run)."""
        study = self.study
        if study is None:
            return
        if self.store.outage is not None and self.store.outage.down:
            log.debug("study outputs not written: the study storage is unreachable (a rerun writes them)")
            return
        try:
            sel, recs = (None, None) if self.multi else rv.selection(study, self.reeval)
            out.write_study_outputs(study, self.place, selection=sel, reevaluations=recs, plots=final and self.s.plots)
            if recs is not None and sel.winner is not None:
                rv.record_winner(study, sel)
            if sel is not None and sel.winner is not None:
                self.app.write_outputs(study, self.place, sel, recs, final)
        except og.StorageUnreachable:  # the worker stops with that message; a rerun writes them
            log.debug("study outputs not written: the study storage is unreachable")
        except Exception as err:  # outputs are derived from the storage: never fail the search for them
            log.warning("study outputs not fully written: %s", err)

    def _summary(self) -> None:
        study, n = self.study, self.n_trials
        c = su.count(study.get_trials(deepcopy=False))
        done = c.done(self.s.count_pruned)
        if self.multi:
            front = study.best_trials
            log.info("study %s: %d/%d finished (%d complete, %d failed); Pareto front (%s): %s", self.study_name,
                     done, n, c.complete, c.failed, ", ".join(self.direction),
                     "; ".join(f"trial {t.number}: " + ", ".join(f"{v:.6g}" for v in t.values) for t in front)
                     or "empty")
        elif not c.complete:
            log.info("study %s: %d/%d finished, no complete trial", self.study_name, done, n)
            return
        else:
            best = study.best_trial
            log.info("study %s: %d/%d finished (%d complete, %d pruned, %d failed); best %.6g at trial %d",
                     self.study_name, done, n, c.complete, c.pruned, c.failed, best.value, best.number)
            if self.reeval.enabled:
                rv.log_summary(rv.selection(study, self.reeval)[0], self.reeval)
            for what, path in self.app.summary_files(self.place).items():
                log.info("%s: %s", what, path)
        log.info("results: %s", self.sweep_dir / "optimization_results.yaml")
