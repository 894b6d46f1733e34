"""The sphere function as a Hydra app whose config names only `hydra/sweeper: autoft_optuna`: the
shape of hydra-optuna-sweeper's example, to check that its users switch by changing that line.

    python tests/apps/optuna_examples/sphere.py -m
    python tests/apps/optuna_examples/sphere.py -m --config-name=grid      # the grid sampler
"""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def sphere(cfg: DictConfig) -> float:
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    value = float(cfg.x) ** 2 + float(cfg.y) ** 2
    if cfg.get("report", False):  # any app can report to its trial (identity in hydra.sweeper.trial)
        from autoft.search.trial import TrialReporter

        TrialReporter.from_config().set_user_attrs(reported=value)
    return value


if __name__ == "__main__":
    sphere()
