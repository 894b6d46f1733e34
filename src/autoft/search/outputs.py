"""What a study leaves beside it, all derived from the storage: trials.csv, optimization_results.yaml
(hydra-optuna-sweeper's file), plots/. The app adds its own (SearchApp.write_outputs: autoft's
best_hparams.yaml, autoft.search_app).

    write_study_outputs(study, place, ...)   everything at once (the search calls it after each trial)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from autoft.io import atomic_write_text
from autoft.search.study import FAIL_REASON, RETRY_OF, WARM_START_ATTR, duration_s, fail_reason

log = logging.getLogger(__name__)

_INTERNAL_ATTRS = {FAIL_REASON, RETRY_OF, WARM_START_ATTR, "fail_kind", "worker"}


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
        out.update({f"reevaluated_{k}": _cell(record.get(k, "")) for k in ("ci_low", "ci_high", "per_seed")})
    elif record.get("state") == "failed":
        out["reevaluation_state"] = f"failed ({record.get('fail_reason', '')})"
    return out


def trials_table(trials, reevaluations: Optional[Mapping[int, Mapping]] = None,
                 chosen: Optional[int] = None) -> tuple[list[str], list[dict]]:
    """One row per trial. `reevaluations`: trial number -> re-evaluation record (adds the re-evaluated
    columns); `chosen`: the chosen trial (marked 1 in the `chosen` column)."""
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


# ----------------------------------------------------------------------------- plots/

def write_study_plots(study, out_dir: str | Path, reevaluations: Optional[Mapping[int, Mapping]] = None,
                      chosen: Optional[int] = None) -> list[Path]:
    """Optimisation history (with intervals and re-evaluations), hyperparameter importances and
    parallel coordinates (PNG), drawn by autoft.reporting.plots from the study's trials. A plot
    never fails the search."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from autoft.reporting import plots as P

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    maximize = study.direction == StudyDirection.MAXIMIZE
    drawn = {"optimization_history": lambda p: P.plot_search_history(study.study_name, trials, maximize, p,
                                                                      reevaluations, chosen),
             "param_importances": lambda p: P.plot_importances(study.study_name, trials, maximize, p),
             "parallel_coordinate": lambda p: P.plot_parallel_coordinates(study.study_name, trials, maximize, p)}
    written = []
    for name, draw in drawn.items():
        try:
            path = draw(out_dir / f"{name}.png")
            if path is not None:
                written.append(Path(path))
        except Exception as err:  # a plot must never fail a search
            log.warning("plot %s not written: %s", name, err)
    return written


# ----------------------------------------------------------------------------- optimization_results.yaml

def write_results(dirs, study_name: str, direction: Any, best=None, front=None) -> None:
    """optimization_results.yaml (hydra-optuna-sweeper's file) in each of `dirs`: name, study_name,
    direction, and best_params/best_value of `best`, or for a multi-objective study the Pareto
    `front` as `solutions` (number, params, values per trial)."""
    import yaml

    out: dict = {"name": "optuna", "study_name": study_name, "direction": direction}
    if front is not None:
        out["solutions"] = [{"number": int(t.number), "params": dict(t.params),
                             "values": [float(v) for v in t.values]} for t in front]
    else:
        out["best_params"] = dict(best.params)
        out["best_value"] = float(best.value)
        out["best_trial_number"] = int(best.number)
    text = yaml.safe_dump(out, sort_keys=False)
    for d in dirs:
        atomic_write_text(Path(d) / "optimization_results.yaml", text)


# ----------------------------------------------------------------------------- all of it

def write_config(study_dir: str | Path, config) -> None:
    """multirun.yaml: the composed config the study was searched with (as Hydra's sweeps write it)."""
    from omegaconf import OmegaConf

    Path(study_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(study_dir) / "multirun.yaml", OmegaConf.to_yaml(config))


@dataclass
class StudyPlace:
    """Where a study's outputs go and what they name."""

    study_dir: Path  # <sweep dir>/<study name>: every file
    sweep_dir: Path  # also optimization_results.yaml, and the app's best_hparams.yaml (the study last run here)
    study_name: str
    storage: str  # masked URL
    direction: Any  # 'maximize' | 'minimize', or a list of them


def write_study_outputs(study, place: StudyPlace, *, selection, reevaluations=None, plots: bool = False) -> None:
    """Every file beside a study, from its storage. `selection`: autoft.search.reevaluation.select's
    answer (single objective; None for a multi-objective study, which gets its Pareto front in
    optimization_results.yaml only); `reevaluations`: the re-evaluation records (None: no
    re-evaluation columns); `plots`: write plots/ too (at the end of a run)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    dirs = (place.sweep_dir, place.study_dir)
    if selection is None:
        if complete:
            write_results(dirs, place.study_name, place.direction, front=study.best_trials)
        return
    chosen = selection.winner.number if selection.winner is not None else None
    # trials.csv even before any trial completed: it holds the failures' reasons
    write_trials_csv(place.study_dir / "trials.csv", trials, reevaluations=reevaluations, chosen=chosen)
    if not complete or selection.winner is None:
        return
    write_results(dirs, place.study_name, place.direction, best=selection.winner)
    if plots:
        write_study_plots(study, place.study_dir / "plots", reevaluations=reevaluations, chosen=chosen)
