"""`autoft_optuna`: a Hydra sweeper on current Optuna (ask/tell), built for long, shared searches.

    python train.py -m search=autoft dataset=iwildcam

This module is the Hydra glue only: it reads the sweeper's config (autoft.search.settings, checked;
the deprecated `search_space` through compat.py), builds the Hydra launcher, and hands one `autoft.search.run.Search`
what it needs from Hydra: a `launch(overrides, job_idx)` callable, the sweep dir, the compose check
and a trial's composed config for the pre-flight. The search itself (claims, heartbeats, lost and
failed trials, re-evaluation, outputs) is autoft.search's; its module docstrings explain it.

What it does differently from the published hydra-optuna-sweeper: `n_trials` is the study's total
of finished trials (a rerun resumes; after completion it trains nothing); one trial at a time per
slot, asked when the slot is free (no batch barrier), and any number of workers join a study
through its storage; trials of dead workers are retried; a trial that raises or diverges is FAILED
and the search goes on, while a UserError stops everything with its message; the study name derives
from the config's fingerprint; an app's hook (`hydra.sweeper.app`, autoft.search.app) may add a top-k
re-evaluation step run once the study is complete (autoft.search.reevaluation) and files of its own.

Hydra imports this module on every run of train.py to discover plugins: the heavy imports happen
inside methods.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, List, Optional

from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from autoft.errors import UserError

log = logging.getLogger(__name__)


class SearchStopped(UserError, CompactHydraException):
    """A UserError that Hydra prints as its message alone (no traceback)."""


class AutoFTOptunaSweeper(Sweeper):
    def __init__(self, **keys: Any) -> None:
        super().__init__()
        self.keys = keys  # the settings (autoft.search.settings), checked when the sweep starts
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from autoft.search.threads import BudgetedTask

        self.config, self.hydra_context = config, hydra_context
        # the task applies its trial's thread budget in whichever process the launcher runs it
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=BudgetedTask(task_function), config=config)

    def sweep(self, arguments: List[str]) -> Any:
        try:
            search = self._search(arguments)
            search.prepare()
            return search.run()
        except SearchStopped:
            raise
        except UserError as err:  # Hydra prints the message alone and exits with status 1
            raise SearchStopped(str(err)) from None

    def _search(self, arguments: List[str]):
        from pathlib import Path

        from autoft.search.run import Search
        from autoft.search.settings import checked
        from hydra_plugins.autoft_optuna_sweeper.compat import space_params

        cfg, settings = self.config, checked(self.keys)
        settings.params = space_params(settings.params, settings.search_space)  # the deprecated search_space too
        slots, launcher = settings.n_jobs, type(self.launcher).__name__
        in_process = launcher == "BasicLauncher"  # the basic launcher runs jobs here, one at a time
        if slots > 1 and in_process:
            log.warning("hydra.sweeper.n_jobs=%d with the basic launcher runs one trial at a time in this process. "
                        "For parallel trials use hydra/launcher=joblib, submitit_local or slurm, or start the same "
                        "command several times (one worker per GPU: device=cuda:0, device=cuda:1, ...)", slots)
            slots = 1
        # trials sharing this machine's cores: 1 in this process, the slots with joblib, 0 elsewhere (SLURM)
        local_slots = 1 if in_process else (slots if "joblib" in launcher.lower() else 0)
        on_cli = any(str(o).startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra)
        sweep_dir = Path(str(cfg.hydra.sweep.dir) if on_cli or not settings.sweep_dir else settings.sweep_dir)
        return Search(settings, cfg, arguments, launch=self._launch, sweep_dir=sweep_dir,
                      slots=slots, local_slots=local_slots, in_process=in_process,
                      check_composes=self._check_composes, trial_config=self._trial_config)

    def _launch(self, overrides: list, job_idx: int):
        return self.launcher.launch([overrides], initial_job_idx=job_idx)[0]

    def _check_composes(self, batch: list) -> None:
        from hydra.errors import HydraException

        try:
            self.validate_batch_is_legal(batch)
        except HydraException as err:
            raise UserError(f"a trial's config does not compose: {err}") from None

    @contextlib.contextmanager
    def _trial_config(self, overrides: list):
        """One trial's composed task config, with HydraConfig set to it meanwhile (pre-flight)."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        sweep_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        HydraConfig.instance().set_config(sweep_cfg)
        task_cfg = sweep_cfg.copy()
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            yield task_cfg
        finally:
            HydraConfig.instance().set_config(self.config)
