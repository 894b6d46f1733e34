"""Plots written next to the results (PNG).

Figures are built with matplotlib's object API (no pyplot state), so they work in worker processes
without a display and leave a notebook's inline backend alone.

- id_vs_ood: ID vs OOD-mean per method (mean +- std over seeds) with each fine-tuned method's
  WiSE-FT curve: the effective-robustness view (a method above the line through zero-shot and its
  fine-tuned model is more robust than interpolation alone).
- wise_curves: ID and OOD mean as functions of the mixing coefficient a.
- search_history / search_importances / parallel coordinates: a study's objective per trial with its
  interval, the best so far and the re-evaluated candidates, fANOVA hyperparameter importances, and
  each trial's hyperparameters against its objective, from its records
  (no storage is opened here). The search draws the plots beside each study with these same
  functions (autoft.search.outputs.write_study_plots); reports draw them from loaded records.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.ticker import MaxNLocator
from matplotlib.figure import Figure  # no pyplot: no display, no global backend switch (notebooks keep theirs)

from autoft.io import atomic_write
from autoft.reporting.results import RunResult
from autoft.reporting.tables import SCALE, Table, method_label
from autoft.values import finite

log = logging.getLogger(__name__)


def _save(fig, path: Path, dpi: int = 130) -> Path:
    """Write the figure as a PNG through the one atomic writer (a kill never leaves half a file)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return Path(path)


def wise_points(runs: Sequence[RunResult]) -> dict[str, dict[float, tuple[float, float]]]:
    """method -> alpha -> (ID, OOD mean), averaged over the method's seeds (trained methods only)."""
    by_method: dict[str, list[RunResult]] = {}
    for r in runs:
        if r.trained:
            by_method.setdefault(r.method, []).append(r)
    out = {}
    for m, rs in by_method.items():
        alphas = sorted(set.intersection(*(set(r.wise_alphas()) for r in rs)))
        out[m] = {a: (float(np.mean([r.id_value(r.wise_metrics(a)) for r in rs])),
                      float(np.mean([r.ood_mean(r.wise_metrics(a)) for r in rs]))) for a in alphas}
    return out


def plot_id_vs_ood(table: Table, runs: Sequence[RunResult], path: Path) -> Path:
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.subplots()
    curves = wise_points(runs)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, pts) in enumerate(sorted(curves.items())):
        a = sorted(pts)
        xs, ys = [SCALE * pts[k][0] for k in a], [SCALE * pts[k][1] for k in a]
        ax.plot(xs, ys, "--", color=colors[i % len(colors)], alpha=0.6, lw=1.2,
                label=f"WiSE-FT of {method_label(m, 0)} (α 0→1)")
    for i, row in enumerate(r for r in table.rows if "id" in r.cells):
        idc, oodc = row.cells["id"], row.cells["ood_mean"]
        ax.errorbar(SCALE * idc.mean, SCALE * oodc.mean,
                    xerr=SCALE * idc.std if idc.std else None, yerr=SCALE * oodc.std if oodc.std else None,
                    fmt="o" if not row.key.startswith("wise-") else "s", ms=7, capsize=3, label=row.label)
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], ":", color="grey", lw=0.8, label="OOD = ID")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"ID test {table.metric} (x100)")
    ax.set_ylabel(f"OOD mean {table.metric} (x100)")
    ax.set_title(f"{table.dataset} / {table.model}: ID vs OOD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_wise_curves(runs: Sequence[RunResult], path: Path, metric: str) -> Optional[Path]:
    curves = wise_points(runs)
    if not curves:
        return None
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharex=True)
    for m, pts in sorted(curves.items()):
        a = sorted(pts)
        for ax, k in zip(axes, (0, 1)):
            ax.plot(a, [SCALE * pts[x][k] for x in a], "o-", ms=3, label=method_label(m, 0))
    for ax, name in zip(axes, ("ID test", "OOD mean")):
        ax.set_xlabel("α  (0 = zero-shot, 1 = fine-tuned)")
        ax.set_ylabel(f"{name} {metric} (x100)")
        ax.set_title(f"WiSE-FT: {name}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
# the search

def plot_search_history(name: str, trials: Sequence, maximize: bool, path: Path,
                        reevaluations: Optional[Mapping[int, Mapping]] = None,
                        chosen: Optional[int] = None) -> Optional[Path]:
    """A study's history from its trials (FrozenTrials): each trial's objective with its bootstrap 95%
    interval (user attributes ci_low/ci_high) as an error bar, the best so far, failed/pruned trials,
    and the re-evaluated candidates (records {number: {state, value, ci_low, ci_high, seeds}})
    joined to their search score, so a lucky winner shows as a long drop."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.values and finite(t.value)]
    if not done:
        return None
    x = [t.number for t in done]
    y = [float(t.value) for t in done]

    def err(values, lows, highs):
        lo = [v - float(l) if finite(l) else 0.0 for v, l in zip(values, lows)]
        hi = [float(h) - v if finite(h) else 0.0 for v, h in zip(values, highs)]
        return [[max(a, 0.0) for a in lo], [max(b, 0.0) for b in hi]]

    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    yerr = err(y, [t.user_attrs.get("ci_low") for t in done], [t.user_attrs.get("ci_high") for t in done])
    has_ci = any(a or b for a, b in zip(*yerr))
    ax.errorbar(x, y, yerr=yerr if has_ci else None, fmt="o", ms=4, color="C0", ecolor="C0", elinewidth=0.8,
                alpha=0.75, capsize=2, label="trial objective (OOD-val)" + (", 95% CI" if has_ci else ""))
    best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
    ax.step(x, best, where="post", color="C3", lw=1.2, label="best so far (search)")
    bad = [t.number for t in trials if t.state.name in ("FAIL", "PRUNED")]
    if bad:
        ax.scatter(bad, [min(y)] * len(bad), marker="x", color="grey", s=18, label="failed / pruned")
    by_number = {t.number: t for t in done}
    re = [(n, r) for n, r in sorted((reevaluations or {}).items())
          if r.get("state") == "complete" and n in by_number and finite(r.get("value"))]
    if re:
        rx = [n + 0.25 for n, _ in re]
        ry = [float(r["value"]) for _, r in re]
        rerr = err(ry, [r.get("ci_low") for _, r in re], [r.get("ci_high") for _, r in re])
        for (n, _), yy in zip(re, ry):
            ax.plot([n, n + 0.25], [by_number[n].value, yy], color="C2", lw=0.8, alpha=0.7)
        seeds = re[0][1].get("seeds") or []
        ax.errorbar(rx, ry, yerr=rerr if any(a or b for a, b in zip(*rerr)) else None, fmt="D", ms=5, color="C2",
                    capsize=2, label=f"re-evaluated (fresh seeds {', '.join(map(str, seeds))})")
    if chosen is not None and chosen in by_number:
        ax.scatter([chosen], [by_number[chosen].value], s=160, facecolors="none", edgecolors="black", lw=1.2,
                   label=f"chosen: trial {chosen}", zorder=5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"search history: {name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def param_importances(name: str, trials: Sequence, maximize: bool) -> dict[str, float]:
    """fANOVA importances of the searched hyperparameters; {} when the study is too small for it.
    Computed on an in-memory copy of the trials (no storage is opened here)."""
    import optuna

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    copy = optuna.create_study(direction="maximize" if maximize else "minimize")
    copy.add_trials(complete)
    try:
        return dict(optuna.importance.get_param_importances(
            copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except (RuntimeError, ValueError) as err:  # e.g. every trial had the same params
        log.warning("hyperparameter importances unavailable for study %s: %s", name, err)
        return {}


def plot_importances(name: str, trials: Sequence, maximize: bool, path: Path) -> Optional[Path]:
    imp = param_importances(name, trials, maximize)
    if not imp:
        return None
    names = list(imp)[::-1]
    fig = Figure(figsize=(6, 0.35 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"hyperparameter importances: {name}")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _axis_position(dist, value) -> float:
    """Where a sampled value sits on its distribution's axis: log10 for a log-scale range, the index
    for a categorical choice, else the value."""
    if hasattr(dist, "choices"):
        return float(dist.choices.index(value))
    return float(np.log10(value)) if getattr(dist, "log", False) else float(value)


def parallel_axes(trials: Sequence, maximize: bool) -> tuple[list[str], list, np.ndarray, list[tuple[float, float]]]:
    """The parallel-coordinates view of a study's complete trials: the axes ("objective", then the
    searched hyperparameters by name), the trials ordered best last, each trial's position on each
    axis scaled to [0, 1] between the axis's ends (axes x trials; NaN where a trial lacks the
    parameter), and each axis's (low, high) ends in the parameter's own units.

        position = (v - low) / (high - low),  v = log10(value) on a log-scale range, else value
    """
    done = sorted((t for t in trials if t.state.name == "COMPLETE" and t.values and finite(t.value)),
                  key=lambda t: t.value if maximize else -t.value)
    if not done:
        return ["objective"], [], np.empty((1, 0)), []
    dists: dict = {}  # each searched name's distribution, as its first (worst) trial drew it: the axis scale
    for t in done:
        for p, d in t.distributions.items():
            dists.setdefault(p, d)
    params = sorted(dists)
    grid = np.array([[float(t.value) for t in done]] +
                    [[_axis_position(t.distributions[p], t.params[p]) if p in t.params else np.nan for t in done]
                     for p in params], dtype=float)
    low, high = np.nanmin(grid, axis=1), np.nanmax(grid, axis=1)
    scaled = (grid - low[:, None]) / np.where(high > low, high - low, 1.0)[:, None]
    logs = [False] + [getattr(dists[p], "log", False) for p in params]
    ends = [(10 ** lo, 10 ** hi) if log else (lo, hi) for lo, hi, log in zip(low, high, logs)]
    return ["objective", *params], done, scaled, [(float(lo), float(hi)) for lo, hi in ends]


def plot_parallel_coordinates(name: str, trials: Sequence, maximize: bool, path: Path) -> Optional[Path]:
    """parallel_axes drawn on one matplotlib Axes, the trials as one line collection (optuna's version
    builds an Axes per column): one line per trial coloured by its objective, the best one thick and on top."""
    labels, done, scaled, ends = parallel_axes(trials, maximize)
    if len(labels) < 2 or not done:
        return None
    fig = Figure(figsize=(max(6.0, 1.1 * len(labels) + 2), 5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    norm = matplotlib.colors.Normalize(*ends[0])
    xs = np.arange(len(labels))
    others = [np.column_stack([xs, scaled[:, i]]) for i in range(len(done) - 1)]
    ax.add_collection(LineCollection(others, colors=[cmap(norm(t.value)) for t in done[:-1]], lw=1.0, alpha=0.6))
    ax.plot(xs, scaled[:, -1], color=cmap(norm(done[-1].value)), lw=2.2, zorder=3)  # the best
    for x, (lo, hi) in enumerate(ends):
        ax.axvline(x, color="grey", lw=0.8, zorder=1)
        ax.annotate(f"{lo:.3g}", (x, 0.0), xytext=(3, -10), textcoords="offset points", fontsize=6)
        ax.annotate(f"{hi:.3g}", (x, 1.0), xytext=(3, 4), textcoords="offset points", fontsize=6)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="objective")
    ax.set_title(f"parallel coordinates: {name} ({len(done)} complete trials)", fontsize=9)
    return _save(fig, path)


def plot_studies(studies: Sequence, out_dir: Path) -> list[Path]:
    """History and importance plots of study records (name, directions, trials), as
    autoft.search.study.load_studies gives them."""
    written = []
    for s in studies:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s.name)
        maximize = s.directions[0] == "maximize"
        for fn, what in ((plot_search_history, "history"), (plot_importances, "importances")):
            p = fn(s.name, s.trials, maximize, Path(out_dir) / f"search_{what}_{safe}.png")
            if p is not None:
                written.append(p)
    return written
