"""What a study leaves beside it: best_hparams.yaml (read by the final retrain), trials.csv, plots.

All files are written atomically (temp file, then rename): several workers may rewrite them at
the same time, and a kill never leaves half a file. The storage itself stays readable by
optuna-dashboard (`optuna-dashboard sqlite:///<sweep dir>/optuna.db`).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from autoft.errors import UserError
from autoft.reporting.io import atomic_write_text
from autoft.search.space import LOSS_PREFIX, LR_SCALE_KEY, SEED_KEY, WEIGHT_DECAY_KEY
from autoft.search.study import FAIL_REASON, RETRY_OF, WARM_START_ATTR, duration_s, fail_reason

log = logging.getLogger(__name__)

LOSS_TERMS = ("ce", "hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")
_INTERNAL_ATTRS = {FAIL_REASON, RETRY_OF, WARM_START_ATTR, "fail_kind", "worker"}


def _select(config, key: str, default=None):
    from omegaconf import OmegaConf

    if config is None:
        return default
    try:
        return OmegaConf.select(config, key, default=default)
    except Exception:
        return default


def best_hparams(config, trial, *, study_name: str, storage: str, direction: str, n_complete: int) -> dict:
    """The best trial as the hyperparameters of a final run (plus where they came from).

    Unsearched values come from the composed config, so the file is complete on its own: all nine
    loss weights (ce 1.0), lr_scale, the absolute lr (base_lr x lr_scale), weight_decay, and seed
    when it was searched.
    """
    from omegaconf import OmegaConf

    params = dict(trial.params)
    cfg_weights = _select(config, "method.loss_weights")
    weights = OmegaConf.to_container(cfg_weights, resolve=True) if cfg_weights is not None else {}
    for key, value in params.items():
        if key.startswith(LOSS_PREFIX):
            weights[key[len(LOSS_PREFIX):]] = float(value)
    weights["ce"] = float(weights.get("ce", 1.0))
    ordered = {k: float(weights.get(k, 0.0)) for k in LOSS_TERMS}
    ordered.update({k: float(v) for k, v in weights.items() if k not in ordered})
    lr_scale = params.get(LR_SCALE_KEY, _select(config, "trainer.lr_scale", 1.0))
    base_lr = _select(config, "trainer.base_lr")
    out: dict[str, Any] = {"loss_weights": ordered, "lr_scale": float(lr_scale)}
    if base_lr is not None:
        out["lr"] = float(base_lr) * float(lr_scale)
        out["base_lr"] = float(base_lr)
    wd = params.get(WEIGHT_DECAY_KEY, _select(config, "trainer.weight_decay"))
    if wd is not None:
        out["weight_decay"] = float(wd)
    if SEED_KEY in params:
        out["seed"] = int(params[SEED_KEY])
    out.update({"objective": float(trial.value), "metric": _select(config, "dataset.metric"),
                "direction": direction, "trial_number": int(trial.number), "study_name": study_name,
                "storage": storage, "n_complete": int(n_complete), "params": params})
    return out


def write_best_hparams(path: str | Path, hparams: Mapping[str, Any]) -> None:
    from omegaconf import OmegaConf

    header = (f"# Best hyperparameters of study {hparams.get('study_name')} (trial {hparams.get('trial_number')}, "
              f"{hparams.get('metric') or 'objective'} {hparams.get('objective'):.6g} on OOD-val).\n"
              "# Final retrain: python train.py method=autoft hparams=<this file> seed=0\n")
    atomic_write_text(path, header + OmegaConf.to_yaml(OmegaConf.create(dict(hparams))))


def load_best_hparams(path: str | Path) -> dict:
    """Read a best_hparams.yaml (or a warm-start file of the same schema) as plain Python values.

    Returns {loss_weights: {nine terms}, lr_scale, lr (when known), weight_decay, seed (if any),
    ...}; raises UserError naming the file and the missing key.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"hparams file not found: {path}. A search writes it: python train.py -m search=autoft "
                        "dataset=<name> (see <sweep dir>/best_hparams.yaml)")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise UserError(f"hparams file {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"hparams file {path} does not hold a mapping")
    for key in ("loss_weights", "weight_decay"):
        if key not in data:
            raise UserError(f"hparams file {path} has no '{key}'")
    if "lr_scale" not in data and "lr" not in data:
        raise UserError(f"hparams file {path} has neither 'lr_scale' nor 'lr'")
    weights = data["loss_weights"]
    if not isinstance(weights, dict):
        raise UserError(f"hparams file {path}: loss_weights must be a mapping")
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise UserError(f"hparams file {path}: unknown loss term(s) {unknown}; valid: {', '.join(LOSS_TERMS)}")
    out = dict(data)
    out["loss_weights"] = {k: float(weights.get(k, 1.0 if k == "ce" else 0.0)) for k in LOSS_TERMS}
    for key in ("lr_scale", "lr", "base_lr", "weight_decay", "objective"):
        if out.get(key) is not None:
            out[key] = float(out[key])
    if out.get("lr_scale") is None and out.get("base_lr"):
        out["lr_scale"] = out["lr"] / out["base_lr"]
    if out.get("seed") is not None:
        out["seed"] = int(out["seed"])
    return out


def trials_table(trials) -> tuple[list[str], list[dict]]:
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs} - _INTERNAL_ATTRS)
    columns = ["number", "state", "objective", "duration_s", "datetime_start", "datetime_complete",
               "fail_reason", "retry_of", "warm_start", *params, *attrs]
    rows = []
    for t in trials:
        d = duration_s(t)
        row = {"number": t.number, "state": t.state.name, "objective": t.value if t.value is not None else "",
               "duration_s": f"{d:.2f}" if d is not None else "",
               "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "",
               "datetime_complete": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else "",
               "fail_reason": fail_reason(t) or "", "retry_of": t.user_attrs.get(RETRY_OF, ""),
               "warm_start": t.user_attrs.get(WARM_START_ATTR, "")}
        row.update({k: t.params.get(k, "") for k in params})
        row.update({k: t.user_attrs.get(k, "") for k in attrs})
        rows.append(row)
    return columns, rows


def write_trials_csv(path: str | Path, trials) -> None:
    columns, rows = trials_table(trials)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def write_plots(study, out_dir: str | Path) -> list[Path]:
    """Optimisation history, hyperparameter importances, parallel coordinates (PNG)."""
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    plots = {"optimization_history": ovm.plot_optimization_history,
             "parallel_coordinate": ovm.plot_parallel_coordinate}
    varied = [k for k in complete[0].params if len({t.params.get(k) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        plots["param_importances"] = ovm.plot_param_importances
    written = []
    for name, fn in plots.items():
        try:
            ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 9), max(fig.get_size_inches()[1], 5))
            _save(fig, out_dir / f"{name}.png")
            plt.close(fig)
            written.append(out_dir / f"{name}.png")
        except Exception as err:  # a plot must never fail a search
            log.warning("plot %s not written: %s", name, err)
            plt.close("all")
    return written


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
