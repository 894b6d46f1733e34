"""AutoFT search: the space, study helpers and outputs behind the `autoft_optuna` Hydra sweeper.

`load_best_hparams(path)` reads what a search wrote for the final retrain; `TrialReporter` lets a
running trial report intermediate objectives (pruning) and extra scores to its study.
Imports stay light: Optuna is loaded only when a function needs it.
"""
from autoft.search.outputs import load_best_hparams
from autoft.search.trial import TrialReporter, record_scores

__all__ = ["load_best_hparams", "TrialReporter", "record_scores"]
