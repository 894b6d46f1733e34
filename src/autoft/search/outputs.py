"""What a study leaves beside it: best_hparams.yaml (read by the final retrain), trials.csv, plots.

With top-k re-evaluation (autoft.search.reevaluation) each of them shows both scores: the trial's
search score (with its bootstrap interval and per-seed scores) and its re-evaluated score.

All files are written atomically (temp file, then rename): several workers may rewrite them at
the same time, and a kill never leaves half a file. The storage itself stays readable by
optuna-dashboard (`optuna-dashboard sqlite:///<sweep dir>/optuna.db`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
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


def best_hparams(config, trial, *, study_name: str, storage: str, direction: str, n_complete: int,
                 selection=None) -> dict:
    """The chosen trial as the hyperparameters of a final run (plus where they came from).

    Unsearched values come from the composed config, so the file is complete on its own: all nine
    loss weights (ce 1.0), lr_scale, the absolute lr (base_lr x lr_scale), weight_decay, and seed
    when it was searched. `objective` is the trial's search score; its bootstrap interval and
    per-seed scores follow when the trial recorded them. With a re-evaluation `selection`
    (autoft.search.reevaluation.Selection), the re-evaluated score and every candidate's two scores
    are added, and `selected_by` says which score chose the trial.
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
                "storage": storage, "n_complete": int(n_complete), "params": params,
                "dataset": _select(config, "dataset.name"), "model": _select(config, "model.name")})
    attrs = trial.user_attrs
    if finite(attrs.get("ci_low")) and finite(attrs.get("ci_high")):
        out["search_ci"] = [float(attrs["ci_low"]), float(attrs["ci_high"])]
    if isinstance(attrs.get("per_seed"), list):
        out["search_per_seed"] = [float(x) for x in attrs["per_seed"]]
    if isinstance(attrs.get("seeds"), list):
        out["search_seeds"] = [int(x) for x in attrs["seeds"]]
    if selection is not None:
        out["selected_by"] = selection.selected_by
        out["search_best_trial"] = int(selection.search_best.number)
        rec = selection.winner_record
        if rec is not None and rec.get("state") == "complete":
            out["reevaluated_objective"] = float(rec["value"])
            out["reevaluated_seeds"] = [int(x) for x in rec["seeds"]]
            if rec.get("per_seed") is not None:
                out["reevaluated_per_seed"] = [float(x) for x in rec["per_seed"]]
            if "ci_low" in rec:
                out["reevaluated_ci"] = [float(rec["ci_low"]), float(rec["ci_high"])]
        out["reevaluation"] = selection.summary()
    return out


def write_best_hparams(path: str | Path, hparams: Mapping[str, Any]) -> None:
    from omegaconf import OmegaConf

    metric = hparams.get('metric') or 'objective'
    header = (f"# Best hyperparameters of study {hparams.get('study_name')} (trial {hparams.get('trial_number')}, "
              f"{metric} {hparams.get('objective'):.6g} on OOD-val).\n")
    if hparams.get("reevaluated_objective") is not None:
        header = (f"# Hyperparameters chosen by top-k re-evaluation in study {hparams.get('study_name')}: trial "
                  f"{hparams.get('trial_number')}, {metric} on OOD-val {hparams['reevaluated_objective']:.6g} "
                  f"re-evaluated with seeds {hparams.get('reevaluated_seeds')} ({hparams.get('objective'):.6g} in "
                  "the search).\n")
    elif hparams.get("reevaluation") is not None:
        note = hparams["reevaluation"].get("note") or "re-evaluation not complete"
        header += f"# {note}\n"
    header += "# Final retrain: python train.py method=autoft hparams=<this file> seed=0\n"
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


# the noise guards, right after the objective: its interval and per-seed scores, then the re-evaluation
NOISE_COLUMNS = ("ci_low", "ci_high", "per_seed", "seeds")
REEVAL_COLUMNS = ("reevaluated_objective", "reevaluated_ci_low", "reevaluated_ci_high", "reevaluated_per_seed",
                  "reevaluated_seeds", "reevaluation_state", "chosen")


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _reeval_cells(record: Optional[Mapping]) -> dict:
    if not record:
        return {}
    out = {"reevaluation_state": record.get("state", ""), "reevaluated_seeds": _cell(record.get("seeds", ""))}
    if record.get("state") == "complete":
        out["reevaluated_objective"] = record.get("value", "")
        out["reevaluated_ci_low"] = record.get("ci_low", "")
        out["reevaluated_ci_high"] = record.get("ci_high", "")
        out["reevaluated_per_seed"] = _cell(record.get("per_seed", ""))
    elif record.get("state") == "failed":
        out["reevaluation_state"] = f"failed ({record.get('fail_reason', '')})"
    return out


def trials_table(trials, reevaluations: Optional[Mapping[int, Mapping]] = None,
                 chosen: Optional[int] = None) -> tuple[list[str], list[dict]]:
    """One row per trial. `reevaluations`: trial number -> re-evaluation record (adds the re-evaluated
    columns); `chosen`: the trial best_hparams.yaml holds (marked 1 in the `chosen` column)."""
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs} - _INTERNAL_ATTRS - set(NOISE_COLUMNS))
    reeval = list(REEVAL_COLUMNS) if reevaluations is not None else []
    columns = ["number", "state", "objective", *NOISE_COLUMNS, *reeval, "duration_s", "datetime_start",
               "datetime_complete", "fail_reason", "retry_of", "warm_start", *params, *attrs]
    rows = []
    for t in trials:
        d = duration_s(t)
        row = {"number": t.number, "state": t.state.name, "objective": t.value if t.value is not None else "",
               **{k: _cell(t.user_attrs.get(k, "")) for k in NOISE_COLUMNS},
               "duration_s": f"{d:.2f}" if d is not None else "",
               "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "",
               "datetime_complete": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else "",
               "fail_reason": fail_reason(t) or "", "retry_of": t.user_attrs.get(RETRY_OF, ""),
               "warm_start": t.user_attrs.get(WARM_START_ATTR, "")}
        if reeval:
            row.update({k: "" for k in reeval})
            row.update(_reeval_cells((reevaluations or {}).get(t.number)))
            row["chosen"] = 1 if chosen == t.number else ""
        row.update({k: t.params.get(k, "") for k in params})
        row.update({k: _cell(t.user_attrs.get(k, "")) for k in attrs})
        rows.append(row)
    return columns, rows


def write_trials_csv(path: str | Path, trials, reevaluations: Optional[Mapping[int, Mapping]] = None,
                     chosen: Optional[int] = None) -> None:
    columns, rows = trials_table(trials, reevaluations, chosen)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_history(study, path: str | Path, reevaluations: Optional[Mapping[int, Mapping]] = None,
                 chosen: Optional[int] = None) -> Optional[Path]:
    """Moved to autoft.reporting.plots.plot_study_history (kept here for callers)."""
    from autoft.reporting.plots import plot_study_history

    return plot_study_history(study, path, reevaluations, chosen)


def write_plots(study, out_dir: str | Path, reevaluations: Optional[Mapping[int, Mapping]] = None,
                chosen: Optional[int] = None) -> list[Path]:
    """Moved to autoft.reporting.plots.write_study_plots (kept here for callers)."""
    from autoft.reporting.plots import write_study_plots

    return write_study_plots(study, out_dir, reevaluations, chosen)


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
