"""autoft entry point: compose the config, run one phase, return the objective.

    python train.py                                  # final run of the default method (ft) on the embedded task
    python train.py -m search=autoft                 # AutoFT search (Hydra multirun, our Optuna sweeper)
    python train.py method=autoft hparams=outputs/.../best_hparams.yaml seed=1   # final retrain
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from autoft.errors import UserError

log = logging.getLogger("autoft")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from autoft.cli import run  # heavy imports after Hydra has parsed the command line

    try:
        return run(cfg)
    except UserError as err:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper stops the whole search and prints it
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
