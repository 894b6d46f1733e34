"""A small Hydra app shaped like train.py, for testing the autoft_optuna sweeper for real.

Its objective is a cheap, smooth function of the sampled hyperparameters (best near loss weights
1e-2, lr_scale 3, weight decay 0.3), so a search takes milliseconds per trial; knobs make trials
sleep, diverge, return NaN, raise, or raise a UserError (see toy_conf/toy.yaml).

    python tests/apps/toy_app.py -m search=autoft dataset.n_trials=5
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]


def score(cfg: DictConfig) -> float:
    w = cfg.method.loss_weights
    terms = [(math.log10(max(float(w[k]), 1e-12)) + 2.0) ** 2 for k in w if k != "ce"]
    s = 1.0 - sum(terms) / (20.0 * max(len(terms), 1))
    s -= (math.log10(float(cfg.trainer.lr_scale)) - 0.5) ** 2 / 10.0
    s -= (float(cfg.trainer.weight_decay) - 0.3) ** 2
    return s


@hydra.main(config_path="toy_conf", config_name="toy", version_base="1.3")
def main(cfg: DictConfig):
    from autoft.errors import TrialDiverged, UserError
    from autoft.search.trial import TrialReporter

    if cfg.phase != "search":
        return None
    search = cfg.search
    number = search.get("trial_number")
    if cfg.toy.started_dir:
        Path(cfg.toy.started_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.toy.started_dir) / f"trial_{number}.started").write_text(str(dict(search.items())))
    fail_on = list(cfg.toy.fail_on)
    kinds = cfg.toy.failure if not isinstance(cfg.toy.failure, str) else [cfg.toy.failure] * len(fail_on)
    failure = dict(zip(fail_on, kinds)).get(number, "none")
    reporter = TrialReporter.from_config(search)
    target = score(cfg)
    steps = int(cfg.toy.steps)
    every = int(search.get("eval_every", 0) or 0)
    for step in range(1, steps + 1):
        time.sleep(float(cfg.toy.sleep))
        if failure == "diverge" and step == 2:
            raise TrialDiverged(f"loss is nan at step {step}")
        if every and step % every == 0 and step < steps:
            reporter.report(step, target * step / steps)
    if failure == "return_nan":
        return float("nan")
    if failure == "raise":
        raise RuntimeError("toy trial crashed on purpose")
    if failure == "user_error":
        raise UserError("toy.failure=user_error: dataset.root does not exist (a user's mistake)")
    reporter.set_user_attrs(id_val_accuracy=round(target / 2, 6))
    return target


if __name__ == "__main__":
    sys.argv.append(f"hydra.searchpath=[file://{REPO / 'conf'}]")
    main()
