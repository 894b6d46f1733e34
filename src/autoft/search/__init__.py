"""AutoFT search: everything behind the `autoft_optuna` Hydra sweeper, each concept once.

    settings.py      every hydra.sweeper key: schema, defaults, meanings, the one check
    app.py           what the search asks of the app it sweeps (hydra.sweeper.app; autoft's: autoft.search_app)
    space.py         hydra.sweeper.params (Hydra's override grammar) -> Optuna distributions
    storage.py       storage URLs, opening, the claim lock; the storage that rides out outages;
                     StudyStorage, the one wrapper of Optuna's privates
    outage.py        storage outages: which errors mean unreachable, the retry window, its log lines
    study.py         naming, fingerprint, creation/resume, counting toward n_trials, retries, samplers,
                     pruners, warm starts
    liveness.py      one heartbeat thread (trials, re-evaluation claims), stale trials, the machine
                     registry of workers (what the thread budget counts)
    threads.py       the thread budget per trial
    outcome.py       launch a job and classify what came back (trials and re-evaluations alike)
    reevaluation.py  top-k re-evaluation, a step once the study is complete: records, claims, selection
    outputs.py       the sweeper's files beside a study (trials.csv, optimization_results.yaml, plots/)
    trial.py         the running trial seen from inside the task (TrialReporter)
    run.py           one search run (Search): its state, its slots, ask -> launch -> tell; then re-evaluation

No key of the app's config is read here: the app answers through its hook (app.py); autoft's hook
writes best_hparams.yaml, which the final retrain reads (autoft.records.read_best_hparams). `TrialReporter`
lets a running trial report intermediate objectives (pruning) and extra scores to its study.
Imports stay light: Optuna is loaded only when a function needs it.
"""
from autoft.search.trial import TrialReporter, record_scores

__all__ = ["TrialReporter", "record_scores"]
