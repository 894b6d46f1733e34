"""Config schema of the `autoft_optuna` sweeper, registered as `hydra/sweeper: autoft_optuna`.

The familiar hydra-optuna-sweeper keys (`direction`, `study_name`, `storage`, `n_trials`,
`sampler`, `params`) keep their meaning, except that `n_trials` is the study's *total* of finished
trials (a rerun resumes to it). The other keys are ours; conf/search/autoft.yaml documents them.
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


def _fingerprint_exclude() -> List[str]:
    # keys that never change a trial's objective: changing them must resume the same study
    return ["hydra", "device", "data_root", "cache_dir", "logger", "hparams",
            "dataset.n_trials", "dataset.final_epochs", "dataset.passes_per_epoch", "trainer.epochs", "trainer.num_workers",
            "trainer.eval_batch_size", "trainer.compile", "trainer.channels_last", "search.trial_id",
            "search.trial_number", "search.storage", "search.study_name", "search.warm_start", "search.bootstrap",
            # re-evaluation happens after the search: changing it must resume the same study
            "search.reevaluate_top_k", "search.reevaluate_seeds", "search.reevaluate_seed_offset",
            "search.reevaluation_of"]


@dataclass
class AutoFTOptunaSweeperConf:
    _target_: str = "hydra_plugins.autoft_optuna_sweeper.sweeper.AutoFTOptunaSweeper"
    # keep `sampler` a config (not an instance): the sweeper seeds one sampler per trial from it
    _recursive_: bool = False

    # maximize | minimize; null: from the composed config's dataset.higher_is_better
    direction: Optional[str] = None
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
    # processes (submitit): each slot asks, launches and tells on its own, with no batch barrier
    n_jobs: int = 1
    sampler: Dict[str, Any] = field(default_factory=_tpe)
    # key -> override-grammar string; null values are skipped (the key stays unsearched)
    params: Optional[Dict[str, Any]] = None
    # liveness of running trials: a RUNNING trial silent for grace_period s was lost with its
    # worker; it is marked FAIL and its parameters re-queued (at most max_retries times)
    heartbeat_interval: int = 20
    grace_period: int = 60
    max_retries: int = 2
    # stop the search once this many trials failed by raising or diverging (null: n_trials)
    max_failures: Optional[int] = None
    count_pruned: bool = True
    # hyperparameter files (best_hparams.yaml or warm-start files) enqueued as the first trials
    warm_start: List[str] = field(default_factory=list)
    plots: bool = True
    # seconds between looks at the study while other workers finish its last trials
    poll_interval: float = 5.0
    fingerprint_exclude: List[str] = field(default_factory=_fingerprint_exclude)


ConfigStore.instance().store(group="hydra/sweeper", name="autoft_optuna", node=AutoFTOptunaSweeperConf,
                             provider="autoft")
