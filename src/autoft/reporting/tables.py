"""Paper-style tables: rows = methods, columns = ID test, each OOD test, OOD mean; mean +- std over
seeds, in Markdown and LaTeX, with optional reference columns (published numbers).

OOD numbers are the dataset's objective metric (`objective_metric` of the results), shown x100. The
ID test is the split the results name (`id_test_split`: ImageNet's `imagenet`, CIFAR-10's `cifar10`)
and its columns show `id_test_metrics` (default the objective): FMoW's ID column is the average
accuracy, as WILDS reports it, followed by the ID worst-region accuracy (column `id_worst_group_accuracy`). The
standard deviation is the sample one (ddof=1) over seeds, omitted for a single seed. The OOD mean is
computed per seed first (mean over the OOD tests), then averaged over seeds, so its std is the spread
of the per-seed OOD means. Extra tests (results' `extra_test_splits`, e.g. CIFAR-10's optional
`cifar10.2_train`, the file the reference reports as CIFAR-10.2) follow the OOD mean as their own
columns and never enter it.

Reference file (YAML), e.g. `--reference paper_iwildcam.yaml`:

    source: "AutoFT paper, Table 1"     # shown in the caption
    metric: macro_f1                    # must equal the results' objective metric
    methods:                            # row keys: a method name, or wise-<method> for WiSE-FT rows
      ft:     {id: 48.1, ood_mean: 35.0}   # column keys: id, ood_mean, or an OOD test split name
      autoft: {ood_mean: 40.0}

Reference numbers are written as printed in the source (x100, like our cells). Only numbers the file
gives are shown; every other reference cell stays empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from autoft.reporting.results import ResultsError, RunResult
from autoft.values import finite

# display order and names of the methods we ship (others follow, by name)
# autoft_alpha: AutoFT whose search also chose the WiSE-FT alpha (search.wise_alphas), applied by its final run
METHOD_ORDER = ("zeroshot", "lp", "ft", "lpft", "l2sp", "flyp", "wise-ft", "autoft", "wise-autoft", "autoft_alpha")
DISPLAY = {"zeroshot": "Zero-shot", "lp": "LP", "ft": "FT", "lpft": "LP-FT", "l2sp": "L2-SP", "flyp": "FLYP",
           "autoft": "AutoFT", "autoft_alpha": "AutoFT, α searched"}
WISE_PREFIX = "wise-"
SCALE = 100.0
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "worst_group_accuracy": "worst-group accuracy"}


def id_column(i: int, metric: str) -> str:
    """Column key of the i-th ID-test metric: 'id' for the first (reference files use it)."""
    return "id" if i == 0 else f"id_{metric}"


@dataclass
class Cell:
    values: list[float]  # one per seed, unscaled

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> Optional[float]:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    def text(self, digits: int = 1, pm: str = " ± ") -> str:
        s = f"{SCALE * self.mean:.{digits}f}"
        return s + (f"{pm}{SCALE * self.std:.{digits}f}" if self.std is not None else "")


@dataclass
class Row:
    key: str  # method name, or wise-<method>
    label: str
    seeds: list[int]
    cells: dict[str, Cell]  # column key -> cell
    reference: dict[str, float] = field(default_factory=dict)


@dataclass
class Table:
    dataset: str
    model: str
    metric: str
    higher_is_better: bool
    columns: list[str]  # "id" (+ "id_<metric>"), OOD test names, "ood_mean", extra test names
    rows: list[Row]
    reference_columns: list[str] = field(default_factory=list)
    reference_source: Optional[str] = None
    wise_alpha: float = 0.5
    id_test: str = "id_test"
    id_metrics: list[str] = field(default_factory=list)  # default [metric]
    extra_columns: list[str] = field(default_factory=list)  # OOD tests shown outside the OOD mean

    def __post_init__(self):
        self.id_metrics = list(self.id_metrics or [self.metric])

    def header(self, col: str) -> str:
        ids = {id_column(i, m): m for i, m in enumerate(self.id_metrics)}
        if col in ids:  # name the metric where the ID column does not show the objective
            plain = self.id_metrics == [self.metric]
            if plain:
                return "ID" if self.metric == "accuracy" else f"ID ({METRIC_LABELS.get(self.metric, self.metric)})"
            return f"ID {METRIC_LABELS.get(ids[col], ids[col])}"
        name = {"ood_mean": "OOD mean"}.get(col, col)
        if self.metric != "accuracy":  # the OOD columns say their metric where it is not plain accuracy
            name = f"{name} ({METRIC_LABELS.get(self.metric, self.metric)})"
        return f"{name} (not in mean)" if col in self.extra_columns else name

    def best(self, col: str) -> Optional[float]:
        means = [r.cells[col].mean for r in self.rows if col in r.cells]
        if not means:
            return None
        return max(means) if self.higher_is_better else min(means)

    def as_dict(self) -> dict:
        """Machine-readable: every cell's per-seed values, mean and std (unscaled)."""
        return {"dataset": self.dataset, "model": self.model, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "columns": self.columns, "wise_alpha": self.wise_alpha,
                "id_test": self.id_test, "id_metrics": self.id_metrics, "extra_columns": self.extra_columns,
                "headers": {c: self.header(c) for c in self.columns},
                "reference_source": self.reference_source, "reference_columns": self.reference_columns,
                "rows": [{"key": r.key, "label": r.label, "seeds": r.seeds, "reference": r.reference,
                          "cells": {c: {"values": v.values, "mean": v.mean, "std": v.std, "n": v.n}
                                    for c, v in r.cells.items()}} for r in self.rows]}


def method_label(key: str, alpha: float) -> str:
    if key.startswith(WISE_PREFIX):
        base = key[len(WISE_PREFIX):]
        name = "WiSE-FT" if base == "ft" else f"{DISPLAY.get(base, base)} + WiSE-FT"
        return f"{name} (α={alpha:.1f})"
    return DISPLAY.get(key, key)


def _order(key: str) -> tuple[int, str, int]:
    """Known methods in METHOD_ORDER, others by name; a WiSE-FT row right after its method
    (wise-ft and wise-autoft have their own places)."""
    if key in METHOD_ORDER:
        return METHOD_ORDER.index(key), key, 0
    wise = key.startswith(WISE_PREFIX)
    base = key[len(WISE_PREFIX):] if wise else key
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return rank, base, int(wise)


def _row(key: str, runs: Sequence[RunResult], alpha: Optional[float]) -> Row:
    runs = sorted(runs, key=lambda r: r.seed)
    cells: dict[str, list[float]] = {}
    for r in runs:
        m = r.wise_metrics(alpha) if alpha is not None else None
        for i, metric in enumerate(r.id_metrics):
            cells.setdefault(id_column(i, metric), []).append(r.value(r.id_test, m, metric))
        for s in [*r.ood_splits, *r.extra_splits]:
            cells.setdefault(s, []).append(r.value(s, m))
        cells.setdefault("ood_mean", []).append(r.ood_mean(m))
    return Row(key, method_label(key, alpha or 0.0), [r.seed for r in runs], {c: Cell(v) for c, v in cells.items()})


def build_table(runs: Sequence[RunResult], wise_of: Iterable[str] = ("ft",), wise_alpha: float = 0.5,
                reference: Optional[dict] = None) -> Table:
    """One table from the runs of one (dataset, model). `wise_of`: methods that get a WiSE-FT row
    (from the `wise` block of their runs); "all" for every trained method."""
    if not runs:
        raise ResultsError("no runs to tabulate")
    first = runs[0]
    by_method: dict[str, list[RunResult]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(r)
    wise_of = list(wise_of)
    if wise_of == ["all"]:
        wise_of = [m for m, rs in by_method.items() if all(r.trained for r in rs)]
    rows = [_row(m, by_method[m], None) for m in by_method]
    for m in wise_of:
        if m in by_method and all(r.trained for r in by_method[m]):
            rows.append(_row(WISE_PREFIX + m, by_method[m], wise_alpha))
    columns = [*(id_column(i, m) for i, m in enumerate(first.id_metrics)), *first.ood_splits, "ood_mean",
               *first.extra_splits]
    table = Table(str(first.data["dataset"]), str(first.data["model"]), first.metric,
                  bool(first.data["higher_is_better"]), columns, rows, wise_alpha=wise_alpha,
                  id_test=first.id_test, id_metrics=first.id_metrics, extra_columns=first.extra_splits)
    if reference:
        add_reference(table, reference)
    table.rows.sort(key=lambda r: _order(r.key))
    return table


def add_reference(table: Table, reference: dict, source_name: str = "reference file") -> None:
    ref_metric = reference.get("metric")
    if ref_metric is not None and ref_metric != table.metric:
        raise ResultsError(f"{source_name}: metric '{ref_metric}' but the results report '{table.metric}'")
    entries = reference.get("methods") or {}
    known = set(table.columns)
    for key, values in entries.items():
        for col, v in (values or {}).items():
            if col not in known:
                raise ResultsError(f"{source_name}: methods.{key}.{col} is not a column; valid: {', '.join(table.columns)}")
            if v is not None and not finite(v):
                raise ResultsError(f"{source_name}: methods.{key}.{col} must be a number, got {v!r}")
    rows = {r.key: r for r in table.rows}
    for key, values in entries.items():
        values = {c: float(v) for c, v in (values or {}).items() if v is not None}
        if key not in rows:  # a published method we did not run: its measured cells stay empty
            rows[key] = Row(key, method_label(key, table.wise_alpha), [], {})
            table.rows.append(rows[key])
        rows[key].reference = values
    used = {c for r in table.rows for c in r.reference}
    table.reference_columns = [c for c in table.columns if c in used]
    table.reference_source = reference.get("source")


def load_reference(path: str | Path) -> dict:
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"reference file not found: {path}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # a YAML syntax error: name the file
        raise ResultsError(f"{path}: cannot parse reference YAML ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods", {}), dict):
        raise ResultsError(f"{path}: expected a mapping with 'methods: {{<method>: {{<column>: number}}}}'")
    return data


# ------------------------------------------------------------------------------------------------
# rendering

def _fmt_ref(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.1f}"


def _is_best(table: Table, row: Row, col: str) -> bool:
    best = table.best(col)
    return col in row.cells and best is not None and row.cells[col].mean == best


def to_markdown(table: Table, digits: int = 1) -> str:
    heads = ["Method", *[table.header(c) for c in table.columns], "seeds",
             *[f"{table.header(c)} (ref.)" for c in table.reference_columns]]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join([":---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for r in table.rows:
        cells = []
        for c in table.columns:
            t = r.cells[c].text(digits) if c in r.cells else ""
            cells.append(f"**{t}**" if t and _is_best(table, r, c) else t)
        refs = [_fmt_ref(r.reference.get(c)) for c in table.reference_columns]
        lines.append("| " + " | ".join([r.label, *cells, str(len(r.seeds)) if r.seeds else "", *refs]) + " |")
    return "\n".join(lines) + "\n"


def _outside_mean(table: Table) -> str:
    return f" but {', '.join(table.extra_columns)} (shown for comparison)" if table.extra_columns else ""


def caption(table: Table) -> str:
    direction = "higher is better" if table.higher_is_better else "lower is better"
    id_part = " and ".join(METRIC_LABELS.get(m, m) for m in table.id_metrics)
    text = (f"{table.dataset} ({table.model}): {table.metric} x100 ({direction}), mean ± std over seeds; "
            f"ID = {id_part} on {table.id_test}; OOD columns = {METRIC_LABELS.get(table.metric, table.metric)}, "
            f"OOD mean = mean over the OOD test sets{_outside_mean(table)}; WiSE-FT rows at α={table.wise_alpha:.1f}.")
    if table.reference_columns:
        text += f" (ref.) columns: {table.reference_source or 'reference file'}; empty where it gives no number."
    return text


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in s).replace("α", r"$\alpha$").replace("±", r"$\pm$")


def to_latex(table: Table, digits: int = 1) -> str:
    n_cols = 1 + len(table.columns) + len(table.reference_columns)
    heads = ["Method", *[table.header(c) for c in table.columns], *[f"{table.header(c)} (ref.)" for c in table.reference_columns]]
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{{latex_escape(caption(table))}}}",
           r"\begin{tabular}{l" + "c" * (n_cols - 1) + "}", r"\toprule",
           " & ".join(latex_escape(h) for h in heads) + r" \\", r"\midrule"]
    for r in table.rows:
        cells = []
        for c in table.columns:
            t = r.cells[c].text(digits, pm=r" $\pm$ ") if c in r.cells else ""
            cells.append(rf"\textbf{{{t}}}" if t and _is_best(table, r, c) else t)
        refs = [_fmt_ref(r.reference.get(c)) for c in table.reference_columns]
        out.append(" & ".join([latex_escape(r.label), *cells, *refs]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv_rows(table: Table) -> list[dict]:
    """Long format: one line per (method, column) with mean, std and n (unscaled)."""
    rows = []
    for r in table.rows:
        for c in table.columns:
            if c in r.cells:
                cell = r.cells[c]
                rows.append({"dataset": table.dataset, "model": table.model, "method": r.key, "column": c,
                             "metric": table.metric, "mean": cell.mean, "std": cell.std, "n": cell.n,
                             "reference": r.reference.get(c)})
    return rows
