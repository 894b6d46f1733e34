"""The record files runs leave behind, in one place: their names, their writers and their readers.

    trial.json          a search trial's record (autoft.pipeline.run_trial's dict): written by the trial,
                        read back by the search's re-evaluation
    results.json        a final run's record (autoft.pipeline.run_final's dict and what identifies the
                        run): written by the run, read by the tables, the runner and the scripts
                        (autoft.reporting.results checks what it must hold)
    best_hparams.yaml   the hyperparameters a search chose (autoft.hparams.Hyperparameters and their
                        records): written beside the study, read by the final run and the reports
    model.pt            a fine-tuned final run's selected weights (autoft.pipeline.run_final), read
                        again by a run that evaluates them on other domains (weights_from)

Every write is atomic (autoft.io): several workers may rewrite a file at once, and a kill never
leaves half a file. This module imports only the ground floor (errors, io, hparams) and OmegaConf,
so that every layer can use it and a bad hparams file is refused before torch is imported.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from autoft.errors import UserError
from autoft.hparams import FIX, Hyperparameters
from autoft.io import atomic_write_text, write_json

TRIAL_FILE = "trial.json"
RESULTS_FILE = "results.json"
HPARAMS_FILE = "best_hparams.yaml"
MODEL_FILE = "model.pt"


class ResultsError(UserError):
    """One or more results files are missing, unreadable or incomplete (the message names each)."""


RERUN = ("rerun the final run that wrote it (same dataset, model, method and seed) to rewrite it, or move its "
         "directory out of the results folder")


# ------------------------------------------------------------------ trial.json

def _write_record(out_dir: str | Path, name: str, record: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / name
    write_json(path, dict(record))
    return path


def write_trial(out_dir: str | Path, record: Mapping[str, Any]) -> Path:
    return _write_record(out_dir, TRIAL_FILE, record)


def read_trial(path: str | Path) -> Optional[dict]:
    """A trial's record; None when the file is missing or unreadable (a trial killed while writing it)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------ results.json

def write_results(out_dir: str | Path, record: Mapping[str, Any]) -> Path:
    return _write_record(out_dir, RESULTS_FILE, record)


def read_results(path: str | Path) -> Any:
    """A results file's parsed content, as it is (autoft.reporting.results.problems_of checks it);
    ResultsError names the file when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: corrupt JSON ({err}); {RERUN}") from None


def read_finished_run(directory: str | Path, **identity: Any) -> dict:
    """The results.json of the finished final run in `directory` (weights_from), checked to be the
    run `identity` names (dataset, model, method, seed) and, when it fine-tuned, to have left its
    MODEL_FILE: one UserError naming the key, the directory and what differs."""
    where = f"weights_from={directory}"
    if not Path(directory).is_dir():
        raise UserError(f"{where}: not a directory; name the output directory of a finished final run "
                        f"(the one holding its {RESULTS_FILE})")
    try:
        record = read_results(Path(directory) / RESULTS_FILE)
    except ResultsError as err:
        raise UserError(f"{where}: {err}; name the output directory of a finished final run") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: {RESULTS_FILE} holds {type(record).__name__}, not a run's record; {RERUN}")
    differ = [f"{k} {record.get(k)!r} there, {v!r} here" for k, v in identity.items() if record.get(k) != v]
    if differ:
        raise UserError(f"{where}: that run is another one ({'; '.join(differ)}); evaluate a run of the same "
                        "dataset, model, method and seed")
    weights = weights_dir(directory, record)
    if record.get("epochs") and not (weights / MODEL_FILE).is_file():
        raise UserError(f"{where}: {weights / MODEL_FILE} missing (the run fine-tuned, but its weights are gone); "
                        f"{RERUN}")
    return record


def weights_dir(directory: str | Path, record: Mapping[str, Any]) -> Path:
    """Where the weights of the finished run in `directory` are: its own MODEL_FILE, or, when it
    evaluated another run's weights itself, that run's (its hparams.weights_from): chains resolve."""
    return Path((record.get("hparams") or {}).get("weights_from") or directory)


# ------------------------------------------------------------------ best_hparams.yaml

def read_yaml(path: str | Path, where: str, fix: str) -> Any:
    """A hyperparameters YAML file (best_hparams.yaml or a warm-start file) as plain containers; one
    UserError starting with `where` when it is missing or not readable YAML, ending with `fix`."""
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise UserError(f"{where}: file not found; {fix}")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml.YAMLError, UnicodeDecodeError, interpolation errors
        detail = " ".join(str(err).split())[:200]
        raise UserError(f"{where}: not a readable YAML file ({type(err).__name__}: {detail}); {fix}") from None


def read_best_hparams(path: str | Path, defaults: Optional[Hyperparameters] = None) -> Hyperparameters:
    """A best_hparams.yaml (or a warm-start entry saved as a file), checked: every problem is one
    UserError that names the file and the key. Loss terms it leaves out come from `defaults`."""
    where = f"hparams={Path(path)}"
    return Hyperparameters.from_mapping(read_yaml(path, where, FIX), where, defaults)


def write_best_hparams(path: str | Path, hparams: Hyperparameters | Mapping[str, Any],
                       header: Optional[str] = None) -> Path:
    """best_hparams.yaml, atomically, under `header` (default `describe`: the trial it holds and the
    final run's command)."""
    from omegaconf import OmegaConf

    if not isinstance(hparams, Hyperparameters):
        hparams = Hyperparameters.from_mapping(dict(hparams), str(path))
    text = OmegaConf.to_yaml(OmegaConf.create(hparams.to_dict()))
    atomic_write_text(path, (describe(hparams) if header is None else header) + text)
    return Path(path)


def describe(hparams: Hyperparameters) -> str:
    """Comment lines: which study and trial chose these values (when a search did), with which score,
    and the final retrain command that uses them."""
    rec = hparams.records
    metric = rec.get("metric") or "objective"
    header = ""
    if rec.get("reevaluated_objective") is not None:
        header = (f"# Hyperparameters chosen by top-k re-evaluation in study {rec.get('study_name')}: trial "
                  f"{rec.get('trial_number')}, {metric} on OOD-val {rec['reevaluated_objective']:.6g} "
                  f"re-evaluated with seeds {rec.get('reevaluated_seeds')} ({rec.get('objective'):.6g} in "
                  "the search).\n")
    elif rec.get("objective") is not None:
        header = (f"# Best hyperparameters of study {rec.get('study_name')} (trial {rec.get('trial_number')}, "
                  f"{metric} {rec.get('objective'):.6g} on OOD-val).\n")
        if rec.get("reevaluation") is not None:
            header += f"# {rec['reevaluation'].get('note') or 're-evaluation not complete'}\n"
    method = "autoft method.name=autoft_alpha" if hparams.wise_alpha != 1.0 else "autoft"
    return header + f"# Final retrain: python train.py method={method} hparams=<this file> seed=0\n"
