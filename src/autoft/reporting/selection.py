"""Selection report: how much of the chosen hyperparameters' score was selection noise.

For each search found under a results directory (a best_hparams.yaml the sweeper wrote), one row
puts side by side, for the hyperparameters it chose:

    trial score      the search's OOD-val score of the chosen trial (with its bootstrap 95% interval)
    re-evaluated     its OOD-val score with fresh seeds (top-k re-evaluation; empty when off)
    final OOD-val    the final runs' OOD-val score (method autoft, or autoft_alpha; results.json metrics.ood_val)
    OOD tests        each OOD test set and their mean, from the same final runs
    val-to-test gap  final OOD-val minus the OOD test mean

so a winner whose trial score was luck shows a drop from the first column to the next ones. Final
runs count only when their hyperparameters equal the file's (a search rerun may have chosen others
since); runs with other hyperparameters are named in a note. Numbers are the dataset's objective
metric x100, like the results table. Written as selection_report.md and .json next to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.io import atomic_write_text, write_json
from autoft.records import HPARAMS_FILE, read_best_hparams
from autoft.reporting.results import RunResult
from autoft.reporting.tables import SCALE, Cell

REPORT_MD, REPORT_JSON = "selection_report.md", "selection_report.json"
METHOD = "autoft"
# the methods whose final runs read a search's best_hparams.yaml (autoft_alpha: a search that also chose
# the WiSE-FT alpha, search.wise_alphas)
AUTOFT_METHODS = (METHOD, "autoft_alpha")


@dataclass
class Selection:
    source: Path
    hparams: dict
    runs: list[RunResult] = field(default_factory=list)  # final runs with exactly these hyperparameters
    others: list[RunResult] = field(default_factory=list)  # final runs of `method` with other hyperparameters
    method: str = METHOD  # the method whose final runs used these hyperparameters

    @property
    def metric(self) -> str:
        return str(self.hparams.get("metric") or (self.runs[0].metric if self.runs else "objective"))

    @property
    def ood_splits(self) -> list[str]:
        return self.runs[0].ood_splits if self.runs else []

    def final(self, split: str) -> Optional[Cell]:
        vals = [r.value(split) for r in self.runs if split in r.data["metrics"]
                and self.metric in r.data["metrics"][split]]
        return Cell(vals) if vals and len(vals) == len(self.runs) else None

    def ood_mean(self) -> Optional[Cell]:
        return Cell([r.ood_mean() for r in self.runs]) if self.runs else None

    def gap(self) -> Optional[Cell]:
        """Final OOD-val minus OOD test mean, per seed then averaged (positive: val flatters test)."""
        if not self.runs or self.final("ood_val") is None:
            return None
        return Cell([r.value("ood_val") - r.ood_mean() for r in self.runs])

    def as_dict(self) -> dict:
        hp = self.hparams

        def cell(c: Optional[Cell]):
            return None if c is None else {"values": c.values, "mean": c.mean, "std": c.std, "n": c.n}

        return {"source": str(self.source), "study_name": hp.get("study_name"), "trial_number": hp.get("trial_number"),
                "metric": self.metric, "selected_by": hp.get("selected_by", "search"),
                "trial_score": hp.get("objective"), "trial_ci": hp.get("search_ci"),
                "trial_seeds": hp.get("search_seeds"),
                "reevaluated_score": hp.get("reevaluated_objective"), "reevaluated_ci": hp.get("reevaluated_ci"),
                "reevaluated_seeds": hp.get("reevaluated_seeds"),
                "final_method": self.method, "final_seeds": sorted(r.seed for r in self.runs),
                "final_ood_val": cell(self.final("ood_val")),
                "ood_tests": {s: cell(self.final(s)) for s in self.ood_splits}, "ood_mean": cell(self.ood_mean()),
                "val_to_test_gap": cell(self.gap()),
                "candidates": (hp.get("reevaluation") or {}).get("candidates", []),
                "other_runs": [str(r.path) for r in self.others]}


def same_hparams(run: RunResult, hp: Hyperparameters) -> bool:
    """The final run trained with the file's loss weights, lr scale, weight decay and WiSE-FT alpha."""
    try:
        used = Hyperparameters.from_mapping(run.data.get("hparams") or {}, str(run.path))
    except UserError:  # a run without a complete hyperparameters record did not use these
        return False
    return used.same_as(hp)


def find_hparams_files(root: Path) -> list[tuple[Path, Hyperparameters]]:
    """best_hparams.yaml files under root with their hyperparameters, one per study (the shallowest:
    the sweep dir's copy); unreadable or invalid files are skipped (not a search's file)."""
    out, seen = [], set()
    for path in sorted(Path(root).rglob(HPARAMS_FILE), key=lambda p: (len(p.parts), str(p))):
        try:
            chosen = read_best_hparams(path)
        except UserError:
            continue
        name = chosen.records.get("study_name")
        if name in seen:
            continue
        seen.add(name)
        out.append((path, chosen))
    return out


def build(root: Path, runs: Sequence[RunResult], methods: Sequence[str] = AUTOFT_METHODS) -> list[Selection]:
    """One Selection per search under root whose dataset/model match the runs' group, with the final
    runs of the method (of `methods`, the first on a tie) that used its hyperparameters most."""
    groups = {r.group for r in runs}
    out = []
    for path, chosen in find_hparams_files(root):
        hp = chosen.to_dict()
        if hp.get("dataset") and hp.get("model") and groups and (hp["dataset"], hp["model"]) not in groups:
            continue  # another dataset's search under the same root
        matched = {m: [r for r in runs if r.method == m and same_hparams(r, chosen)] for m in methods}
        method = max(methods, key=lambda m: len(matched[m]))
        others = [r for r in runs if r.method == method and r not in matched[method]]
        out.append(Selection(path, hp, sorted(matched[method], key=lambda r: r.seed),
                             sorted(others, key=lambda r: r.seed), method))
    return out


def _score(v, ci=None, digits: int = 1) -> str:
    if v is None:
        return ""
    s = f"{SCALE * float(v):.{digits}f}"
    if ci and len(ci) == 2:
        s += f" [{SCALE * float(ci[0]):.{digits}f}, {SCALE * float(ci[1]):.{digits}f}]"
    return s


def _cell(c: Optional[Cell], digits: int = 1) -> str:
    return "" if c is None else c.text(digits)


def to_markdown(selections: Sequence[Selection], digits: int = 1) -> str:
    if not selections:
        return ""
    lines = []
    splits = []
    for s in selections:
        splits += [x for x in s.ood_splits if x not in splits]
    heads = ["Study / trial", "chosen by", "trial score (search)", "re-evaluated", "final OOD-val",
             *splits, "OOD test mean", "val-to-test gap", "final seeds"]
    lines += ["| " + " | ".join(heads) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(heads) - 2)) + "|"]
    for s in selections:
        hp = s.hparams
        trial = f"{hp.get('study_name', s.source.parent.name)} / {hp.get('trial_number', '?')}"
        seeds = hp.get("reevaluated_seeds")
        re = _score(hp.get("reevaluated_objective"), hp.get("reevaluated_ci"), digits)
        if re and seeds:
            re += f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
        cells = [trial, hp.get("selected_by", "search"), _score(hp.get("objective"), hp.get("search_ci"), digits), re,
                 _cell(s.final("ood_val"), digits), *[_cell(s.final(x), digits) if x in s.ood_splits else ""
                                                       for x in splits],
                 _cell(s.ood_mean(), digits), _cell(s.gap(), digits), str(len(s.runs)) if s.runs else "0"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for s in selections:
        cands = (s.hparams.get("reevaluation") or {}).get("candidates") or []
        if cands:
            notes.append("")
            notes.append(f"Top-{len(cands)} re-evaluation of study {s.hparams.get('study_name')} (seeds "
                         f"{', '.join(map(str, (s.hparams.get('reevaluation') or {}).get('seeds', [])))}):")
            notes.append("")
            notes.append("| trial | search score | re-evaluated | chosen |")
            notes.append("|---:|---:|---:|:---:|")
            for c in cands:
                re = _score(c.get("reevaluated_objective"), None, digits) or str(c.get("state", ""))
                mark = "yes" if c.get("trial_number") == s.hparams.get("trial_number") else ""
                notes.append(f"| {c.get('trial_number')} | {_score(c.get('search_objective'), None, digits)} | {re} | "
                             f"{mark} |")
        if not s.runs:
            notes.append("")
            notes.append(f"No final run of method {' or '.join(AUTOFT_METHODS)} used the hyperparameters of "
                         f"{s.source}: run `python train.py method={METHOD} hparams={s.source} seed=0` (or "
                         "scripts/final_retrain.py).")
        if s.others:
            notes.append("")
            notes.append(f"Not counted (final {s.method} runs with other hyperparameters than {s.source}): "
                         + ", ".join(str(r.path) for r in s.others))
    metric = selections[0].metric
    head = (f"Selection noise: the chosen hyperparameters' {metric} x100 in the search (trial score, bootstrap 95% "
            "interval), with fresh seeds (re-evaluated), in the final runs on OOD-val, and on the OOD test sets "
            "(final runs: mean ± std over seeds; gap = final OOD-val minus OOD test mean).")
    return head + "\n\n" + "\n".join(lines) + "\n" + "\n".join(notes) + ("\n" if notes else "")


def write_selection_report(out_dir: str | Path, runs: Sequence[RunResult],
                           search_root: Optional[str | Path] = None) -> tuple[str, list[Path]]:
    """selection_report.md/.json in out_dir for the searches under search_root (default out_dir);
    ('', []) when there is no search there."""
    out_dir = Path(out_dir)
    selections = build(Path(search_root or out_dir), runs)
    if not selections:
        return "", []
    md = to_markdown(selections)
    atomic_write_text(out_dir / REPORT_MD, md)
    write_json(out_dir / REPORT_JSON, [s.as_dict() for s in selections])
    return md, [out_dir / REPORT_MD, out_dir / REPORT_JSON]
