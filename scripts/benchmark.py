#!/usr/bin/env python
"""The embedded world as a benchmark: K domain splits x S seeds, every method, 95% intervals.

    python scripts/benchmark.py                 # the default grid: 6 splits x 1 seed (39 min on 2 idle cores)
    python scripts/benchmark.py --seeds 2       # ... x 2 seeds (twice as long)
    python scripts/benchmark.py --quick         # 2 splits, zero-shot / FT / AutoFT only (6 min)
    python scripts/benchmark.py --collect       # only rebuild the tables from what has finished
    python scripts/benchmark.py --budget        # the budget study (16, 48, 128 trials, +- re-evaluation)

Splits (the world itself is fixed: conf/dataset/shapes.yaml's sizes, cue and foundation model):
ID is always `studio`, the domain with the spurious cue. Family `single`: the OOD-val domain
rotates over the other eight domains in their fixed order (garden, snow, night, fog, clutter,
sketch, outline, texture: the first K); family `mixture`: OOD-val is a class-balanced mixture of
three consecutive domains of that order. The tests are all remaining domains, drawing styles
included. A cell (split, seed s) runs the AutoFT search with seed s (sampler and inner runs), then
the final runs of every method with seed s: zeroshot (once per split), lp, ft, lpft, l2sp, flyp,
autoft (and `autoft_alpha`, the search that also picks the WiSE-FT alpha, with --alpha-searched);
each fine-tuned run also reports its WiSE-FT curve. Baselines do not depend on the search, so they
run once per (split, seed) and pair with that cell's AutoFT.

Every step is an ordinary `train.py` command (printed in its log), run side by side: --jobs
processes, one CPU thread each (the default fills a 2-core machine). It is resumable: a step whose
results exist is skipped, a search resumes its study, so rerunning the same command continues a
killed benchmark. Extra arguments are Hydra overrides for every train.py call (e.g. device=cuda,
or hydra/launcher=slurm for the searches' trials).

Output under --out (default outputs/benchmark): <family>/<split>/{search-s<s>, <method>/seed<s>},
logs/, and the collected benchmark.md, benchmark.json and plots/<family>.png.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoft.runner import Step, complete, fmt_seconds, run_steps

ROOT = Path(__file__).resolve().parents[1]
ID_DOMAIN = "studio"
OTHERS = ("garden", "snow", "night", "fog", "clutter", "sketch", "outline", "texture")  # DOMAINS' order
BASELINES = ("lp", "ft", "lpft", "l2sp", "flyp")
ALPHAS = "[0.25,0.5,0.75,1.0]"
# rough relative costs, only for the ETA before any step has finished (then measured rates take over)
UNITS = {"trial": 1.0, "final": 3.0, "zeroshot": 0.5}


@dataclass(frozen=True)
class Split:
    family: str               # single | mixture
    ood_val: tuple[str, ...]  # one domain, or the domains of the mixture

    @property
    def id(self) -> str:
        return self.ood_val[0] if self.family == "single" else "mix-" + "-".join(self.ood_val)

    @property
    def tests(self) -> list[str]:
        return [d for d in OTHERS if d not in self.ood_val]

    def overrides(self) -> list[str]:
        val = self.ood_val[0] if self.family == "single" else "[" + ",".join(self.ood_val) + "]"
        return [f"dataset.task.ood_val_domain={val}", "dataset.task.test_domains=[" + ",".join(self.tests) + "]"]


def splits_of(family: str, k: int, mixture_size: int = 3) -> list[Split]:
    if family == "single":
        if not 1 <= k <= len(OTHERS):
            raise SystemExit(f"--single-splits={k}: must be in 1..{len(OTHERS)}")
        return [Split("single", (OTHERS[i],)) for i in range(k)]
    n = len(OTHERS) // mixture_size
    if not 0 <= k <= n:
        raise SystemExit(f"--mixture-splits={k}: must be in 0..{n} (disjoint mixtures of {mixture_size} domains)")
    return [Split("mixture", tuple(OTHERS[i * mixture_size + j] for j in range(mixture_size))) for i in range(k)]


@dataclass(frozen=True)
class Grid:
    single: int
    mixture: int
    seeds: int
    trials: int
    alpha_searched: bool
    baselines: tuple[str, ...] = BASELINES  # besides zero-shot, which every grid evaluates

    def splits(self) -> list[Split]:
        """The families interleaved (single 0, mixture 0, single 1, ...): a benchmark stopped early
        has cells of both."""
        single, mixture = splits_of("single", self.single), splits_of("mixture", self.mixture) if self.mixture else []
        return [sp for k in range(max(len(single), len(mixture))) for sp in (single[k:k + 1] + mixture[k:k + 1])]


# Sized by measurement on 2 idle CPU cores (docs/benchmark.md): the default grid took 39 min end to
# end, --quick 6 min (targets: 2 h and 20 min); a cell with its alpha-searched variant is about 6 min.
DEFAULT = Grid(single=4, mixture=2, seeds=1, trials=16, alpha_searched=True)
QUICK = Grid(single=2, mixture=0, seeds=1, trials=16, alpha_searched=False, baselines=("ft",))


def plan(grid: Grid, out: Path, extra: list[str]) -> list[Step]:
    """Every step of the grid, in the order they start: seed-major (a stopped benchmark has covered
    every split once), and the alpha-searched variant after all plain cells (it is an option)."""
    py = [sys.executable, str(ROOT / "train.py")]
    common = ["dataset=shapes", "model=shapes_rn10t", "logger=none", *extra]
    variants = [("autoft", "search", [])]
    if grid.alpha_searched:
        variants.append(("autoft_alpha", "search-alpha", [f"search.wise_alphas={ALPHAS}"]))
    steps = []
    for v, (method, dirname, opts) in enumerate(variants):
        for s in range(grid.seeds):
            for sp in grid.splits():
                where = out / sp.family / sp.id
                base = [*common, *sp.overrides()]
                if v == 0:
                    methods = (["zeroshot"] if s == 0 else []) + list(grid.baselines)
                    results = {m: where / m / f"seed{0 if m == 'zeroshot' else s}" / "results.json" for m in methods}
                    # one process for the split's baselines (the model and data load once); a rerun
                    # after a kill runs only the methods whose results are missing
                    todo = [m for m in methods if not complete(results[m])] or methods
                    steps.append(Step(f"{sp.id}/baselines-s{s}",
                                      py + ["-m", "method=" + ",".join(todo), f"seed={s}", "phase=final",
                                            f"hydra.sweep.dir={where}", *base],
                                      list(results.values()),
                                      sum(UNITS["zeroshot" if m == "zeroshot" else "final"] for m in todo)))
                sdir = where / f"{dirname}-s{s}"
                steps.append(Step(f"{sp.id}/{dirname}-s{s}",
                                  py + ["-m", "search=autoft", f"seed={s}", f"hydra.sweep.dir={sdir}",
                                        f"search.n_trials={grid.trials}", "hydra.sweeper.threads=1", *opts, *base],
                                  [sdir / f".complete-{grid.trials}"], UNITS["trial"] * grid.trials, marker=True))
                name_opt = [] if method == "autoft" else [f"method.name={method}"]
                steps.append(Step(f"{sp.id}/{method}-s{s}",
                                  py + ["method=autoft", *name_opt, f"seed={s}", "phase=final",
                                        f"hparams={sdir / 'best_hparams.yaml'}",
                                        f"hydra.run.dir={where / method / f'seed{s}'}", *base],
                                  [where / method / f"seed{s}" / "results.json"], UNITS["final"],
                                  after=[f"{sp.id}/{dirname}-s{s}"]))
    return steps


# ----------------------------------------------------------------------------------------------
# collecting
# ----------------------------------------------------------------------------------------------
def collect(grid: Grid, out: Path) -> Optional[Path]:
    from autoft.reporting.benchmark import (CellRuns, as_dict, per_split_markdown, plot_benchmark,
                                            summary_markdown)
    from autoft.io import atomic_write_text
    from autoft.reporting.results import ResultsError, read_result

    required = ["zeroshot", *grid.baselines, "autoft"]  # a cell counts once all of these finished
    optional = ["autoft_alpha"] if grid.alpha_searched else []  # its row covers the cells that have it
    cells, missing = {"single": [], "mixture": []}, []
    for sp in grid.splits():
        for s in range(grid.seeds):
            runs = {}
            for m in required + optional:
                path = out / sp.family / sp.id / m / f"seed{0 if m == 'zeroshot' else s}" / "results.json"
                try:
                    runs[m] = read_result(path)
                except ResultsError:
                    missing.append(str(path))
            if all(m in runs for m in required):
                cells[sp.family].append(CellRuns(sp.family, sp.id, s, runs))
    n_cells = sum(len(c) for c in cells.values())
    if not n_cells:
        print(f"collect: no complete cell under {out} yet", flush=True)
        return None
    titles = {"single": "Single-domain OOD-val", "mixture": "Mixture OOD-val (3 domains, class-balanced)"}
    parts = [f"# Benchmark on the embedded world\n\nGrid: {grid.single} single-domain splits, {grid.mixture} "
             f"mixture splits, {grid.seeds} seed(s) each, {grid.trials} search trials per search. "
             f"ID: {ID_DOMAIN}. Complete cells: {n_cells}" + (f" (missing runs: {len(missing)})" if missing else "") + "\n"]
    payload = {"grid": grid.__dict__, "missing": missing}
    for fam, cs in cells.items():
        if not cs:
            continue
        plot = plot_benchmark(cs, out / "plots" / f"{fam}.png", f"{titles[fam]}: mean over {len(cs)} cells")
        parts += [summary_markdown(cs, titles[fam]), per_split_markdown(cs), f"![{fam}](plots/{plot.name})\n"]
        payload[fam] = as_dict(cs)
    md = "\n".join(parts)
    path = out / "benchmark.md"
    atomic_write_text(path, md)
    atomic_write_text(out / "benchmark.json", json.dumps(payload, indent=1, default=str))
    print(md, flush=True)
    if missing:
        print(f"collect: {len(missing)} runs missing (e.g. {missing[0]}); their cells are left out", flush=True)
    print(f"collect: wrote {path}, {out / 'benchmark.json'}, {out / 'plots'}/", flush=True)
    return path


# ----------------------------------------------------------------------------------------------
# budget study
# ----------------------------------------------------------------------------------------------
def budget_steps(out: Path, budgets: list[int], top_k: int, extra: list[str]) -> list[Step]:
    """On the shipped split (OOD-val garden, tests the other seven): one study grown to each budget
    in turn (a rerun resumes to the new total; the searches form a chain); at each budget the chosen
    trial without and with top-k re-evaluation is retrained once (seed 0), beside the next search."""
    py = [sys.executable, str(ROOT / "train.py")]
    sp = splits_of("single", 1)[0]
    base = ["dataset=shapes", "model=shapes_rn10t", "logger=none", *extra, *sp.overrides()]
    sdir = out / "budget" / "search"
    steps, previous, grown = [], [], 0
    for b in budgets:
        for k in (0, top_k):
            tag = f"b{b}-top{k}"
            hp = out / "budget" / f"{tag}.yaml"
            search = py + ["-m", "search=autoft", "seed=0", f"hydra.sweep.dir={sdir}", f"search.n_trials={b}",
                           "hydra.sweeper.threads=1", f"search.reevaluate_top_k={k}", *base]
            # the search writes <sweep dir>/best_hparams.yaml; keep a copy per (budget, k)
            copy = f" && cp {shlex.quote(str(sdir / 'best_hparams.yaml'))} {shlex.quote(str(hp))}"
            steps.append(Step(f"budget/search-{tag}", ["bash", "-c", " ".join(shlex.quote(c) for c in search) + copy],
                              [hp], UNITS["trial"] * ((b - grown) if k == 0 else 2 * top_k),
                              after=previous[-1:]))
            previous.append(f"budget/search-{tag}")
            steps.append(Step(f"budget/final-{tag}", py + ["method=autoft", "seed=0", "phase=final", f"hparams={hp}",
                                                           f"hydra.run.dir={out / 'budget' / tag}", *base],
                              [out / "budget" / tag / "results.json"], UNITS["final"], after=[f"budget/search-{tag}"]))
        grown = b
    return steps


def collect_budget(out: Path, budgets: list[int], top_k: int) -> list:
    """budget.md (one row per budget and re-evaluation setting) and plots/budget.png (the curve)."""
    from autoft.errors import UserError
    from autoft.hparams import Hyperparameters
    from autoft.reporting.benchmark import BudgetPoint, plot_budget
    from autoft.io import atomic_write_text
    from autoft.reporting.results import read_result

    title = "Budget study (OOD-val garden; tests: the other seven domains; final seed 0)"
    points = []
    for b in budgets:
        for k in (0, top_k):
            tag = f"b{b}-top{k}"
            try:
                rec = Hyperparameters.load(out / "budget" / f"{tag}.yaml").records
                r = read_result(out / "budget" / tag / "results.json")
            except UserError:  # not run yet (ResultsError is one too)
                continue
            rv = rec.get("reevaluated_objective")
            points.append(BudgetPoint(b, k, int(rec.get("trial_number")), float(rec["objective"]),
                                      None if rv is None else float(rv), r.id_value(), r.ood_mean()))
    lines = [f"# {title}", "",
             "| Trials | Re-evaluation | Chosen trial | OOD-val (search) | OOD-val (re-evaluated) | ID test | OOD test mean |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {p.trials} | {f'top-{p.top_k}' if p.top_k else 'none'} | {p.chosen_trial} | {100 * p.search_score:.1f} | "
              f"{'' if p.reevaluated is None else f'{100 * p.reevaluated:.1f}'} | {100 * p.id_test:.1f} | "
              f"{100 * p.ood_test:.1f} |" for p in points]
    if points:
        plot = plot_budget(points, out / "plots" / "budget.png", title)
        lines += ["", f"![budget](plots/{plot.name})"]
    atomic_write_text(out / "budget.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return points


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"the small grid: {QUICK}")
    ap.add_argument("--out", default="outputs/benchmark", help="output directory")
    ap.add_argument("--single-splits", type=int, help="K for the single-domain family")
    ap.add_argument("--mixture-splits", type=int, help="K for the mixture family (0: none)")
    ap.add_argument("--seeds", type=int, help="S: seeds per split (search seed = final seed)")
    ap.add_argument("--trials", type=int, help="trials per search")
    ap.add_argument("--alpha-searched", choices=["on", "off"], help="also the search that picks the WiSE-FT alpha")
    ap.add_argument("--baselines", help=f"comma-separated baselines besides zero-shot (default: {','.join(BASELINES)}; "
                                        "--quick: ft)")
    ap.add_argument("--jobs", type=int, default=2, help="steps side by side (one CPU thread each on 2 cores)")
    ap.add_argument("--collect", action="store_true", help="only collect the finished cells")
    ap.add_argument("--budget", action="store_true", help="run the budget study instead of the grid")
    ap.add_argument("--budgets", default="16,48,128")
    ap.add_argument("--top-k", type=int, default=5, help="budget study: re-evaluated candidates")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every train.py call")
    args = ap.parse_args(argv)
    g = QUICK if args.quick else DEFAULT
    grid = Grid(single=args.single_splits if args.single_splits is not None else g.single,
                mixture=args.mixture_splits if args.mixture_splits is not None else g.mixture,
                seeds=args.seeds or g.seeds, trials=args.trials or g.trials,
                alpha_searched=g.alpha_searched if args.alpha_searched is None else args.alpha_searched == "on",
                baselines=tuple(b for b in args.baselines.split(",") if b) if args.baselines else g.baselines)
    unknown = [b for b in grid.baselines if b not in BASELINES]
    if unknown:
        print(f"error: --baselines: unknown {', '.join(unknown)}; valid: {', '.join(BASELINES)}", file=sys.stderr)
        return 2
    out = Path(args.out).absolute()
    t0 = time.time()
    if args.budget:
        budgets = [int(b) for b in args.budgets.split(",")]
        if not args.collect:
            failed = run_steps(budget_steps(out, budgets, args.top_k, args.overrides), args.jobs, out / "logs", ROOT, "budget study")
            if failed:
                print(f"budget study: failed steps: {', '.join(failed)}", file=sys.stderr)
        collect_budget(out, budgets, args.top_k)
        return 0
    grid.splits()  # checks K
    failed = [] if args.collect else run_steps(plan(grid, out, args.overrides), args.jobs, out / "logs", ROOT, "benchmark")
    collect(grid, out)
    print(f"benchmark: {fmt_seconds(time.time() - t0)} wall", flush=True)
    if failed:
        print(f"benchmark: {len(failed)} steps failed: {', '.join(failed)}; fix and rerun the same command",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
