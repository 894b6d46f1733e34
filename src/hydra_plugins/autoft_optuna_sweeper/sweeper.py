"""`autoft_optuna`: a Hydra sweeper on current Optuna (ask/tell), built for long, shared searches.

    python train.py -m search=autoft dataset=iwildcam

What it does differently from the published hydra-optuna-sweeper:
- `n_trials` is the study's total of finished trials (autoft.search.study explains the count):
  rerunning the same command resumes the study; after completion a rerun trains nothing;
- one trial at a time per slot, asked when the slot is free (no batch barrier); any number of
  worker processes or nodes join the same study through its storage, and a claim lock keeps them
  from overshooting n_trials;
- a trial's heartbeat runs while it trains; trials of dead workers are marked FAIL and their
  parameters retried;
- a trial that raises or diverges is FAILED with its reason and the search goes on; a UserError
  (the user's config) stops everything at once with its message;
- the study name derives from the config, so another config never mixes into a study;
- top-k re-evaluation (`search.reevaluate_top_k`): once the study is complete, the k best trials are
  re-run with fresh seeds and the winner is chosen on the re-evaluated mean (autoft.search.reevaluation
  explains where the records live and how a killed re-evaluation resumes).

Trials run through the configured Hydra launcher; trial directories are
<sweep dir>/<study name>/trial_<trial number>. The heavy imports happen inside methods: Hydra
imports this module on every run of train.py to discover plugins.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, List, Optional

from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from autoft.errors import UserError

log = logging.getLogger(__name__)


class SearchStopped(UserError, CompactHydraException):
    """A UserError that Hydra prints as its message alone (no traceback)."""


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _is_lost_job(err: BaseException) -> bool:
    # submitit raises these when the cluster killed, preempted or timed out the job
    return type(err).__module__.startswith("submitit") and type(err).__name__ in (
        "UncompletedJobError", "FailedJobError", "FailedSubmissionError")


class AutoFTOptunaSweeper(Sweeper):
    def __init__(self, direction: Optional[str] = None, study_name: Optional[str] = None,
                 sweep_dir: Optional[str] = None, storage: Optional[str] = None, n_trials: int = 20, n_jobs: int = 1, sampler: Any = None,
                 params: Any = None, heartbeat_interval: int = 20, grace_period: int = 60, max_retries: int = 2,
                 max_failures: Optional[int] = None, count_pruned: bool = True, warm_start: Any = None,
                 plots: bool = True, poll_interval: float = 5.0, fingerprint_exclude: Any = None) -> None:
        super().__init__()
        self.direction_cfg, self.study_name_cfg, self.storage_cfg = direction, study_name, storage
        self.sweep_dir_cfg = sweep_dir
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg = _plain(sampler) or {}
        self.params = _plain(params) or {}
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retries, self.max_failures, self.count_pruned = int(max_retries), max_failures, bool(count_pruned)
        self.warm_start = list(_plain(warm_start) or [])
        self.plots, self.poll_interval = bool(plots), float(poll_interval)
        self.fingerprint_exclude = list(_plain(fingerprint_exclude) or [])
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self._stop = threading.Event()
        self._changed = threading.Event()  # a slot finished a trial: waiting slots look again
        self._lock = threading.Lock()
        self._inflight: dict[int, Any] = {}  # trial number -> trial, across slots
        self._inflight_reeval: dict[int, tuple] = {}  # trial number -> (claim, heartbeat) of this process
        self._returns: list = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------ sweep

    def sweep(self, arguments: List[str]) -> Any:
        try:
            self._prepare(arguments)
            return self._run()
        except SearchStopped:
            raise
        except UserError as err:  # Hydra prints the message alone and exits with status 1
            raise SearchStopped(str(err)) from None

    def _prepare(self, arguments: List[str]) -> None:
        import optuna  # noqa: F401  (fail here, not in a thread, if it is missing)

        from autoft.search import space as sp
        from autoft.search import storage as st
        from autoft.search import study as su

        st.quiet_optuna()
        cfg = self.config
        search = OmegaConf.select(cfg, "search", default=None) or {}
        losses = search.get("losses") if search else None
        if losses is None:
            losses = OmegaConf.select(cfg, "method.search_losses", default=None)
        self.space, self.passthrough = sp.parse_space(self.params, arguments, config=cfg,
                                                      losses=_plain(losses) if losses is not None else None)
        if not self.space.distributions:
            raise UserError("search space: hydra.sweeper.params holds no searched parameter (interval, range or "
                            "choice); nothing to search")
        self.pruner_spec = _plain(search.get("pruner")) if search else None
        su.make_pruner(self.pruner_spec)  # validate before any trial
        if self.pruner_spec not in (None, "none") and search and not int(search.get("eval_every", 0) or 0):
            raise UserError(f"search.pruner={self.pruner_spec} needs intermediate reports: set search.eval_every "
                            "to the number of inner steps between OOD-val evaluations (e.g. search.eval_every=10)")
        self.direction = su.direction_for(self.direction_cfg, cfg)
        self._prepare_reevaluation(cfg, search)
        for name, value, low in (("n_trials", self.n_trials, 1), ("n_jobs", self.n_jobs, 1),
                                 ("heartbeat_interval", self.heartbeat_interval, 1), ("max_retries", self.max_retries, 0)):
            if not isinstance(value, int) or value < low:
                raise UserError(f"hydra.sweeper.{name} must be an integer >= {low}, got {value!r}")
        if not self.grace_period or self.grace_period <= self.heartbeat_interval:
            raise UserError(f"hydra.sweeper.grace_period ({self.grace_period}) must exceed heartbeat_interval "
                            f"({self.heartbeat_interval}); 3x is a safe choice")
        self.max_failures_n = int(self.max_failures) if self.max_failures is not None else int(self.n_trials)
        if self.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
            raise UserError("hydra.sweeper.n_jobs > 1 needs a launcher that runs trials in other processes "
                            "(hydra/launcher=slurm or submitit_local). On one machine, start one worker per "
                            "GPU instead: the same command with device=cuda:0, device=cuda:1, ...")

        on_cli = any(str(o).startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra)
        self.sweep_dir = Path(str(cfg.hydra.sweep.dir) if on_cli or not self.sweep_dir_cfg
                              else self.sweep_dir_cfg).absolute()
        self.storage_url = st.normalize_url(self.storage_cfg or st.default_storage_url(self.sweep_dir))
        st.storage_kind(self.storage_url)  # validate the URL's form
        self.fingerprint = su.fingerprint(cfg, space=self.space, direction=self.direction, sampler=self.sampler_cfg,
                                          pruner=self.pruner_spec, exclude=self.fingerprint_exclude)
        self.study_name = self.study_name_cfg or su.study_name_for(cfg, self.fingerprint)
        self.study_dir = self.sweep_dir / self.study_name.replace("/", "_")
        self._check_composes()
        self.warm_entries = su.load_warm_starts(self.warm_start, search.get("warm_start") if search else None)

        self.retry = su.RetryLost(self.max_retries)
        self.storage = st.open_storage(self.storage_url, heartbeat_interval=self.heartbeat_interval,
                                       grace_period=self.grace_period, stale_callback=self.retry)
        attrs = {"n_trials": int(self.n_trials), "search_space": self.space.describe(),
                 "metric": OmegaConf.select(cfg, "dataset.metric", default=None),
                 "dataset": OmegaConf.select(cfg, "dataset.name", default=None),
                 "model": OmegaConf.select(cfg, "model.name", default=None),
                 "method": OmegaConf.select(cfg, "method.name", default=None)}
        self.study, created = su.open_study(self.storage, self.study_name, self.direction, self.fingerprint, attrs,
                                            sampler=su.make_sampler(self.sampler_cfg),
                                            pruner=su.make_pruner(self.pruner_spec))
        self.study.set_user_attr("n_trials", int(self.n_trials))
        if self.warm_entries:
            with st.claim_lock(self.storage_url, self.storage, self.study_name):
                base_lr = OmegaConf.select(cfg, "trainer.base_lr", default=None)
                su.enqueue_warm_starts(self.study, self.warm_entries, self.space, base_lr)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        from autoft.reporting.io import atomic_write_text

        atomic_write_text(self.study_dir / "multirun.yaml", OmegaConf.to_yaml(cfg))
        c = su.count(self.study.get_trials(deepcopy=False))
        log.info("study %s (%s) in %s: %d/%d finished, %d running, %d failed; %s over %d parameters; outputs in %s",
                 self.study_name, "new" if created else "resumed", st.mask_url(self.storage_url),
                 c.done(self.count_pruned), self.n_trials, c.running, c.failed, self.direction,
                 len(self.space.distributions), self.study_dir)

    def _prepare_reevaluation(self, cfg, search) -> None:
        """Top-k re-evaluation settings and its fresh seeds (new to the search: checked here)."""
        from autoft.search import reevaluation as rv
        from autoft.search.space import SEED_KEY

        self.reeval = rv.settings_from(search)
        fixed = {k.lstrip("+"): v for k, v in self.space.fixed.items()}
        try:
            base = int(fixed.get(SEED_KEY, OmegaConf.select(cfg, "seed", default=0) or 0))
            k = int(fixed.get("search.seeds_per_trial", search.get("seeds_per_trial", 1) if search else 1) or 1)
        except (TypeError, ValueError):
            base, k = 0, 1  # not integers: train.py itself reports that
        self.reeval_seeds = rv.fresh_seeds(base, self.reeval)
        if self.reeval.enabled:
            rv.check_fresh(self.reeval_seeds, rv.search_seeds(base, k, self.space.distributions.get(SEED_KEY)))

    def _check_composes(self) -> None:
        """Compose one trial's config (mid-space values) so a bad key fails before any training."""
        from hydra.errors import HydraException

        from autoft.search.space import midpoint

        point = {k: midpoint(d) for k, d in self.space.distributions.items()}
        batch = [self._overrides(point, trial_id=0, number=0)]
        if self.reeval.enabled:
            batch.append(self._reeval_overrides(point, number=0))
        try:
            self.validate_batch_is_legal(batch)
        except HydraException as err:
            raise UserError(f"a trial's config does not compose: {err}") from None

    def _overrides(self, params: dict, *, trial_id: int, number: int) -> list[str]:
        from autoft.search.space import format_value

        return [*self.passthrough, *self.space.overrides(params),
                f"hydra.sweep.dir={format_value(str(self.study_dir))}", f"hydra.sweep.subdir=trial_{number}",
                f"++search.trial_id={trial_id}", f"++search.trial_number={number}",
                f"++search.study_name={format_value(self.study_name)}",
                f"++search.storage={format_value(self.storage_url)}"]

    def _reeval_overrides(self, params: dict, *, number: int) -> list[str]:
        """A re-evaluation of trial `number`: its hyperparameters, the fresh seeds, no trial identity
        (it is not a search trial: nothing reports to the study from inside it)."""
        from autoft.search.space import SEED_KEY, format_value

        replaced = {SEED_KEY, "search.seeds_per_trial", "search.reevaluation_of"}
        keep = [o for o in [*self.passthrough, *self.space.overrides({k: v for k, v in params.items()
                                                                      if k != SEED_KEY})]
                if o.split("=", 1)[0].lstrip("+~") not in replaced]
        return [*keep, f"hydra.sweep.dir={format_value(str(self.study_dir))}",
                f"hydra.sweep.subdir=reevaluation/trial_{number}", f"++seed={self.reeval_seeds[0]}",
                f"++search.seeds_per_trial={len(self.reeval_seeds)}", f"++search.reevaluation_of={number}"]

    def _run(self) -> Any:
        self._t0 = time.time()
        from autoft.search.study import count

        self._done0 = count(self.study.get_trials(deepcopy=False)).done(self.count_pruned)
        errors: list[BaseException] = []
        try:
            if self.n_jobs == 1:
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
                           for i in range(self.n_jobs)]
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
        import optuna

        from autoft.search.study import make_pruner, make_sampler

        return optuna.load_study(study_name=self.study_name, storage=self.study._storage,
                                 sampler=make_sampler(self.sampler_cfg), pruner=make_pruner(self.pruner_spec))

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
            with st.claim_lock(self.storage_url, study._storage, self.study_name):
                su.fail_stale(study, grace_period=self.grace_period, retry=self.retry)
                c = su.count(study.get_trials(deepcopy=False))
                done = c.done(self.count_pruned)
                if done >= self.n_trials:
                    return None
                if c.counted_failures >= self.max_failures_n:
                    raise UserError(f"the search stopped: {c.counted_failures} trials failed (raised, diverged or "
                                    f"returned NaN), the limit hydra.sweeper.max_failures={self.max_failures_n}. "
                                    f"Their reasons are in {self.study_dir / 'trials.csv'}.")
                if done + c.running < self.n_trials:
                    trial = study.ask()
                    heartbeat = st.Heartbeat(study._storage, trial._trial_id, self.heartbeat_interval).start()
                    try:
                        trial.set_user_attr("worker", st.pid_tag())
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

    def _suggest(self, trial) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        for key, d in self.space.distributions.items():
            if isinstance(d, FloatDistribution):
                trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
            elif isinstance(d, IntDistribution):
                trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
            elif isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(key, d.choices)

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
                and study._storage.get_trial(trial._trial_id).system_attrs.get("fixed_params"):
            su.requeue(study, study._storage.get_trial(trial._trial_id), max_retries=self.max_retries,
                       why="surplus", count_retry=False)
        return True

    # ------------------------------------------------------------------ one trial

    def _run_trial(self, study, trial) -> None:
        from hydra.core.utils import JobStatus
        import optuna

        from autoft.errors import TrialDiverged
        from autoft.search.outputs import finite

        overrides = self._overrides(trial.params, trial_id=trial._trial_id, number=trial.number)
        try:
            ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except KeyboardInterrupt:
            self._interrupted(study, trial)
            raise
        except BaseException as err:
            if _is_lost_job(err):
                from autoft.search.study import requeue

                if self._fail(study, trial, "lost", f"lost: the cluster job ended without a result ({err})"):
                    requeue(study, study._storage.get_trial(trial._trial_id), max_retries=self.max_retries,
                            why="lost job")
                self._progress(study, trial)
                return
            self._fail(study, trial, "error", f"launcher: {type(err).__name__}: {err}")
            raise
        with self._lock:
            self._returns.append(ret)
        if ret.status == JobStatus.COMPLETED:
            value, extra = ret._return_value, {}
            if isinstance(value, dict):
                extra = {k: v for k, v in value.items() if k != "objective"}
                value = value.get("objective")
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
                self._fail(study, trial, "user_error", f"the task returned {value!r}, not an objective")
                raise UserError(f"the task function returned {value!r} instead of the objective (a float); with "
                                "train.py the search needs phase=search (search=autoft sets it)")
            value = float(value)
            if extra:
                self._set_attrs(study, trial, {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))})
            if not finite(value):
                self._fail(study, trial, "nan", f"objective is {value}")
            else:
                self._tell(study, trial, values=value)
        else:
            exc = ret._return_value
            if isinstance(exc, optuna.TrialPruned):
                self._tell(study, trial, state=optuna.trial.TrialState.PRUNED)
            elif isinstance(exc, UserError):
                self._fail(study, trial, "user_error", f"{type(exc).__name__}: {exc}")
                self._stop.set()
                raise exc
            elif isinstance(exc, TrialDiverged):
                self._fail(study, trial, "diverged", f"diverged: {exc}")
            else:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                log.warning("trial %d raised:\n%s", trial.number, tb.rstrip())
                self._fail(study, trial, "error", f"{type(exc).__name__}: {exc}")
        self._progress(study, trial)

    def _set_attrs(self, study, trial, attrs: dict) -> bool:
        import optuna

        try:
            for k, v in attrs.items():
                study._storage.set_trial_user_attr(trial._trial_id, k, v)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

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
                requeue(study, study._storage.get_trial(trial._trial_id), max_retries=self.max_retries,
                        why="interrupted", count_retry=False)
        except Exception as err:  # never mask the interrupt
            log.warning("could not record interrupted trial %d: %s", trial.number, err)

    # ------------------------------------------------------------------ top-k re-evaluation

    def _reevaluate(self, study) -> None:
        """Claim and run missing re-evaluations of the top-k trials until none is left here; then
        wait for those running elsewhere (a lost one is taken over after the grace period)."""
        from autoft.search import reevaluation as rv
        from autoft.search import storage as st

        announced = False
        while not self._stop.is_set():
            with st.claim_lock(self.storage_url, study._storage, self.study_name):
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

        import optuna
        from hydra.core.utils import JobStatus

        from autoft.errors import TrialDiverged
        from autoft.search import reevaluation as rv
        from autoft.search.outputs import finite

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
        if ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            if isinstance(value, dict):
                value = value.get("objective")
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
                self._finish_reeval(study, n, claim, rv.released_record(claim), heartbeat)
                raise UserError(f"the task function returned {value!r} instead of the objective (a float) in the "
                                f"re-evaluation of trial {n}")
            value = float(value)
            if not finite(value):
                record = rv.failed_record(claim, "nan", f"objective is {value}")
            else:
                info = None
                path = job_dir / "trial.json"
                if path.is_file() and path.stat().st_mtime >= t0 - 1:  # this run's, not a killed run's
                    try:
                        info = json.loads(path.read_text())
                    except (OSError, ValueError):
                        info = None
                record = rv.result_record(claim, value, info, time.time() - t0)
        else:
            exc = ret._return_value
            if isinstance(exc, UserError):
                self._finish_reeval(study, n, claim, rv.released_record(claim), heartbeat)
                self._stop.set()
                raise exc
            if isinstance(exc, TrialDiverged):
                record = rv.failed_record(claim, "diverged", f"diverged: {exc}")
            else:
                if not isinstance(exc, optuna.TrialPruned):
                    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    log.warning("re-evaluation of trial %d raised:\n%s", n, tb.rstrip())
                record = rv.failed_record(claim, "error", f"{type(exc).__name__}: {exc}")
        self._finish_reeval(study, n, claim, record, heartbeat)
        self._reeval_progress(study, trial, record)

    def _finish_reeval(self, study, number: int, claim: dict, record: dict, heartbeat=None) -> None:
        """Write a re-evaluation's outcome, unless another worker took the claim over meanwhile."""
        from autoft.search import reevaluation as rv
        from autoft.search import storage as st

        if heartbeat is not None:
            heartbeat.stop()  # joined first: a late heartbeat must not turn the outcome back into 'running'
        try:
            with st.claim_lock(self.storage_url, study._storage, self.study_name):
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

    # ------------------------------------------------------------------ reporting

    def _progress(self, study, trial) -> None:
        from autoft.search.study import count, fail_reason, format_eta

        trials = study.get_trials(deepcopy=False)
        c = count(trials)
        done = c.done(self.count_pruned)
        t = study._storage.get_trial(trial._trial_id)
        what = f"{t.value:.6g}" if t.state.name == "COMPLETE" else t.state.name
        if t.state.name == "FAIL":
            what += f" ({fail_reason(t)})"
        elif t.state.name == "PRUNED":
            what += f" at step {t.last_step}" if t.last_step is not None else ""
        try:
            best = study.best_trial
            best_txt = f"best {best.value:.6g} (trial {best.number})"
        except ValueError:
            best_txt = "no complete trial yet"
        finished = done - self._done0
        elapsed = time.time() - self._t0
        eta = (self.n_trials - done) * elapsed / finished if finished > 0 else None
        log.info("trial %d: %s | %s | %d/%d finished, %d running, %d failed | ETA %s", t.number, what, best_txt,
                 done, self.n_trials, c.running, c.failed, format_eta(eta) if done < self.n_trials else "0:00:00")
        self._write_outputs(final=False)
        self._changed.set()

    def _write_outputs(self, final: bool) -> None:
        from optuna.trial import TrialState

        from autoft.search import outputs as out
        from autoft.search.storage import mask_url

        study = getattr(self, "study", None)
        if study is None:
            return
        try:
            trials = study.get_trials(deepcopy=False)
            sel, recs = self._selection(study, trials)
            chosen = sel.winner.number if sel.winner is not None else None
            out.write_trials_csv(self.study_dir / "trials.csv", trials, reevaluations=recs, chosen=chosen)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if complete and sel.winner is not None:
                hp = out.best_hparams(self.config, sel.winner, study_name=self.study_name,
                                      storage=mask_url(self.storage_url), direction=self.direction,
                                      n_complete=len(complete), selection=sel if self.reeval.enabled else None)
                out.write_best_hparams(self.study_dir / "best_hparams.yaml", hp)
                # the study last run in this sweep dir: what `hparams=<sweep dir>/best_hparams.yaml` reads
                out.write_best_hparams(self.sweep_dir / "best_hparams.yaml", hp)
                if self.reeval.enabled:  # readers of the storage: autoft.search.reevaluation.chosen_trial_number
                    from autoft.search.reevaluation import WINNER_ATTR

                    winner = {"trial_number": int(sel.winner.number), **sel.summary()} if sel.complete else None
                    if study.user_attrs.get(WINNER_ATTR) != winner:
                        study.set_user_attr(WINNER_ATTR, winner)
            if final and self.plots:
                out.write_plots(study, self.study_dir / "plots", reevaluations=recs, chosen=chosen)
        except Exception as err:  # outputs are derived from the storage: never fail the search for them
            log.warning("study outputs not fully written: %s", err)

    def _selection(self, study, trials):
        """The trial best_hparams.yaml holds (re-evaluated winner, or the search's best) and the records."""
        from autoft.search import reevaluation as rv

        recs = rv.records(study) if self.reeval.enabled else None  # None: no re-evaluation columns
        return rv.select(trials, recs or {}, self.direction, self.reeval, self.reeval_seeds, self.max_retries), recs

    def _summary(self) -> None:
        from autoft.search.study import count

        c = count(self.study.get_trials(deepcopy=False))
        try:
            best = self.study.best_trial
        except ValueError:
            log.info("study %s: %d/%d finished, no complete trial", self.study_name, c.done(self.count_pruned),
                     self.n_trials)
            return
        log.info("study %s: %d/%d finished (%d complete, %d pruned, %d failed); best %.6g at trial %d",
                 self.study_name, c.done(self.count_pruned), self.n_trials, c.complete, c.pruned, c.failed,
                 best.value, best.number)
        if self.reeval.enabled:
            sel, _ = self._selection(self.study, self.study.get_trials(deepcopy=False))
            log.info("top-%d re-evaluation with seeds %s (trial: search score -> re-evaluated mean):",
                     self.reeval.top_k, ", ".join(map(str, self.reeval_seeds)))
            for e in sel.summary()["candidates"]:
                after = (f"{e['reevaluated_objective']:.6g}" if "reevaluated_objective" in e
                         else f"{e['state']}" + (f" ({e['fail_reason']})" if e.get("fail_reason") else ""))
                mark = "  <- chosen" if sel.winner is not None and e["trial_number"] == sel.winner.number else ""
                log.info("  trial %d: %.6g -> %s%s", e["trial_number"], e["search_objective"], after, mark)
            if sel.note:
                log.info("%s", sel.note)
        log.info("best hyperparameters: %s", self.study_dir / "best_hparams.yaml")
