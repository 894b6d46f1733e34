"""The running trial, seen from inside the task: intermediate reports, pruning, extra scores.

    reporter = TrialReporter.from_config(cfg.search)   # a no-op outside a search trial
    reporter.report(step, ood_val_objective)           # raises optuna.TrialPruned when pruned
    reporter.set_user_attrs(id_val_accuracy=0.91)      # shown in trials.csv and optuna-dashboard
    reporter.progress(step, total_steps)               # liveness: the sweeper logs the last step

The sweeper passes the trial's identity to every trial once, as `hydra.sweeper.trial` ({id, number,
study_name, storage, ...}); every launcher (basic, joblib, submitit) sets the trial's Hydra config
where it runs, and the app reads it with `hydra_trial_identity()`. The reporter reopens the trial
from the storage, so it works the same in the sweeper's process, in another process, or on another
node (submitit). The pruner comes from `search.pruner`, the same config the sweeper validated.

While the study's storage is unreachable (autoft.search.outage) the trial keeps training: progress
and intermediate reports are skipped (no pruning decision for those steps), and the final
attributes wait for the storage, up to hydra.sweeper.storage_outage_window (passed in the trial's
identity).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)


class TrialReporter:
    def __init__(self, study_name: Optional[str] = None, storage: Optional[str] = None,
                 trial_id: Optional[int] = None, pruner: Any = None, outage_window: Optional[float] = None):
        self.study_name, self.storage_url, self.trial_id = study_name, storage, trial_id
        self._pruner_spec, self.outage_window = pruner, outage_window
        self._trial = None
        self._store = None
        self._lost = False
        self._last_progress = 0.0

    @classmethod
    def from_config(cls, search: Optional[Mapping] = None) -> "TrialReporter":
        """The running trial (`hydra_trial_identity`); its pruner from the `search` block."""
        ident = hydra_trial_identity() or {}
        if ident.get("id") is None:
            return cls()  # not inside a search trial: every call is a no-op
        window = ident.get("storage_outage_window")
        return cls(str(ident["study_name"]), str(ident["storage"]), int(ident["id"]), (search or {}).get("pruner"),
                   float(window) if window is not None else None)

    @property
    def active(self) -> bool:
        return self.trial_id is not None

    @property
    def pruning(self) -> bool:
        """Whether intermediate reports can stop this trial (worth evaluating for)."""
        spec = self._pruner_spec
        return self.active and spec is not None and not (isinstance(spec, str) and spec.lower() in ("none", "null"))

    def _get_trial(self):
        if self._trial is None:
            import optuna

            from autoft.search.storage import StudyStorage, cached_storage, quiet_optuna
            from autoft.search.study import make_pruner

            quiet_optuna()
            storage = cached_storage(self.storage_url, self.outage_window)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self._pruner_spec))
            self._store = StudyStorage(study)
            self._trial = self._store.live_trial(self.trial_id)
        return self._trial

    def _running(self) -> bool:
        from optuna.trial import TrialState

        trial = self._get_trial()
        state = self._store.trial(self.trial_id).state
        if state != TrialState.RUNNING and not self._lost:
            self._lost = True
            log.warning("trial %s is %s in its study (declared lost by another worker?): stopping it",
                        trial.number, state.name)
        return state == TrialState.RUNNING

    def report(self, step: int, value: float) -> None:
        """Record the objective at an inner step; raise optuna.TrialPruned when the pruner says stop.
        With the storage unreachable the step goes unreported and the trial trains on."""
        if not self.active:
            return
        import optuna

        from autoft.search.outage import once_or

        def send() -> bool:
            if not self._running():
                raise optuna.TrialPruned(f"trial is no longer RUNNING in study {self.study_name}")
            if value is not None and math.isfinite(float(value)):
                self._get_trial().report(float(value), int(step))
            return self.should_prune()

        prune = once_or(None, send)
        if prune is None:
            log.debug("step %s of trial id %s not reported: the study storage is unreachable", step, self.trial_id)
        elif prune:
            raise optuna.TrialPruned(f"pruned at step {step} (objective {value:.4g})")

    def should_prune(self) -> bool:
        """Whether the pruner stops this trial now (False while the storage is unreachable)."""
        if not self.active:
            return False
        from autoft.search.outage import once_or

        return once_or(False, lambda: not self._running() or bool(self._get_trial().should_prune()))

    def progress(self, step: int, total: Optional[int] = None, min_interval: float = 10.0) -> None:
        """Record the task's current step (at most every `min_interval` s): the worker's periodic
        'trial N running for X s, last heartbeat ..., step s/total' line shows it."""
        if not self.active:
            return
        now = time.time()
        if now - self._last_progress < min_interval:  # the common case, once per training step: nothing else
            return
        self._last_progress = now
        from autoft.search.outage import fail_fast
        from autoft.search.storage import PROGRESS_ATTR

        try:
            with fail_fast():  # advisory: never waits on an outage
                self._get_trial()
                self._store.set_trial_system_attr(self.trial_id, PROGRESS_ATTR, {
                    "step": int(step), "total": None if total is None else int(total), "time": now})
        except Exception as err:  # noqa: BLE001 (progress is advisory)
            log.debug("progress of trial id %s not recorded: %s", self.trial_id, err)

    def set_user_attrs(self, attrs: Optional[Mapping[str, Any]] = None, **more: Any) -> None:
        """Attach extra per-trial scores or notes (JSON-able values) to the trial; waits out an outage
        (they are part of the trial's result)."""
        if not self.active:
            return
        import optuna

        trial = self._get_trial()
        for key, value in {**(attrs or {}), **more}.items():
            try:
                trial.set_user_attr(str(key), value)
            except optuna.exceptions.UpdateFinishedTrialError:
                return


def record_scores(search: Optional[Mapping], **scores: Any) -> None:
    """Shortcut: write per-trial scores as user attributes (no-op outside a search)."""
    TrialReporter.from_config(search).set_user_attrs(scores)


def hydra_trial_identity() -> Optional[dict]:
    """The running trial's identity, `hydra.sweeper.trial` ({id, number, study_name, storage, ...}): the
    one place an app reads it. None outside an autoft_optuna sweep's trial."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        ident = HydraConfig.get().sweeper.get("trial")
    except Exception:  # noqa: BLE001 (another sweeper, no Hydra)
        return None
    return dict(ident) if ident else None
