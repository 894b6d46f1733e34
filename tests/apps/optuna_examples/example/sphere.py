"""hydra-optuna-sweeper's example/sphere.py (its config names `hydra/sweeper: autoft_optuna`).

    python tests/apps/optuna_examples/example/sphere.py -m
    python tests/apps/optuna_examples/example/sphere.py -m +report=true   # reports to its trial
"""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y

    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")

    value = x**2 + y**2
    if cfg.get("report", False):  # any app can report to its trial (identity in hydra.sweeper.trial)
        from autoft.search.trial import TrialReporter

        TrialReporter.from_config().set_user_attrs(reported=value)
    return value


if __name__ == "__main__":
    sphere()
