"""Config schema of the `autoft_optuna` sweeper, registered as `hydra/sweeper: autoft_optuna`.

The hydra-optuna-sweeper 1.3 schema works unchanged (switch with `override hydra/sweeper:
autoft_optuna`): `direction` (one value, or a list for a multi-objective study), `study_name`,
`storage`, `n_trials`, `n_jobs`, `params`, `max_failure_rate`, `custom_search_space`, and the
`hydra/sweeper/sampler` group (tpe, random, cmaes, grid, nsgaii, nsgaiii, qmc, gp, bruteforce),
registered here so that any Hydra app using this sweeper finds it; the deprecated `search_space`
is read as there, with a warning (compat.py); `range(a, b)` includes b as there; the removed `motpe`
sampler names its replacement. Differences: `n_trials` is the study's *total* of finished trials (a
rerun resumes to it); `max_failure_rate` counts failures over the whole study (see below). The other
keys are ours; conf/search/autoft.yaml documents them.
Hydra imports this module on every run (plugin discovery, outside sys.modules): keep it free of
heavy imports and of `from __future__ import annotations` (dataclasses then cannot resolve types).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


def _tpe() -> Dict[str, Any]:
    # constant_liar: concurrent workers see each other's running trials and spread out
    return {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10,
            "multivariate": False, "constant_liar": True}


# the hydra/sweeper/sampler group; `seed` is re-derived per trial (autoft.search.study.make_sampler);
# any other key of the sampler's constructor may be set (hydra.sweeper.sampler.<key>=...)
SAMPLERS: Dict[str, Dict[str, Any]] = {
    "tpe": _tpe(),
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
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10, "deterministic_objective": False},
    "bruteforce": {"_target_": "optuna.samplers.BruteForceSampler", "seed": None},
}


# removed from Optuna, still named by hydra-optuna-sweeper's configs: building one gives the replacement
# (autoft.search.study.make_sampler)
REMOVED_SAMPLERS: Dict[str, Dict[str, Any]] = {"motpe": {"_target_": "optuna.samplers.MOTPESampler", "seed": None}}


def _fingerprint_exclude() -> List[str]:
    # keys that never change a trial's objective: changing them must resume the same study
    return ["hydra", "device", "data_root", "cache_dir", "logger", "hparams", "budget", "search.n_trials",
            "dataset.passes_per_epoch", "trainer.epochs", "trainer.num_workers",
            "trainer.eval_batch_size", "trainer.compile", "trainer.channels_last", "trainer.image_cache",
            "trainer.image_cache_dir", "search.trial_id",
            "search.trial_number", "search.storage", "search.study_name", "search.warm_start", "search.bootstrap",
            # re-evaluation happens after the search: changing it must resume the same study
            "search.reevaluate_top_k", "search.reevaluate_seeds", "search.reevaluate_seed_offset",
            "search.reevaluation_of"]


@dataclass
class AutoFTOptunaSweeperConf:
    _target_: str = "hydra_plugins.autoft_optuna_sweeper.sweeper.AutoFTOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    # keep `sampler` a config (not an instance): the sweeper seeds one sampler per trial from it
    _recursive_: bool = False

    # maximize | minimize, or a list of them (a multi-objective study: the task returns one value
    # per direction; the Pareto front is reported); null: from the composed config's
    # dataset.higher_is_better, else minimize (hydra-optuna-sweeper's default)
    direction: Any = None
    # null: <dataset>-<model>-<method>-<fingerprint of everything that affects a trial's objective>
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
    # (compat.py converts it)
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
    count_pruned: bool = True
    # hyperparameter files (best_hparams.yaml or warm-start files) enqueued as the first trials
    warm_start: List[str] = field(default_factory=list)
    plots: bool = True
    # seconds between looks at the study while other workers finish its last trials
    poll_interval: float = 5.0
    fingerprint_exclude: List[str] = field(default_factory=_fingerprint_exclude)
    # set by the sweeper in each trial's config ({id, number, study_name, storage}); empty here
    trial: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="autoft_optuna", node=AutoFTOptunaSweeperConf,
                             provider="autoft")
for _name, _node in {**SAMPLERS, **REMOVED_SAMPLERS}.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name, node=dict(_node), provider="autoft")
