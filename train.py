"""autoft entry point: compose the config, run one phase, return the objective.

    python train.py                                  # final run of the default method (ft) on the embedded task
    python train.py -m search=autoft                 # AutoFT search (Hydra multirun, our Optuna sweeper)
    python train.py method=autoft hparams=outputs/.../best_hparams.yaml seed=1   # final retrain

A bad input (an unknown key, a value out of range, an unreadable file) stops the run before any
work with one message and exit status 2: src/autoft/config.py holds the schema and its checks.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from autoft import config  # registers the config schema (base_config) before Hydra composes
from autoft.errors import UserError

log = logging.getLogger("autoft")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        config.validate(cfg)  # before the heavy imports below: a bad config is refused in a second
        from autoft.cli import run

        return run(cfg)
    except UserError as err:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper stops the whole search and prints it
        log.error("%s", err)
        sys.exit(2)


def check_command_line(argv: list[str]) -> None:
    """A misspelt key on the command line is named with the valid keys before Hydra composes."""
    message = config.unknown_override(argv)
    if message:
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
