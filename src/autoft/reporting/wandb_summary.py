"""What autoft's W&B runs hold, as plain values: a run's config from its composed config and
hyperparameters, a trial's summary from its record (trial.json), a final run's summary and WiSE-FT
curve from its record (results.json), a study's summary from its files, a CSV as table cells. Pure
functions of records; nothing here imports wandb (autoft.reporting.wandb_logger sends what they return).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from autoft.names import DOMAIN_ROLE_KEYS
from autoft.reporting.results import RunResult
from autoft.values import plain


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """{'id_test': {'accuracy': 0.5}} -> {'id_test/accuracy': 0.5}; lists and non-numbers kept as leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A final run's summary from its results.json record: every split's metrics (`split/metric`),
    `ood_mean/<metric>` over the OOD tests, `objective` (ID-val, what selected the epoch), and the
    run's facts. The WiSE-FT curve is a table (`wise_rows`), not hundreds of scalars."""
    metrics = record.get("metrics", {})
    out = flatten(metrics)
    if record.get("id_test_split", "id_test") in metrics:
        ood = RunResult(Path("."), dict(record)).ood_splits
        for m in sorted(set.intersection(*(set(metrics[s]) for s in ood)) if ood else ()):
            out[f"ood_mean/{m}"] = sum(metrics[s][m] for s in ood) / len(ood)
    if record.get("objective_metric") in metrics.get("id_val", {}):
        out["objective"] = metrics["id_val"][record["objective_metric"]]
    for k in ("selected_epoch", "wise_alpha", "seconds", "images_seen"):
        if k in record:
            out[k] = record[k]
    if "lr" in record.get("hparams", {}):
        out["lr"] = record["hparams"]["lr"]
    return out


def wise_rows(record: Mapping[str, Any]) -> list[dict[str, float]]:
    """The WiSE-FT curve of a results record: per alpha, the objective metric on the ID test, the
    OOD mean and each OOD test (a task without OOD tests has no OOD mean)."""
    if not record.get("wise"):
        return []
    run = RunResult(Path("."), dict(record))
    rows = []
    for a in run.wise_alphas():
        block = run.wise_metrics(a)
        rows.append({"alpha": a, "id_test": run.id_value(block),
                     **({"ood_mean": run.ood_mean(block)} if run.ood_splits else {}),
                     **{s: run.value(s, block) for s in run.ood_splits}})
    return rows


def hparams_config(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as flat config keys that W&B's parallel-coordinates and importance panels can
    use: `loss_weights/<term>`, `weight_decay`, `wise_alpha`, and one lr key, `lr_scale`, the one the
    search samples (the run's lr, base_lr x lr_scale x lr_mult, is in the summary as `lr`)."""
    out = {k: v for k, v in hp.items() if k not in ("source", "lr", "loss_weights")}
    out.update({f"loss_weights/{k}": v for k, v in (hp.get("loss_weights") or {}).items()})
    return out


def run_config(cfg, hp: Mapping[str, Any], origin: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """W&B config of a train.py run: its hyperparameters (flat, `hparams_config`) plus what identifies
    it (a domain dataset's roles among them, DOMAIN_ROLE_KEYS; the finished run weights_from read),
    and for hyperparameters read from a search's file the study and trial they came from."""
    t = cfg.trainer
    budget = {"epochs": int(t.epochs)} if cfg.phase == "final" else {"inner_steps": int(t.inner_steps)}
    out = {"phase": cfg.phase, "dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name,
           "seed": int(cfg.seed), "batch_size": int(t.batch_size), **budget, **hparams_config(hp),
           "hparams_source": hp.get("source")}
    if cfg.phase == "search":  # a trial's alpha is chosen (search.wise_alphas): the summary's wise_alpha
        out.pop("wise_alpha", None)
    task = cfg.dataset.get("task") or {}
    out.update({k: plain(task[k]) for k in DOMAIN_ROLE_KEYS if task.get(k) is not None})
    if cfg.get("weights_from"):  # evaluated, not trained: whose weights
        out["weights_from"] = str(cfg.weights_from)
    origin = origin or {}
    if origin.get("study_name") is not None:
        out.update(hparams_study=origin["study_name"], hparams_trial=origin.get("trial_number"))
    return out


def trial_summary(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric of a search trial, from its record (what trial.json holds): the objective,
    per-seed scores, OOD-val metrics, CI, the chosen WiSE-FT alpha (search.wise_alphas), the run's lr."""
    out: dict[str, Any] = {"objective": rec["objective"]}
    for k in ("per_seed", "ci", "wise_alpha"):
        if k in rec:
            out[k] = rec[k]
    if "lr" in rec.get("hparams", {}):
        out["lr"] = rec["hparams"]["lr"]
    runs = rec.get("runs") or ([rec] if "ood_val" in rec else [])
    if runs:
        out["ood_val"] = runs[0].get("ood_val", {})
        for k in ("final_loss", "peak_lr", "seconds"):
            if k in runs[0]:
                out[k] = runs[0][k]
    return out


def study_summary(best: Mapping[str, Any], hp: Mapping[str, Any], trials: list[dict[str, str]]) -> dict[str, Any]:
    """A study run's summary: its trials counted by state (trials.csv rows), the best trial's score
    (`best`: optimization_results.yaml) and the chosen hyperparameters (`hp`: best_hparams.yaml's values)."""
    states = [t.get("state") for t in trials]
    chosen = {k: hp[k] for k in ("loss_weights", "lr_scale", "weight_decay", "wise_alpha") if k in hp}
    return {"trials": {s.lower(): states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")},
            "best": {"objective": best.get("best_value"), "trial_number": best.get("best_trial_number"),
                     **hparams_config(chosen)}}


def typed_columns(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """CSV cells as W&B table cells: a column whose cells all read as numbers holds floats (empty
    cells None), any other column strings (a W&B table column has one type)."""
    def num(v: str):
        try:
            return float(v)
        except ValueError:
            return None
    cols = list(rows[0]) if rows else []
    numeric = {c for c in cols if all(r[c] in ("", None) or num(r[c]) is not None for r in rows)}
    return [{c: (num(r[c]) if r[c] not in ("", None) else None) if c in numeric else str(r[c] or "") for c in cols}
            for r in rows]
