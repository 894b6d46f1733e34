"""Binh and Korn's two-objective problem: `direction: [minimize, minimize]`, one value per direction.

    python tests/apps/optuna_examples/multi_objective.py -m
"""
from typing import Tuple

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="multi_objective_conf", config_name="config", version_base=None)
def binh_and_korn(cfg: DictConfig) -> Tuple[float, float]:
    x, y = float(cfg.x), float(cfg.y)
    if not (0 <= x <= 5 and 0 <= y <= 3):  # outside the feasible region
        return float("nan"), float("nan")
    return 4 * x * x + 4 * y * y, (x - 5) ** 2 + (y - 5) ** 2


if __name__ == "__main__":
    binh_and_korn()
