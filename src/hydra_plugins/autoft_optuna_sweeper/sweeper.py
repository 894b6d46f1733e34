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

Modules: config.py (schema, sampler group), sweeper.py (Hydra glue: setup, the study, pre-flight,
trial overrides), driver.py (the search driver: slots, claims, in-flight trials), reevaluate.py (top-k re-evaluation), report.py (progress lines and study
outputs), util.py; autoft.search.outcome classifies what a job returned (trials and
re-evaluations alike), autoft.search.workers keeps worker records and thread budgets,
autoft.search.storage opens storages and holds StudyStorage, the one wrapper of Optuna's private
storage access (trials by id, heartbeats, stale trials, records, the claim lock): the sweeper uses
nothing else of Optuna's internals.

Trials run through the configured Hydra launcher; trial directories are
<sweep dir>/<study name>/trial_<trial number>. The heavy imports happen inside methods: Hydra
imports this module on every run of train.py to discover plugins.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, List, Optional

from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from autoft.errors import UserError
from autoft.search.outcome import find_user_error
from hydra_plugins.autoft_optuna_sweeper.compat import space_params
from hydra_plugins.autoft_optuna_sweeper.driver import SearchDriverMixin
from hydra_plugins.autoft_optuna_sweeper.reevaluate import ReevaluationMixin
from hydra_plugins.autoft_optuna_sweeper.report import ReportingMixin
from hydra_plugins.autoft_optuna_sweeper.util import plain as _plain

log = logging.getLogger(__name__)


class SearchStopped(UserError, CompactHydraException):
    """A UserError that Hydra prints as its message alone (no traceback)."""


def _load_callable(path: str, what: str):
    """A function from a dotpath. `fn`, `__main__.fn` or `.<script stem>.fn` name one in the app's
    own script (hydra-optuna-sweeper's examples write `.custom-search-space-objective.configure`)."""
    import importlib
    import sys

    module_name, _, name = str(path).lstrip(".").rpartition(".")
    main = sys.modules.get("__main__")
    stem = Path(getattr(main, "__file__", "") or "").stem
    try:
        if not module_name or module_name in ("__main__", stem):
            module = main
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"hydra.sweeper.{what} '{path}' cannot be imported: {err}") from None
    if not callable(fn):
        raise UserError(f"hydra.sweeper.{what} '{path}' is not a function")
    return fn


class AutoFTOptunaSweeper(SearchDriverMixin, ReevaluationMixin, ReportingMixin, Sweeper):
    def __init__(self, direction: Optional[str] = None, study_name: Optional[str] = None,
                 sweep_dir: Optional[str] = None, storage: Optional[str] = None, n_trials: int = 20, n_jobs: int = 1, sampler: Any = None,
                 params: Any = None, heartbeat_interval: int = 20, grace_period: int = 60, max_retries: int = 2,
                 max_failures: Optional[int] = None, count_pruned: bool = True, warm_start: Any = None,
                 plots: bool = True, poll_interval: float = 5.0, fingerprint_exclude: Any = None,
                 custom_search_space: Optional[str] = None, max_failure_rate: Optional[float] = None,
                 threads: Any = "auto", progress_interval: float = 120.0, preflight: Optional[str] = None,
                 trial: Any = None, search_space: Any = None) -> None:
        super().__init__()
        self.direction_cfg, self.study_name_cfg, self.storage_cfg = direction, study_name, storage
        self.sweep_dir_cfg = sweep_dir
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg = _plain(sampler) or {}
        self.params, self.search_space = _plain(params), _plain(search_space)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retries, self.max_failures, self.count_pruned = int(max_retries), max_failures, bool(count_pruned)
        self.warm_start = list(_plain(warm_start) or [])
        self.plots, self.poll_interval = bool(plots), float(poll_interval)
        self.fingerprint_exclude = list(_plain(fingerprint_exclude) or [])
        self.custom_search_space, self.max_failure_rate = custom_search_space, max_failure_rate
        self.threads_cfg, self.progress_interval, self.preflight = _plain(threads), float(progress_interval or 0), preflight
        self.registry = None
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self._stop = threading.Event()
        self._changed = threading.Event()  # a slot finished a trial: waiting slots look again
        self._lock = threading.Lock()
        self._inflight: dict[int, Any] = {}  # trial number -> trial, across slots
        self._inflight_reeval: dict[int, tuple] = {}  # trial number -> (claim, heartbeat) of this process
        self._returns: list = []
        self._threads_of: dict[int, int] = {}  # trial number -> its thread budget (trials on this machine)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from autoft.search.workers import BudgetedTask

        self.config, self.hydra_context = config, hydra_context
        # the task applies its trial's thread budget in whichever process the launcher runs it
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=BudgetedTask(task_function), config=config)

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
        from autoft.search import workers as wk

        st.quiet_optuna()
        cfg = self.config
        search = OmegaConf.select(cfg, "search", default=None) or {}
        losses = search.get("losses") if search else None
        if losses is None:
            losses = OmegaConf.select(cfg, "method.search_losses", default=None)
        self.params = space_params(self.params, self.search_space) or {}  # the deprecated search_space too
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
        self.multi = isinstance(self.direction, list)
        # the trial identity goes into the app's `search` block only when it has one (autoft)
        self.autoft_app = bool(search) and "trial_id" in search
        self._prepare_reevaluation(cfg, search)
        if self.multi and self.reeval.enabled:
            raise UserError("search.reevaluate_top_k needs a single objective; this study has directions "
                            f"{self.direction}")
        for name, value, low in (("n_trials", self.n_trials, 1), ("n_jobs", self.n_jobs, 1),
                                 ("heartbeat_interval", self.heartbeat_interval, 1), ("max_retries", self.max_retries, 0)):
            if not isinstance(value, int) or value < low:
                raise UserError(f"hydra.sweeper.{name} must be an integer >= {low}, got {value!r}")
        if not self.grace_period or self.grace_period <= self.heartbeat_interval:
            raise UserError(f"hydra.sweeper.grace_period ({self.grace_period}) must exceed heartbeat_interval "
                            f"({self.heartbeat_interval}); 3x is a safe choice")
        try:
            self.threads = wk.parse_threads(self.threads_cfg)
        except ValueError as err:
            raise UserError(str(err)) from None
        self.max_failures_n = int(self.max_failures) if self.max_failures is not None else int(self.n_trials)
        if self.max_failure_rate is not None:
            rate = self.max_failure_rate
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
                raise UserError(f"hydra.sweeper.max_failure_rate must be a number in [0, 1] (or null), got {rate!r}")
        self.slots = self.n_jobs
        self.in_process = type(self.launcher).__name__ == "BasicLauncher"  # trials run in this process
        if self.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
            # the basic launcher runs jobs in this process, one at a time (as hydra-optuna-sweeper's batches do)
            log.warning("hydra.sweeper.n_jobs=%d with the basic launcher runs one trial at a time in this process. "
                        "For parallel trials use hydra/launcher=joblib, submitit_local or slurm, or start the same "
                        "command several times (one worker per GPU: device=cuda:0, device=cuda:1, ...)", self.n_jobs)
            self.slots = 1
        self.grid_space = None
        if str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            if self.sampler_cfg.get("search_space") is None:
                self.grid_space = sp.grid_values(self.space)
            size = 1
            for values in (self.grid_space or self.sampler_cfg["search_space"]).values():
                size *= len(values)
            if size < self.n_trials:
                log.info("grid sampler: the grid holds %d points, fewer than n_trials=%d: the search ends after %d",
                         size, self.n_trials, size)
                self.n_trials = size
        self.custom_fn = _load_callable(self.custom_search_space, "custom_search_space") \
            if self.custom_search_space else None

        on_cli = any(str(o).startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra)
        self.sweep_dir = Path(str(cfg.hydra.sweep.dir) if on_cli or not self.sweep_dir_cfg
                              else self.sweep_dir_cfg).absolute()
        self.storage_url = st.normalize_url(self.storage_cfg or st.default_storage_url(self.sweep_dir))
        st.storage_kind(self.storage_url)  # validate the URL's form
        sampler_fp = dict(self.sampler_cfg)
        if self.custom_search_space:
            sampler_fp["custom_search_space"] = str(self.custom_search_space)
        self.fingerprint = su.fingerprint(cfg, space=self.space, direction=self.direction, sampler=sampler_fp,
                                          pruner=self.pruner_spec, exclude=self.fingerprint_exclude)
        self.study_name = self.study_name_cfg or su.study_name_for(cfg, self.fingerprint)
        self.study_dir = self.sweep_dir / self.study_name.replace("/", "_")
        self._check_composes()
        self._preflight()
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
                                            sampler=su.make_sampler(self.sampler_cfg, self.grid_space),
                                            pruner=su.make_pruner(self.pruner_spec))
        self.study.set_user_attr("n_trials", int(self.n_trials))
        self.store = st.StudyStorage(self.study)
        if self.warm_entries:
            with self.store.claim_lock(self.storage_url):
                base_lr = OmegaConf.select(cfg, "trainer.base_lr", default=None)
                su.enqueue_warm_starts(self.study, self.warm_entries, self.space, base_lr)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        from autoft.io import atomic_write_text

        atomic_write_text(self.study_dir / "multirun.yaml", OmegaConf.to_yaml(cfg))
        self.registry = wk.WorkerRegistry(self.store, self.heartbeat_interval, self.grace_period,
                                          slots=self._local_slots()).start()
        c = su.count(self.study.get_trials(deepcopy=False))
        log.info("study %s (%s) in %s: %d/%d finished, %d running, %d failed; %s over %d parameters; outputs in %s",
                 self.study_name, "new" if created else "resumed", st.mask_url(self.storage_url),
                 c.done(self.count_pruned), self.n_trials, c.running, c.failed, self.direction,
                 len(self.space.distributions), self.study_dir)

    def _prepare_reevaluation(self, cfg, search) -> None:
        """Top-k re-evaluation settings and its fresh seeds (new to the search: checked here)."""
        from autoft.search import reevaluation as rv
        from autoft.names import SEED_KEY

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

    def _preflight(self) -> None:
        """hydra.sweeper.preflight: fn(cfg) on the first trial's composed config, before any study
        row or trial exists; its UserError stops the search."""
        if not self.preflight:
            return
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        from autoft.search.space import midpoint

        fn = _load_callable(self.preflight, "preflight")
        point = {k: midpoint(d) for k, d in self.space.distributions.items()}
        sweep_cfg = self.hydra_context.config_loader.load_sweep_config(
            self.config, self._overrides(point, trial_id=0, number=0))
        HydraConfig.instance().set_config(sweep_cfg)
        task_cfg = sweep_cfg.copy()
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            fn(task_cfg)
        except BaseException as err:
            user = find_user_error(err)
            if user is not None:
                raise UserError(f"pre-flight check ({self.preflight}) failed, nothing was trained: {user}") from None
            raise
        finally:
            HydraConfig.instance().set_config(self.config)

    def _overrides(self, params: dict, *, trial_id: int, number: int, threads: Optional[int] = None) -> list[str]:
        """One trial's overrides. Its identity always goes to `hydra.sweeper.trial` (any app reads
        it through HydraConfig; autoft.search.trial.TrialReporter does); into `search.*` only when
        the app's config has those keys (autoft's train.py). No key the app lacks is added."""
        from autoft.search.space import format_value

        budget = f",threads:{int(threads)}" if threads else ""
        ident = (f"++hydra.sweeper.trial={{id:{trial_id},number:{number},study_name:{format_value(self.study_name)},"
                 f"storage:{format_value(self.storage_url)}{budget}}}")
        out = [*self.passthrough, *self.space.overrides(params),
               f"hydra.sweep.dir={format_value(str(self.study_dir))}", f"hydra.sweep.subdir=trial_{number}", ident]
        if self.autoft_app:
            out += [f"++search.trial_id={trial_id}", f"++search.trial_number={number}",
                    f"++search.study_name={format_value(self.study_name)}",
                    f"++search.storage={format_value(self.storage_url)}"]
        return out

    def _reeval_overrides(self, params: dict, *, number: int) -> list[str]:
        """A re-evaluation of trial `number`: its hyperparameters, the fresh seeds, no trial identity
        (it is not a search trial: nothing reports to the study from inside it)."""
        from autoft.names import SEED_KEY
        from autoft.search.space import format_value

        replaced = {SEED_KEY, "search.seeds_per_trial", "search.reevaluation_of"}
        keep = [o for o in [*self.passthrough, *self.space.overrides({k: v for k, v in params.items()
                                                                      if k != SEED_KEY})]
                if o.split("=", 1)[0].lstrip("+~") not in replaced]
        return [*keep, f"hydra.sweep.dir={format_value(str(self.study_dir))}",
                f"hydra.sweep.subdir=reevaluation/trial_{number}", f"++seed={self.reeval_seeds[0]}",
                f"++search.seeds_per_trial={len(self.reeval_seeds)}", f"++search.reevaluation_of={number}"]
