"""The search's settings: every `hydra.sweeper` key of the `autoft_optuna` sweeper, its default and
its meaning (`SearchSettings`, the schema the plugin registers), and their one check (`checked`).

The hydra-optuna-sweeper 1.3 keys work unchanged: `direction` (one value, or a list for a
multi-objective study), `study_name`, `storage`, `n_trials`, `n_jobs`, `params`, `max_failure_rate`,
`custom_search_space`, the `hydra/sweeper/sampler` group (`SAMPLERS`: tpe, random, cmaes, grid,
nsgaii, nsgaiii, qmc, gp, bruteforce) and the deprecated `search_space` (read with a warning,
hydra_plugins.autoft_optuna_sweeper.compat); the removed `motpe` sampler names its replacement.
Differences: `n_trials` is the study's *total* of finished trials (a rerun resumes to it);
`max_failure_rate` counts failures over the whole study. The other keys are ours; conf/search/autoft.yaml
documents them. No key of the app's own config is read in autoft.search: `app` answers for it.
Hydra imports this module on every run (plugin discovery): keep it free of heavy imports and of
`from __future__ import annotations` (Hydra's ConfigStore reads the dataclass's types).
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from autoft.errors import UserError
from autoft.values import finite, must, plain


# the hydra/sweeper/sampler group; `seed` is re-derived per trial (autoft.search.study.make_sampler);
# any other key of the sampler's constructor may be set (hydra.sweeper.sampler.<key>=...)
SAMPLERS: Dict[str, Dict[str, Any]] = {
    # constant_liar: concurrent workers see each other's running trials and spread out
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "multivariate": False,
            "constant_liar": True},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "x0": None, "sigma0": None,
              "n_startup_trials": 1, "warn_independent_sampling": True, "consider_pruned_trials": False,
              "use_separable_cma": False},
    # search_space null: built from hydra.sweeper.params (each a choice or a range)
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None, "search_space": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50,
               "mutation_prob": None, "crossover_prob": 0.9, "swapping_prob": 0.5},
    "nsgaiii": {"_target_": "optuna.samplers.NSGAIIISampler", "seed": None, "population_size": 50,
                "mutation_prob": None, "crossover_prob": 0.9, "swapping_prob": 0.5},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": True,
            "warn_independent_sampling": True},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10,
           "deterministic_objective": False},
    "bruteforce": {"_target_": "optuna.samplers.BruteForceSampler", "seed": None},
}


# removed from Optuna, still named by hydra-optuna-sweeper's configs: building one gives the replacement
# (autoft.search.study.make_sampler)
REMOVED_SAMPLERS: Dict[str, Dict[str, Any]] = {"motpe": {"_target_": "optuna.samplers.MOTPESampler", "seed": None}}


@dataclass
class SearchSettings:
    # maximize | minimize, or a list of them (a multi-objective study: the task returns one value
    # per direction; the Pareto front is reported); null: the app's (hydra.sweeper.app), else
    # minimize (hydra-optuna-sweeper's default)
    direction: Any = None
    # null: <the app's label (autoft: dataset-model-method), else study>-<fingerprint of everything
    # that affects a trial's objective>
    study_name: Optional[str] = None
    # where studies live (null: hydra.sweep.dir). A hydra.sweep.dir=... on the command line wins.
    # Trials run in <sweep_dir>/<study name>/trial_<trial number>.
    sweep_dir: Optional[str] = None
    # null: sqlite:///<sweep dir>/optuna.db; any Optuna RDB URL (postgresql://...), or
    # journal:///<path> (an append-only journal file: the choice for NFS/Lustre without a DB server)
    storage: Optional[str] = None
    # the study's total of finished trials (COMPLETE, plus PRUNED when count_pruned)
    n_trials: int = 20
    # trials this process runs at a time; > 1 needs a launcher that runs jobs in other
    # processes (joblib, submitit): each slot asks, launches and tells on its own, with no batch barrier
    n_jobs: int = 1
    # filled from the hydra/sweeper/sampler group (default tpe)
    sampler: Dict[str, Any] = field(default_factory=dict)
    # key -> override-grammar string; null values are skipped (the key stays unsearched)
    params: Optional[Dict[str, Any]] = None
    # deprecated (hydra-optuna-sweeper's Hydra 1.1 schema, still accepted with a warning): key ->
    # {type: float|int|categorical, low, high, step, log, choices}; ignored when params is set
    # (the plugin's compat.py converts it into params)
    search_space: Optional[Dict[str, Any]] = None
    # dotpath of fn(cfg, trial), called after params are sampled: it may suggest more parameters
    # (trial.suggest_*), which every trial receives as overrides (a name may start with '+')
    custom_search_space: Optional[str] = None
    # liveness of running trials: a RUNNING trial silent for grace_period s was lost with its
    # worker; it is marked FAIL and its parameters re-queued (at most max_retries times)
    heartbeat_interval: int = 20
    grace_period: int = 60
    # seconds an outage of the study's storage (a restart, a failover, a network blip) is waited out:
    # calls retry with backoff, training trials go on and report once it is back, and no trial is
    # judged lost until grace_period after its return. Past it the worker stops with one message
    # (exit 1); rerunning the command resumes. autoft.search.outage holds the fallback for library
    # callers (DEFAULT_WINDOW): keep the two equal.
    storage_outage_window: float = 300.0
    max_retries: int = 2
    # stop the search once this many trials failed by raising or diverging (null: n_trials)
    max_failures: Optional[int] = None
    # stop once more than max_failure_rate x n_trials trials failed, counted over the whole study
    # (so it means the same with n_jobs=1 as with many slots or workers): 0.0 stops at the first
    # failure, 0.25 with n_trials=20 allows 5; null: off. With max_failures too, the stricter wins.
    max_failure_rate: Optional[float] = None
    # CPU threads per trial for torch (torch.set_num_threads and OMP/MKL variables), set before
    # each trial in the process that runs it: auto = cores // trials running at once on this
    # machine (at least 1): this worker's (1 with the basic launcher, n_jobs with joblib) and those
    # of this user's other live autoft workers here, of any study (autoft.search.threads says how);
    # an integer fixes it per trial; null leaves torch's default (all cores per trial). Trials on
    # other nodes (submitit, SLURM) are left to the launcher's resources (cpus_per_task).
    threads: Any = "auto"
    # seconds between 'trial N running for X s, last heartbeat ...' lines during a trial (0: off)
    progress_interval: float = 120.0
    # dotpath of fn(cfg): called once with the first trial's composed config before any study row
    # or trial exists; a UserError from it stops the search (e.g. autoft.cli.preflight)
    preflight: Optional[str] = None
    # dotpath of the app's hook: an autoft.search.app.SearchApp subclass, or fn(cfg) returning one.
    # Everything the search needs to know about the app it sweeps goes through it (the study's name
    # and default direction, a pruner, re-evaluation, inline warm starts, the app's own files beside
    # the study); null: a plain Hydra app, as hydra-optuna-sweeper treats it (e.g. autoft.search_app.AutoftApp)
    app: Optional[str] = None
    count_pruned: bool = True
    # hyperparameter files (best_hparams.yaml or warm-start files) enqueued as the first trials
    warm_start: List[str] = field(default_factory=list)
    plots: bool = True
    # seconds between looks at the study while other workers finish its last trials
    poll_interval: float = 5.0
    # keys that never change a trial's objective: changing them resumes the same study; null: the
    # app's list (SearchApp.fingerprint_exclude: hydra, and what the app adds)
    fingerprint_exclude: Optional[List[str]] = None
    # the trial's identity, set by the sweeper in each trial's config ({id, number, study_name, storage,
    # storage_outage_window, threads}); empty here. Read it with autoft.search.trial.hydra_trial_identity
    trial: Dict[str, Any] = field(default_factory=dict)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def direction_name(d: Any) -> str:
    """'maximize' or 'minimize' as written, or of an optuna Direction enum (hydra-optuna-sweeper's)."""
    return str(getattr(d, "name", d)).lower()


def problems(s: SearchSettings) -> List[str]:
    """Every bad value of the settings, each `hydra.sweeper.<key>=<value>: must be ...`."""
    found: List[str] = []

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            found.append(must(f"hydra.sweeper.{key}", getattr(s, key), allowed))

    for key, low in (("n_trials", 1), ("n_jobs", 1), ("heartbeat_interval", 1), ("max_retries", 0)):
        need(_integer(getattr(s, key)) and getattr(s, key) >= low, key, f"an integer >= {low}")
    if _integer(s.heartbeat_interval):
        need(finite(s.grace_period) and s.grace_period > s.heartbeat_interval, "grace_period",
             f"more than heartbeat_interval ({s.heartbeat_interval}); 3x is a safe choice")
    need(finite(s.storage_outage_window) and s.storage_outage_window > 0, "storage_outage_window",
         "a number of seconds > 0")
    need(s.max_failures is None or (_integer(s.max_failures) and s.max_failures >= 0), "max_failures",
         "null (n_trials) or an integer >= 0")
    need(s.max_failure_rate is None or (finite(s.max_failure_rate) and 0 <= s.max_failure_rate <= 1),
         "max_failure_rate", "null (off) or a number in [0, 1]")
    need(s.progress_interval is None or (finite(s.progress_interval) and s.progress_interval >= 0),
         "progress_interval", "a number of seconds >= 0 (0: off)")
    need(finite(s.poll_interval) and s.poll_interval > 0, "poll_interval", "a number of seconds > 0")
    dirs = s.direction if isinstance(s.direction, (list, tuple)) else [s.direction]
    ok = s.direction is None or (len(dirs) > 0 and all(direction_name(d) in ("maximize", "minimize") for d in dirs))
    need(ok, "direction", "maximize, minimize, a non-empty list of them, or null (from the app's config)")
    from autoft.search.threads import parse_threads

    try:
        parse_threads(s.threads)
    except ValueError:
        need(False, "threads", "auto, a positive integer or null")
    return found


def checked(keys: Mapping[str, Any]) -> SearchSettings:
    """The settings from the sweeper's composed keys, checked: one UserError lists every problem."""
    known = {f.name for f in fields(SearchSettings)}
    s = SearchSettings(**{k: plain(v) for k, v in keys.items() if k in known})
    found = problems(s)
    if found:
        raise UserError("invalid config: " + found[0] if len(found) == 1 else
                        "invalid config:\n  - " + "\n  - ".join(found))
    s.sampler, s.warm_start = dict(s.sampler or {}), list(s.warm_start or [])
    s.progress_interval = float(s.progress_interval or 0)
    if s.fingerprint_exclude is not None:
        s.fingerprint_exclude = list(s.fingerprint_exclude)
    return s
