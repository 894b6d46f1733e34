"""A small Hydra app shaped like train.py, for testing the autoft_optuna sweeper for real.

Its objective is a cheap, smooth function of the sampled hyperparameters (best near loss weights
1e-2, lr_scale 3, weight decay 0.3), so a search takes milliseconds per trial; knobs make trials
sleep, diverge, return NaN, raise, or raise a UserError (see toy_conf/toy.yaml). Like train.py it
runs `search.seeds_per_trial` seeds (seed, seed+1, ...) and scores their mean, writes trial.json
(per-seed scores, a 95% interval) and reports them to the study; `toy.seed_noise` and `toy.lucky_*`
make a seed's score differ from the hyperparameters' true score (selection noise).

    python tests/apps/toy_app.py -m search=autoft search.n_trials=5
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]


def score(cfg: DictConfig) -> float:
    w = cfg.method.loss_weights
    terms = [(math.log10(max(float(w[k]), 1e-12)) + 2.0) ** 2 for k in w if k != "ce"]
    s = 1.0 - sum(terms) / (20.0 * max(len(terms), 1))
    s -= (math.log10(float(cfg.trainer.lr_scale)) - 0.5) ** 2 / 10.0
    s -= (float(cfg.trainer.weight_decay) - 0.3) ** 2
    return s


def seed_term(cfg: DictConfig, seed: int) -> float:
    """What one seed adds to the true score: noise in [-seed_noise, seed_noise] from (seed, weight
    decay), plus lucky_bonus when the seed is lucky_seed and the weight decay is lucky_weight_decay."""
    t = cfg.toy
    wd = float(cfg.trainer.weight_decay)
    digest = hashlib.sha256(f"{int(seed)}:{wd:.9g}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64 * 2 - 1
    out = float(t.seed_noise) * u
    if t.lucky_weight_decay is not None and int(seed) == int(t.lucky_seed) and abs(wd - float(t.lucky_weight_decay)) < 1e-9:
        out += float(t.lucky_bonus)
    return out


def preflight(cfg: DictConfig) -> None:
    """hydra.sweeper.preflight=toy_app.preflight: a check on the first trial's config."""
    from autoft.errors import UserError

    assert cfg.phase == "search" and "hydra" not in cfg
    if cfg.toy.get("preflight_error"):
        raise UserError(f"pre-flight: {cfg.toy.preflight_error}")


@hydra.main(config_path="toy_conf", config_name="toy", version_base="1.3")
def main(cfg: DictConfig):
    from autoft.errors import TrialDiverged, UserError
    from autoft.search.trial import TrialReporter

    if cfg.phase != "search":
        return None
    from autoft.search.trial import hydra_trial_identity

    search = cfg.search
    number = (hydra_trial_identity() or {}).get("number")
    again = search.get("reevaluation_of")
    if cfg.toy.started_dir:
        Path(cfg.toy.started_dir).mkdir(parents=True, exist_ok=True)
        name = f"trial_{number}.started" if again is None else f"reevaluation_{again}.started"
        with open(Path(cfg.toy.started_dir) / name, "a") as fh:  # one line per start (a rerun appends)
            fh.write(str(dict(search.items())) + "\n")
    fail_on = list(cfg.toy.fail_on)
    kinds = cfg.toy.failure if not isinstance(cfg.toy.failure, str) else [cfg.toy.failure] * len(fail_on)
    failure = dict(zip(fail_on, kinds)).get(number, "none")
    if again is not None:  # a re-evaluation: its own failure knobs
        failure = dict(zip(list(cfg.toy.fail_reevaluation_of), list(cfg.toy.reevaluation_failure))).get(again, "none")
    reporter = TrialReporter.from_config(search)
    seeds = [int(cfg.seed) + i for i in range(int(search.get("seeds_per_trial", 1) or 1))]
    per_seed = [score(cfg) + seed_term(cfg, s) for s in seeds]
    target = sum(per_seed) / len(per_seed)
    steps = int(cfg.toy.steps)
    every = int(search.get("eval_every", 0) or 0)
    if reporter.active:  # what the sweeper's thread budget gave this process (torch reads it at import)
        reporter.set_user_attrs(omp_threads=os.environ.get("OMP_NUM_THREADS"))
    if cfg.toy.barrier:  # trial n waits for the test's go, the file <barrier>-<n> (at most 5 minutes,
        deadline = time.time() + 300  # longer than the test waits for the workers, even on loaded cores)
        while not Path(f"{cfg.toy.barrier}-{number}").exists() and time.time() < deadline:
            time.sleep(0.05)
    if cfg.toy.torch and reporter.active:  # the thread count torch itself runs this trial's work with
        import torch

        reporter.set_user_attrs(torch_threads=torch.get_num_threads())
    for step in range(1, steps + 1):
        reporter.progress(step - 1, steps, min_interval=0)
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
    if failure == "wrapped_user_error":  # as a builder's UserError reaches the sweeper through Hydra
        from hydra.errors import InstantiationException

        try:
            try:
                raise UserError("toy.failure=wrapped_user_error: no such dataset split")
            except UserError as inner:
                raise InstantiationException("Error in call to target 'toy.Dataset'") from inner
        except InstantiationException as mid:
            raise RuntimeError("the trial could not build its data") from mid
    half = float(cfg.toy.ci_half_width)
    record = {"objective": target, "seeds": seeds, "per_seed": per_seed, "ci": [target - half, target + half]}
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial.json").write_text(json.dumps(record))
    reporter.set_user_attrs(id_val_accuracy=round(target / 2, 6), per_seed=per_seed, seeds=seeds,
                            ci_low=target - half, ci_high=target + half)
    return target


if __name__ == "__main__":
    import atexit
    import gc

    atexit.register(gc.freeze)  # as train.py: no collector pass over the imported libraries at exit
    sys.argv.append(f"hydra.searchpath=[file://{REPO / 'conf'}]")
    main()
