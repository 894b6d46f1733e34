"""autoft entry point: compose the config, run one phase, return the objective.

    python train.py                                  # final run of the default method (ft) on the embedded task
    python train.py -m search=autoft                 # AutoFT search (Hydra multirun, our Optuna sweeper)
    python train.py method=autoft hparams=outputs/.../best_hparams.yaml seed=1   # final retrain
    python train.py -m search=autoft dataset=iwildcam data_root=...   # a paper benchmark (its backbone: ViT-B/16)

A bad input (an unknown key, a wrong type, a value out of range, an unreadable file) stops the run
before any work with one message and exit status 2: src/autoft/config.py holds the schema,
config_checks.py its checks and config_messages.py the messages for the command line.
"""
from __future__ import annotations

import atexit
import gc
import logging
import sys

import hydra
from omegaconf import DictConfig

from autoft import config  # noqa: F401  (registers the config schema, base_config, before Hydra composes)
from autoft.config_checks import validate
from autoft.config_messages import unknown_override
from autoft.errors import UserError

log = logging.getLogger("autoft")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        validate(cfg)  # once, before the heavy imports below: a bad config is refused in a second
        from autoft.cli import run_validated

        return run_validated(cfg)
    except UserError as err:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper stops the whole search and prints it
        log.error("%s", err)
        sys.exit(2)


def composition_problem(argv: list[str]) -> str | None:
    """Compose the config as @hydra.main is about to, with the same overrides (sweeps left out) and
    config directory, and return Hydra's error as one message (None: it composes, or the command
    line asks for something this check does not model, which Hydra then handles itself)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from autoft.config_checks import compose_config

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path or args.config_name \
            or args.experimental_rerun:
        return None
    try:
        overrides = [o.input_line for o in OverridesParser.create().parse_overrides(args.overrides)
                     if not o.is_sweep_override()]
    except Exception:  # a grammar error: Hydra reports it with its own pointer into the override
        return None
    if args.config_dir and any(o.startswith("hydra.searchpath") for o in overrides):
        return None
    try:
        compose_config(overrides, args.config_dir, keep_hydra=True)
    except UserError as err:  # ConfigCompositionException, OmegaConf's errors, YAML parse errors, in one line
        return str(err)
    return None


def check_command_line(argv: list[str]) -> None:
    """A misspelt key, a wrong type or a broken config file is named before Hydra runs anything:
    one message naming the key and the valid keys or the expected type, exit status 2."""
    message = unknown_override(argv) or composition_problem(argv)
    if message:
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # torch, torchvision and open_clip leave over 400,000 objects for the collector's last pass at
    # exit, about 0.8 s of CPU per process (docs/speed.md): frozen at exit, the OS reclaims them
    atexit.register(gc.freeze)
    check_command_line(sys.argv[1:])
    main()
