"""Config schema of the `autoft_optuna` sweeper, registered as `hydra/sweeper: autoft_optuna`, and
its `hydra/sweeper/sampler` group. The keys, their defaults and meanings are the search's own
(autoft.search.settings.SearchSettings); this adds only what Hydra needs to build the sweeper.
Hydra imports this module on every run (plugin discovery, outside sys.modules): keep it free of
heavy imports and of `from __future__ import annotations` (dataclasses then cannot resolve types).
"""

from dataclasses import dataclass, field
from typing import Any, List

from hydra.core.config_store import ConfigStore

from autoft.search.settings import REMOVED_SAMPLERS, SAMPLERS, SearchSettings

__all__ = ["AutoFTOptunaSweeperConf", "REMOVED_SAMPLERS", "SAMPLERS"]


@dataclass
class AutoFTOptunaSweeperConf(SearchSettings):
    _target_: str = "hydra_plugins.autoft_optuna_sweeper.sweeper.AutoFTOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    # keep `sampler` a config (not an instance): the sweeper seeds one sampler per trial from it
    _recursive_: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="autoft_optuna", node=AutoFTOptunaSweeperConf,
                             provider="autoft")
for _name, _node in {**SAMPLERS, **REMOVED_SAMPLERS}.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name, node=dict(_node), provider="autoft")
