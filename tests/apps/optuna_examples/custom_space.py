"""`hydra.sweeper.custom_search_space`: a function that suggests more (here: dependent) parameters.

    python tests/apps/optuna_examples/custom_space.py -m
"""
import hydra
from omegaconf import DictConfig


def configure(cfg: DictConfig, trial) -> None:
    """Called with the sweeper's config and the trial once `params` are sampled."""
    x = trial.params["x"]
    d = float(cfg.max_z_difference_from_x)
    trial.suggest_float("z", x - d, x + d)  # z within d of x
    trial.suggest_float("+w", 0.0, 1.0)  # a key the config lacks: added with '+'


@hydra.main(config_path="custom_space_conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    x, y, z, w = float(cfg.x), float(cfg.y), float(cfg.z), float(cfg.w)
    return x ** 2 + y ** 2 + z ** 2 + w


if __name__ == "__main__":
    main()
