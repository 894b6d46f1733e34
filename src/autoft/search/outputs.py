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

from autoft.hparams import Hyperparameters
from autoft.io import atomic_write_text
from autoft.search.study import FAIL_REASON, RETRY_OF, WARM_START_ATTR, duration_s, fail_reason

log = logging.getLogger(__name__)

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
                 selection=None) -> Hyperparameters:
    """The chosen trial as the hyperparameters of a final run, with where they came from as records.

    Unsearched values come from the composed config, so the file is complete on its own: all nine
    loss weights (ce 1.0), the lr's scale and the absolute lr (Hyperparameters.values), weight_decay, seed when it
    was searched, and the WiSE-FT alpha the trial chose (search.wise_alphas; else 1). `objective` is
    the trial's search score; its bootstrap interval and per-seed scores follow when the trial
    recorded them. With a re-evaluation `selection` (autoft.search.reevaluation.Selection), the
    re-evaluated score and every candidate's two scores are added, and `selected_by` says which
    score chose the trial.
    """
    params = dict(trial.params)
    records: dict[str, Any] = {
        "objective": float(trial.value), "metric": _select(config, "dataset.metric"), "direction": direction,
        "trial_number": int(trial.number), "study_name": study_name, "storage": storage,
        "n_complete": int(n_complete), "params": params, "dataset": _select(config, "dataset.name"),
        "model": _select(config, "model.name")}
    attrs = trial.user_attrs
    if finite(attrs.get("ci_low")) and finite(attrs.get("ci_high")):
        records["search_ci"] = [float(attrs["ci_low"]), float(attrs["ci_high"])]
    if isinstance(attrs.get("per_seed"), list):
        records["search_per_seed"] = [float(x) for x in attrs["per_seed"]]
    if isinstance(attrs.get("seeds"), list):
        records["search_seeds"] = [int(x) for x in attrs["seeds"]]
    if selection is not None:
        records["selected_by"] = selection.selected_by
        records["search_best_trial"] = int(selection.search_best.number)
        rec = selection.winner_record
        if rec is not None and rec.get("state") == "complete":
            records["reevaluated_objective"] = float(rec["value"])
            records["reevaluated_seeds"] = [int(x) for x in rec["seeds"]]
            if rec.get("per_seed") is not None:
                records["reevaluated_per_seed"] = [float(x) for x in rec["per_seed"]]
            if "ci_low" in rec:
                records["reevaluated_ci"] = [float(rec["ci_low"]), float(rec["ci_high"])]
        records["reevaluation"] = selection.summary()
    defaults = Hyperparameters.from_config(config) if config is not None else None
    return Hyperparameters.from_trial(params, attrs, defaults, records=records)


def write_best_hparams(path: str | Path, hparams: Hyperparameters | Mapping[str, Any]) -> None:
    """best_hparams.yaml, atomically, with a header saying which trial it holds and how to use it."""
    if not isinstance(hparams, Hyperparameters):
        hparams = Hyperparameters.from_mapping(dict(hparams), str(path))
    rec = hparams.records
    metric = rec.get('metric') or 'objective'
    header = (f"# Best hyperparameters of study {rec.get('study_name')} (trial {rec.get('trial_number')}, "
              f"{metric} {rec.get('objective'):.6g} on OOD-val).\n")
    if rec.get("reevaluated_objective") is not None:
        header = (f"# Hyperparameters chosen by top-k re-evaluation in study {rec.get('study_name')}: trial "
                  f"{rec.get('trial_number')}, {metric} on OOD-val {rec['reevaluated_objective']:.6g} "
                  f"re-evaluated with seeds {rec.get('reevaluated_seeds')} ({rec.get('objective'):.6g} in "
                  "the search).\n")
    elif rec.get("reevaluation") is not None:
        note = rec["reevaluation"].get("note") or "re-evaluation not complete"
        header += f"# {note}\n"
    method = "autoft method.name=autoft_alpha" if hparams.wise_alpha != 1.0 else "autoft"
    header += f"# Final retrain: python train.py method={method} hparams=<this file> seed=0\n"
    hparams.save(path, header)


def load_best_hparams(path: str | Path) -> Hyperparameters:
    """Read a best_hparams.yaml (or a warm-start file of the same schema): Hyperparameters.load."""
    return Hyperparameters.load(path)


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
