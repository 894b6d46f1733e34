"""Collecting a benchmark over domain splits x seeds (scripts/benchmark.py runs it).

A *cell* is one (split, seed s): the AutoFT search ran with seed s, and every method's final run
(zero-shot, the baselines, AutoFT) trained with the same final seed. Each cell gives one (ID, OOD
mean) point per row key: every method, and `wise-<method>` (WiSE-FT at alpha = 0.5) for every
fine-tuned method. From the cells:

- `summarize`: per row key, the mean over cells and a 95% t interval,
      mean +- t_{0.975, n-1} * s / sqrt(n),   s the sample std (ddof = 1) over the n cells;
- `paired`: per cell the difference AutoFT - baseline (same split, same final seed), then the same
  mean and interval over cells. Pairing removes the split's difficulty from the comparison;
- `per_split`: the OOD mean of each row key on each split, averaged over its seeds.

Plots: `plot_benchmark` (ID against OOD mean, with the averaged WiSE-FT curves) and `plot_paired`
(the paired OOD differences and their intervals: the answer to "does AutoFT help on this shift?" at
a glance). Tables and plots name the dataset's objective metric (`metric_name`). `log_to_wandb`
puts the same tables and plots in one W&B run.

Cells are treated as independent draws. They are not quite (the splits share the ID data and the
foundation model; seeds share a split), so the intervals describe the spread over this grid, not a
population of worlds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from autoft.reporting.results import RunResult
from autoft.reporting.tables import METRIC_LABELS, SCALE, WISE_PREFIX, _order, method_label

WISE_ALPHA = 0.5
# results whose `metrics` already are a WiSE-FT mixture get no WiSE-FT row of their own
NO_WISE_ROW = ("zeroshot", "autoft_alpha")


FAMILIES = ("single", "mixture")  # the split families: one OOD-val domain, or a class-balanced mixture of several


def is_benchmark(folder: Path) -> bool:
    """Whether a folder is a benchmark's output (scripts/benchmark.py): its collected benchmark.json,
    or its logs/ beside a family folder of splits. Its splits share methods and seeds, so one results
    table of all of them would mix the splits' test domains."""
    folder = Path(folder)
    return (folder / "benchmark.json").is_file() or (
        (folder / "logs").is_dir() and any((folder / f).is_dir() for f in FAMILIES))


@dataclass(frozen=True)
class CellRuns:
    family: str          # the split family: "single" (one OOD-val domain) or "mixture"
    split: str           # the split's id (its OOD-val name)
    seed: int            # search seed = final seed of every method in the cell
    runs: Mapping[str, RunResult]  # method -> its final run (zero-shot: the split's one evaluation)

    def points(self, wise_alpha: float = WISE_ALPHA) -> dict[str, tuple[float, float]]:
        """Row key -> (ID, OOD mean) in this cell, unscaled."""
        out = {}
        for method, run in self.runs.items():
            out[method] = (run.id_value(), run.ood_mean())
            if run.trained and method not in NO_WISE_ROW:
                m = run.wise_metrics(wise_alpha)
                out[WISE_PREFIX + method] = (run.id_value(m), run.ood_mean(m))
        return out


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: Optional[float]   # None when n < 2
    high: Optional[float]
    n: int

    def text(self, scale: float = SCALE, digits: int = 1) -> str:
        if self.low is None:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} [{scale * self.low:.{digits}f}, {scale * self.high:.{digits}f}]"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean and Student-t interval: mean +- t_{(1+level)/2, n-1} * s / sqrt(n), s with ddof = 1."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(mean, None, None, 1)
    half = float(t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, mean - half, mean + half, int(x.size))


def row_keys(cells: Sequence[CellRuns]) -> list[str]:
    """Row keys present in any cell, in the tables' method order."""
    return sorted(set().union(*(c.points() for c in cells)), key=_order)


def summarize(cells: Sequence[CellRuns]) -> list[dict]:
    """Per row key: ID and OOD mean estimates over the cells that have it (`n` says how many)."""
    pts = [c.points() for c in cells]
    out = []
    for k in row_keys(cells):
        have = [p[k] for p in pts if k in p]
        out.append({"key": k, "label": label(k), "id": mean_ci([v[0] for v in have]),
                    "ood": mean_ci([v[1] for v in have]), "n": len(have)})
    return out


def paired(cells: Sequence[CellRuns], of: Iterable[str] = ("autoft", "autoft_alpha", "wise-autoft")) -> list[dict]:
    """Per (method a, baseline b): estimates of the per-cell differences a - b in ID and OOD mean,
    over the cells that have both."""
    keys = row_keys(cells)
    pts = [c.points() for c in cells]
    out = []
    of = [k for k in of if k in keys]
    for a in of:
        # against every other row, except the AutoFT variants listed after `a` (each pair once)
        for b in [k for k in keys if k != a and not (k in of and of.index(k) > of.index(a))]:
            both = [p for p in pts if a in p and b in p]
            if both:
                out.append({"a": a, "b": b, "label": f"{label(a)} − {label(b)}",
                            "id": mean_ci([p[a][0] - p[b][0] for p in both]),
                            "ood": mean_ci([p[a][1] - p[b][1] for p in both]),
                            "wins": sum(p[a][1] > p[b][1] for p in both), "n": len(both)})
    return out


def per_split(cells: Sequence[CellRuns]) -> tuple[list[str], list[dict]]:
    """Row keys and, per split, the OOD mean of each key averaged over the split's seeds."""
    keys = row_keys(cells)
    by_split: dict[str, list[CellRuns]] = {}
    for c in cells:
        by_split.setdefault(c.split, []).append(c)
    rows = []
    for split, cs in by_split.items():
        pts = [c.points() for c in cs]
        rows.append({"split": split, "family": cs[0].family, "seeds": sorted(c.seed for c in cs),
                     "tests": cs[0].runs[next(iter(cs[0].runs))].ood_splits,
                     "ood": {k: float(np.mean([p[k][1] for p in pts if k in p])) for k in keys
                             if any(k in p for p in pts)}})
    return keys, rows


def metric_name(cells: Sequence[CellRuns]) -> str:
    """The objective metric the cells report, as the tables name it ("accuracy", "macro-F1", ...)."""
    metric = next(iter(cells[0].runs.values())).metric if cells else "accuracy"
    return METRIC_LABELS.get(metric, metric)


def label(key: str) -> str:
    if key == "autoft_alpha":
        return "AutoFT, α searched"
    return method_label(key, WISE_ALPHA)


def wise_curves(cells: Sequence[CellRuns]) -> dict[str, dict[float, tuple[float, float]]]:
    """method -> alpha -> (ID, OOD mean) averaged over cells, for methods fine-tuned in every cell."""
    methods = set.intersection(*(
        {m for m, r in c.runs.items() if r.trained and m not in NO_WISE_ROW} for c in cells)) if cells else set()
    # (methods missing from some cell get no averaged curve: it would mix different cells)
    out = {}
    for m in sorted(methods, key=_order):
        alphas = sorted(set.intersection(*(set(c.runs[m].wise_alphas()) for c in cells)))
        out[m] = {a: (float(np.mean([c.runs[m].id_value(c.runs[m].wise_metrics(a)) for c in cells])),
                      float(np.mean([c.runs[m].ood_mean(c.runs[m].wise_metrics(a)) for c in cells])))
                  for a in alphas}
    return out


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def summary_markdown(cells: Sequence[CellRuns], title: str) -> str:
    rows = summarize(cells)
    n_splits = len({c.split for c in cells})
    lines = [f"**{title}**: {len(cells)} cells ({n_splits} splits x seeds); {metric_name(cells)} x100, mean [95% t "
             "interval] over cells.",
             "", "| Method | ID | OOD mean | Cells |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['id'].text()} | {r['ood'].text()} | {r['n']} |" for r in rows]
    diffs = paired(cells)
    if diffs:
        lines += ["", "Paired differences (same split, same seed), x100:", "",
                  "| Difference | ID | OOD mean | OOD wins |", "|---|---|---|---|"]
        lines += [f"| {d['label']} | {d['id'].text()} | {d['ood'].text()} | {d['wins']}/{d['n']} |" for d in diffs]
    return "\n".join(lines) + "\n"


def per_split_markdown(cells: Sequence[CellRuns]) -> str:
    keys, rows = per_split(cells)
    head = "| Family | OOD-val | Seeds | " + " | ".join(label(k) for k in keys) + " |"
    lines = ["OOD mean (x100) per split, averaged over its seeds; tests: every other non-ID domain.", "",
             head, "|" + "---|" * (3 + len(keys))]
    for r in rows:
        best = max(r["ood"].values())
        cells_txt = ["–" if k not in r["ood"] else f"**{SCALE * r['ood'][k]:.1f}**" if r["ood"][k] == best
                     else f"{SCALE * r['ood'][k]:.1f}" for k in keys]
        lines.append(f"| {r['family']} | {r['split']} | {','.join(map(str, r['seeds']))} | " + " | ".join(cells_txt) + " |")
    return "\n".join(lines) + "\n"


def as_dict(cells: Sequence[CellRuns]) -> dict:
    est = lambda e: {"mean": e.mean, "low": e.low, "high": e.high, "n": e.n}  # noqa: E731
    keys, split_rows = per_split(cells)
    return {"cells": [{"family": c.family, "split": c.split, "seed": c.seed,
                       "points": {k: list(v) for k, v in c.points().items()},
                       "runs": {m: str(r.path) for m, r in c.runs.items()}} for c in cells],
            "summary": [{"key": r["key"], "label": r["label"], "id": est(r["id"]), "ood": est(r["ood"]), "n": r["n"]}
                        for r in summarize(cells)],
            "paired": [{"a": d["a"], "b": d["b"], "id": est(d["id"]), "ood": est(d["ood"]), "wins": d["wins"],
                        "n": d["n"]} for d in paired(cells)],
            "per_split": split_rows}


def plot_benchmark(cells: Sequence[CellRuns], path: Path, title: str) -> Path:
    """ID vs OOD mean averaged over cells: one marker per row key (bars: 95% intervals) and the
    WiSE-FT curve (alpha 0 -> 1) of every fine-tuned method."""
    import matplotlib
    from matplotlib.figure import Figure

    from autoft.reporting.plots import _save

    fig = Figure(figsize=(7.0, 5.4))
    ax = fig.subplots()
    rows = summarize(cells)
    # one colour per method: its marker (o), its WiSE-FT point (s) and its WiSE-FT curve
    bases = list(dict.fromkeys(r["key"].removeprefix(WISE_PREFIX) for r in rows))
    cycle = [c for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    colour = {m: ("black" if m == "zeroshot" else cycle[i % len(cycle)]) for i, m in enumerate(bases)}
    for m, pts in wise_curves(cells).items():
        a = sorted(pts)
        ax.plot([SCALE * pts[k][0] for k in a], [SCALE * pts[k][1] for k in a], "--", color=colour[m],
                alpha=0.5, lw=1.1, label=f"WiSE-FT of {label(m)} (α 0→1)")
    for r in rows:
        err = lambda e: None if e.low is None else [[SCALE * (e.mean - e.low)], [SCALE * (e.high - e.mean)]]  # noqa: E731
        wise = r["key"].startswith(WISE_PREFIX)
        ax.errorbar(SCALE * r["id"].mean, SCALE * r["ood"].mean, xerr=err(r["id"]), yerr=err(r["ood"]),
                    fmt="s" if wise else "o", ms=6, capsize=3, color=colour[r["key"].removeprefix(WISE_PREFIX)],
                    mfc="white" if wise else None, label=r["label"])
    ax.set_xlabel(f"ID test {metric_name(cells)} (x100)")
    ax.set_ylabel(f"OOD mean {metric_name(cells)} (x100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="best", ncol=2)
    return _save(fig, path)


def paired_figure(diffs: Sequence[Mapping], title: str, metric: str = "accuracy"):
    """The paired differences `paired` gives, as a forest plot: one row per (AutoFT variant a,
    baseline b), the mean of a - b in OOD mean (x100) with its 95% t interval, and the cells a won.
    Right of the zero line the variant did better; an interval across it does not tell them apart.
    Each row holds `a`, `b`, `ood` (an Estimate, or its dict as benchmark.json keeps it), `wins`, `n`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 1.2 + 0.24 * len(diffs)))
    ax = fig.subplots()
    variants = list(dict.fromkeys(d["a"] for d in diffs))
    for y, d in enumerate(diffs):
        e = d["ood"] if isinstance(d["ood"], Mapping) else vars(d["ood"])
        err = None if e["low"] is None else [[SCALE * (e["mean"] - e["low"])], [SCALE * (e["high"] - e["mean"])]]
        ax.errorbar(SCALE * e["mean"], y, xerr=err, fmt="o", ms=4, capsize=2.5, color=f"C{variants.index(d['a']) % 10}")
        ax.annotate(f"{d['wins']}/{d['n']}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=6.5)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(diffs)), [f"{label(d['a'])} − {label(d['b'])}" for d in diffs], fontsize=6.5)
    ax.set_ylim(len(diffs) - 0.5, -0.5)  # the table's order, top to bottom
    ax.set_xlabel(f"paired difference in OOD mean {metric} (x100), 95% t interval; right: cells won")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_paired(diffs: Sequence[Mapping], path: Path, title: str, metric: str = "accuracy") -> Path:
    """paired_figure, written as a PNG."""
    from autoft.reporting.plots import _save

    return _save(paired_figure(diffs, title, metric), path)


def _estimate_columns(prefix: str, e: Estimate) -> dict:
    return {f"{prefix}_mean": e.mean, f"{prefix}_low": e.low, f"{prefix}_high": e.high}


def log_to_wandb(logger_cfg: Mapping, out: Path, families: Mapping[str, Sequence[CellRuns]], files: Sequence[Path],
                 config: Mapping) -> None:
    """The collected benchmark as one W&B run: job_type = benchmark, group = <dataset>/<model>/benchmark,
    its id from the output folder (a later --collect updates the run). Per family, the summary and the
    paired differences as W&B tables (unscaled, with their 95% intervals) and their means as summary
    values (`<family>/<row key>/ood`, `<family>/<a>-<b>/ood`); the plots as images; benchmark.md,
    benchmark.json and the plots as an artifact. Never raises: W&B never stops a benchmark."""
    from autoft.reporting import wandb_logger as W

    name, model = config["dataset"], config["model"]
    run = W.from_config(logger_cfg, job_type="benchmark", name=f"benchmark-{name}", group=f"{name}/{model}/benchmark",
                        run_id=W.run_id("benchmark", Path(out).resolve()), config=config, out_dir=out)
    with run.closing():
        for fam, cs in families.items():
            rows, diffs = summarize(cs), paired(cs)
            run.table(f"{fam}/summary", [{"method": r["label"], "key": r["key"], **_estimate_columns("id", r["id"]),
                                          **_estimate_columns("ood", r["ood"]), "cells": r["n"]} for r in rows])
            if diffs:
                run.table(f"{fam}/paired", [{"difference": d["label"], "a": d["a"], "b": d["b"],
                                             **_estimate_columns("id", d["id"]), **_estimate_columns("ood", d["ood"]),
                                             "ood_wins": d["wins"], "cells": d["n"]} for d in diffs])
            run.summary({**{f"{fam}/{r['key']}/ood": r["ood"].mean for r in rows},
                         **{f"{fam}/{d['a']}-{d['b']}/ood": d["ood"].mean for d in diffs}})
        run.images([p for p in files if Path(p).suffix == ".png"])
        run.artifact(f"benchmark-{name}-{model}", "benchmark", files,
                     metadata={"metric": metric_name(next(iter(families.values()), []))})


@dataclass(frozen=True)
class BudgetPoint:
    """One choice of the budget study: a study grown to `trials`, its choice, and that choice's final run."""
    trials: int
    top_k: int                     # 0: the search's best trial; k: the best of the k best after re-evaluation
    chosen_trial: int
    search_score: float            # the chosen trial's OOD-val score in the search
    reevaluated: Optional[float]   # its OOD-val score with fresh seeds (top_k > 0)
    id_test: float                 # the final run (retrained with the chosen hyperparameters)
    ood_test: float                # its OOD test mean


def plot_budget(points: Sequence[BudgetPoint], path: Path, title: str) -> Path:
    """The budget curve: does a bigger search improve what the chosen trial scores on the tests, or only
    on OOD-val? Left: the chosen trial's OOD-val score (solid: in the search; dotted: re-evaluated);
    right: the OOD test mean of its final run. One line per re-evaluation setting."""
    from matplotlib.figure import Figure

    from autoft.reporting.plots import _save

    fig = Figure(figsize=(9.0, 3.6))
    val_ax, test_ax = fig.subplots(1, 2, sharex=True)
    budgets = sorted({p.trials for p in points})
    for k in sorted({p.top_k for p in points}):
        ps = sorted((p for p in points if p.top_k == k), key=lambda p: p.trials)
        name = f"top-{k} re-evaluated" if k else "search's best"
        x = [p.trials for p in ps]
        line, = val_ax.plot(x, [SCALE * p.search_score for p in ps], "o-", label=name)
        if k:
            val_ax.plot(x, [SCALE * (p.reevaluated if p.reevaluated is not None else math.nan) for p in ps], "s:",
                        color=line.get_color(), label=f"{name} (fresh seeds)")
        test_ax.plot(x, [SCALE * p.ood_test for p in ps], "o-", color=line.get_color(), label=name)
    for ax, what in ((val_ax, "chosen trial's OOD-val accuracy (x100)"), (test_ax, "final run's OOD test mean (x100)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(t) for t in budgets])
        ax.set_xlabel("trials in the study")
        ax.set_ylabel(what, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
