"""hydra-optuna-sweeper's example/custom-search-space-objective.py: `custom_search_space` adds
parameters that depend on the sampled ones.

    python tests/apps/optuna_examples/example/custom-search-space-objective.py -m
"""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="custom-search-space", config_name="config", version_base=None)
def multi_dimensional_sphere(cfg: DictConfig) -> float:
    w: float = cfg.w
    x: float = cfg.x
    y: float = cfg.y
    z: float = cfg.z
    return w**2 + x**2 + y**2 + z**2


def configure(cfg: DictConfig, trial) -> None:
    x_value = trial.params["x"]
    trial.suggest_float("z", x_value - cfg.max_z_difference_from_x, x_value + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)  # '+w': w is not in the config


def configure_everything(cfg: DictConfig, trial) -> None:
    """The whole space from the function (hydra.sweeper.params empty)."""
    trial.suggest_float("x", -5.5, 5.5, step=0.5)
    configure(cfg, trial)


if __name__ == "__main__":
    multi_dimensional_sphere()
