#!/usr/bin/env python
"""The embedded world (or any domain dataset) as a benchmark: K domain splits x S seeds, every method, 95% intervals.

    python scripts/benchmark.py                 # the default grid: 6 splits x 1 seed (39 min on 2 cores, 2026-12-01)
    python scripts/benchmark.py --seeds 2       # ... x 2 seeds (twice as long)
    python scripts/benchmark.py --quick         # 2 splits, zero-shot / FT / AutoFT only (6 min)
    python scripts/benchmark.py --collect       # only rebuild the tables from what has finished
    python scripts/benchmark.py --budget        # the budget study (16, 48, 128 trials, +- re-evaluation)
    python scripts/benchmark.py --dataset pacs data_root=/data            # every OOD-val choice on PACS
    python scripts/benchmark.py --dataset pacs --rotations cartoon,art_painting+sketch data_root=/data
    python scripts/benchmark.py --config-dir ~/myshift-conf --dataset myshift   # your dataset/myshift.yaml

Splits (the world itself is fixed: conf/dataset/shapes.yaml's sizes, cue and foundation model):
ID is always `studio`, the domain with the spurious cue. Family `single`: the OOD-val domain
rotates over the other eight domains in their fixed order (garden, snow, night, fog, clutter,
sketch, outline, texture: the first K); family `mixture`: OOD-val is a class-balanced mixture of
three consecutive domains of that order. The tests are all remaining domains, drawing styles
included. A cell (split, seed s) runs the AutoFT search with seed s (sampler and inner runs), then
the final runs of every method with seed s: zeroshot (once per split), lp, ft, lpft, l2sp, flyp,
autoft (and `autoft_alpha`, the search that also picks the WiSE-FT alpha, with --alpha-searched);
each fine-tuned run also reports its WiSE-FT curve. Baselines do not depend on the search, nor on
the split: a final run selects its epoch on ID val and never reads OOD-val or the tests. So each
baseline trains once per seed, in the first split, and the other splits evaluate those weights on
their own domains (train.py weights_from=<that run's directory>); each pairs with its cell's AutoFT.

Every step is an ordinary `train.py` command (printed in its log), run side by side: --jobs
processes, one CPU thread each (the default fills a 2-core machine). It is resumable: a step whose
results exist is skipped, a search resumes its study, so rerunning the same command continues a
killed benchmark. Extra arguments are Hydra overrides for every train.py call (e.g. device=cuda,
or hydra/launcher=slurm for the searches' trials).

Any domain dataset (--dataset folder, or a preset built on it: pacs, vlcs, officehome, terraincognita,
domainnet, or a dataset config of yours built on folder, found through --config-dir, which every step
gets too): the config composed with the extra overrides gives the roles. ID stays its id_domain; its
ood_val_domain and test_domains are the rotation domains, in that order. By default each of them is
OOD-val in turn (family `single`), the others the tests; --rotations lists the OOD-val choices instead
(`a+b`: a class-balanced mixture, family `mixture`). The model and the budgets are the config's (the
folder config's default model, conf/budget/user_data.yaml), changed by the overrides (model=...,
trainer.epochs=...); trials per search: the config's search.n_trials unless --trials.

Output under --out (default outputs/benchmark; another dataset: outputs/benchmark/<dataset.name>):
<family>/<split>/{search-s<s>, <method>/seed<s>}, logs/, and the collected benchmark.md,
benchmark.json and plots/<family>.png. Finished steps are recognised by their files only: a
different model or budget needs another --out.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from autoft.errors import UserError
from autoft.names import FOLDER_TARGET, SHAPES_DOMAINS
from autoft.records import HPARAMS_FILE, RESULTS_FILE
from autoft.runner import Step, complete, fmt_seconds, run_steps

ROOT = Path(__file__).resolve().parents[1]
ID_DOMAIN = "studio"
OTHERS = tuple(d for d in SHAPES_DOMAINS if d != ID_DOMAIN)  # in DOMAINS' order
BASELINES = ("lp", "ft", "lpft", "l2sp", "flyp")
ALPHAS = "[0.25,0.5,0.75,1.0]"
# rough relative costs, only for the ETA before any step has finished (then measured rates take over)
UNITS = {"trial": 1.0, "final": 3.0, "zeroshot": 0.5}


@dataclass(frozen=True)
class Domains:
    """What a benchmark rotates over: the dataset, its fixed ID domain(s), and the domains that take
    turns as OOD-val, in order (in each split the ones not OOD-val are the tests)."""
    dataset: str                # dataset=<dataset>
    name: str                   # dataset.name: the default output folder, the tables' title
    id: tuple[str, ...]
    others: tuple[str, ...]     # the rotation domains
    select: tuple[str, ...]     # overrides choosing the dataset (for shapes, the model; the user's config dir) on every call
    model: str = ""             # for the tables' title
    trials: Optional[int] = 16  # the config's search.n_trials: the default trials per search


# the embedded world: its model is fixed with it (conf/dataset/shapes.yaml, docs/benchmark.md)
SHAPES = Domains("shapes", "shapes", (ID_DOMAIN,), OTHERS, ("dataset=shapes", "model=shapes_rn10t"), "shapes_rn10t")


@dataclass(frozen=True)
class Split:
    family: str               # single | mixture
    ood_val: tuple[str, ...]  # one domain, or the domains of the mixture
    pool: tuple[str, ...] = OTHERS  # the rotation domains: OOD-val and the tests

    @property
    def id(self) -> str:
        return self.ood_val[0] if self.family == "single" else "mix-" + "-".join(self.ood_val)

    @property
    def tests(self) -> list[str]:
        return [d for d in self.pool if d not in self.ood_val]

    def overrides(self) -> list[str]:
        val = hydra_value(self.ood_val[0]) if self.family == "single" else hydra_list(self.ood_val)
        return [f"dataset.task.ood_val_domain={val}", f"dataset.task.test_domains={hydra_list(self.tests)}"]


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def hydra_value(name: str) -> str:
    """A domain name as an override value Hydra reads back as the same string: quoted unless a plain
    word (OfficeHome's 'Real World' has a space; '007' would read as the number 7)."""
    if _PLAIN.fullmatch(name) and name.lower() not in ("true", "false", "null", "nan", "inf"):
        return name
    return "'" + name.replace("'", "\\'") + "'"


def hydra_list(names) -> str:
    return "[" + ",".join(hydra_value(n) for n in names) + "]"


def splits_of(family: str, k: int, mixture_size: int = 3, pool: tuple[str, ...] = OTHERS) -> list[Split]:
    """The first k splits of a family over the rotation domains `pool`, in its order."""
    if family == "single":
        if not 1 <= k <= len(pool):
            raise SystemExit(f"--single-splits={k}: must be in 1..{len(pool)}")
        return [Split("single", (pool[i],), pool) for i in range(k)]
    n = (len(pool) - 1) // mixture_size  # a mixture must leave a domain to test on
    if not 0 <= k <= n:
        raise SystemExit(f"--mixture-splits={k}: must be in 0..{n} (disjoint mixtures of {mixture_size} domains)")
    return [Split("mixture", tuple(pool[i * mixture_size + j] for j in range(mixture_size)), pool) for i in range(k)]


@dataclass(frozen=True)
class Grid:
    single: int
    mixture: int
    seeds: int
    trials: int
    alpha_searched: bool
    baselines: tuple[str, ...] = BASELINES  # besides zero-shot, which every grid evaluates
    rotations: tuple[tuple[str, ...], ...] = ()  # the user's OOD-val choices (--rotations): instead of the families

    def splits(self, domains: Domains = SHAPES) -> list[Split]:
        """The user's rotations in their order, else the families interleaved (single 0, mixture 0,
        single 1, ...): a benchmark stopped early has cells of both."""
        if self.rotations:
            return [Split("single" if len(r) == 1 else "mixture", r, domains.others) for r in self.rotations]
        pool = domains.others
        single = splits_of("single", self.single, pool=pool)
        mixture = splits_of("mixture", self.mixture, pool=pool) if self.mixture else []
        return [sp for k in range(max(len(single), len(mixture))) for sp in (single[k:k + 1] + mixture[k:k + 1])]

    def record(self) -> dict:
        """The grid for benchmark.json (without rotations when there are none: the embedded grid's record as before)."""
        return {k: v for k, v in self.__dict__.items() if k != "rotations" or v}


# Sized by measurement on 2 idle CPU cores (docs/benchmark.md): the default grid took 39 min end to
# end, --quick 6 min (targets: 2 h and 20 min); a cell with its alpha-searched variant is about 6 min.
DEFAULT = Grid(single=4, mixture=2, seeds=1, trials=16, alpha_searched=True)
QUICK = Grid(single=2, mixture=0, seeds=1, trials=16, alpha_searched=False, baselines=("ft",))


# ----------------------------------------------------------------------------------------------
# a domain dataset: its roles from the composed config, the user's rotations checked
# ----------------------------------------------------------------------------------------------
def domain_datasets(config_dir=None) -> list[str]:
    """The dataset configs built on conf/dataset/folder.yaml (the ones with domains to rotate), the
    user's config directory's included."""
    from omegaconf import OmegaConf

    from autoft.config_checks import config_files

    def on_folder(path: Path) -> bool:
        try:
            defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults") or []
        except Exception:  # noqa: BLE001 (a broken file is reported when it is composed)
            return False
        return any(str(d).strip("/").removeprefix("dataset/") == "folder" for d in defaults)

    return ["folder"] + sorted({f.stem for f in config_files("dataset", config_dir) if on_folder(f)})


def domains_of(dataset: str, overrides: list[str], config_dir=None) -> Domains:
    """The embedded world, or a domain dataset's roles as train.py would compose them (with
    `config_dir`, a config directory of the user's, on the search path of every step too): ID stays
    its id_domain; its ood_val_domain and test_domains are the rotation domains."""
    if dataset == "shapes":
        return SHAPES
    from omegaconf import OmegaConf

    from autoft.config_checks import compose_config, search_path, validate
    from autoft.data.roles import as_domains

    cfg = compose_config([f"dataset={dataset}", *overrides], config_dir)
    task = cfg.dataset.task
    if task.get("_target_") != FOLDER_TARGET:
        raise UserError(f"--dataset {dataset}: its splits are fixed, it has no domains to rotate; the benchmark runs on "
                        f"shapes (the embedded world) or a domain dataset: {', '.join(domain_datasets(config_dir))}")
    validate(cfg)  # what every step would refuse, refused once: missing roles, a misspelt key of the dataset's file
    ids, others = as_domains(task.id_domain), as_domains(task.ood_val_domain) + as_domains(task.test_domains)
    if not task.manifest:
        check_tree(Path(str(task.root)), [*ids, *others])
    trials = OmegaConf.select(cfg, "search.n_trials", default=None, throw_on_missing=False)
    return Domains(dataset, str(cfg.dataset.name), tuple(ids), tuple(others), (*search_path(config_dir), f"dataset={dataset}"),
                   str(cfg.model.name), None if trials is None else int(trials))


def check_tree(root: Path, wanted: list[str]) -> None:
    """A wrong data_root or a misspelt domain, refused before any step starts (each step would fail on
    it): only the domain folders are listed, the images are train.py's to check."""
    from autoft.data.folders import is_hidden

    where = root if root.is_absolute() else ROOT / root  # train.py runs in the repository root
    if not where.is_dir():
        raise UserError(f"dataset.task.root={where}: not a folder. Set data_root (or dataset.task.root) to the folder "
                        f"that holds one sub-folder per domain" + ("" if root.is_absolute() else
                                                                   f" (relative paths start at {ROOT}; give an absolute one)"))
    found = sorted(e.name for e in where.iterdir() if e.is_dir() and not is_hidden(e.name))
    missing = [d for d in wanted if d not in found]
    if missing:
        raise UserError(f"domain {missing[0]!r} not found in {where}; domains found: {', '.join(found) or 'none'}")


def parse_rotations(text: str, domains: Domains) -> tuple[tuple[str, ...], ...]:
    """`--rotations a,b+c`: OOD-val a in one split, the class-balanced mixture of b and c in another;
    each split's tests are the rotation domains it leaves. One message per bad rotation, naming the
    valid domains."""
    source = "every domain but the ID" if domains is SHAPES else "its ood_val_domain and test_domains"
    valid = (f"the rotation domains of {domains.name} are {', '.join(domains.others)} ({source}; ID "
             f"{'+'.join(domains.id)} stays fixed). Example: --rotations "
             f"{domains.others[0]}" + (f",{'+'.join(domains.others[-2:])}" if len(domains.others) > 2 else ""))
    out, seen = [], {}
    for item in text.split(","):
        names = tuple(n.strip() for n in item.split("+"))
        if not all(names):
            raise UserError(f"--rotations={text}: an empty domain in {item.strip()!r}; {valid}")
        for n in names:
            if n in domains.id:
                raise UserError(f"--rotations: {n!r} is the ID domain (dataset.task.id_domain) and never OOD-val; {valid}")
            if n not in domains.others:
                raise UserError(f"--rotations: unknown domain {n!r}; {valid}" + ("" if domains is SHAPES else
                                "; to rotate over another domain, add it to dataset.task.test_domains"))
        twice = [n for n in names if names.count(n) > 1]
        if twice:
            raise UserError(f"--rotations: domain {twice[0]!r} used twice in {item.strip()!r}; {valid}")
        if len(names) == len(domains.others):
            raise UserError(f"--rotations: {item.strip()!r} takes every rotation domain as OOD-val and leaves none to "
                            f"test on; {valid}")
        key = frozenset(names)
        if key in seen:
            raise UserError(f"--rotations: {item.strip()!r} repeats the rotation {seen[key]!r}; {valid}")
        seen[key] = item.strip()
        out.append(names)
    return tuple(out)


def make_grid(args, domains: Domains) -> Grid:
    """The grid the options ask for. The embedded world: DEFAULT or QUICK. A domain dataset: every
    rotation domain as OOD-val in turn (--quick: the first two), no mixture family unless asked, the
    config's trials per search."""
    g = QUICK if args.quick else DEFAULT
    if domains is not SHAPES:
        if args.trials is None and domains.trials is None:
            raise UserError(f"search.n_trials is not set for {domains.dataset} x {domains.model}; give --trials N")
        g = replace(g, single=min(g.single, len(domains.others)) if args.quick else len(domains.others), mixture=0,
                    trials=domains.trials or g.trials)
    if args.rotations is not None and (args.single_splits is not None or args.mixture_splits is not None):
        raise UserError("--rotations names the splits itself: leave out --single-splits and --mixture-splits")
    grid = Grid(single=args.single_splits if args.single_splits is not None else g.single,
                mixture=args.mixture_splits if args.mixture_splits is not None else g.mixture,
                seeds=args.seeds or g.seeds, trials=args.trials or g.trials,
                alpha_searched=g.alpha_searched if args.alpha_searched is None else args.alpha_searched == "on",
                baselines=tuple(b for b in args.baselines.split(",") if b) if args.baselines else g.baselines,
                rotations=parse_rotations(args.rotations, domains) if args.rotations is not None else ())
    unknown = [b for b in grid.baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"--baselines: unknown {', '.join(unknown)}; valid: {', '.join(BASELINES)}")
    return grid


def plan(grid: Grid, out: Path, extra: list[str], domains: Domains = SHAPES) -> list[Step]:
    """Every step of the grid, in the order they start: seed-major (a stopped benchmark has covered
    every split once), and the alpha-searched variant after all plain cells (it is an option)."""
    py = [sys.executable, str(ROOT / "train.py")]
    # the split's roles come after the user's overrides: the last value of a key wins
    common = [*domains.select, "logger=none", *extra]
    variants = [("autoft", "search", [])]
    if grid.alpha_searched:
        variants.append(("autoft_alpha", "search-alpha", [f"search.wise_alphas={ALPHAS}"]))
    steps = []
    splits = grid.splits(domains)
    for v, (method, dirname, opts) in enumerate(variants):
        for s in range(grid.seeds):
            for k, sp in enumerate(splits):
                where = out / sp.family / sp.id
                base = [*common, *sp.overrides()]
                if v == 0:
                    methods = (["zeroshot"] if s == 0 else []) + list(grid.baselines)
                    results = {m: where / m / f"seed{0 if m == 'zeroshot' else s}" / RESULTS_FILE for m in methods}
                    # one process for the split's baselines (the model and data load once); a rerun
                    # after a kill runs only the methods whose results are missing. The first split
                    # trains them; the others evaluate its weights (the module's docstring says why)
                    todo = [m for m in methods if not complete(results[m])] or methods
                    first = f"{splits[0].id}/baselines-s{s}"
                    trained = out / splits[0].family / splits[0].id
                    reuse = [f"weights_from={trained}/${{method.name}}/seed${{seed}}"] if k else []
                    cost = sum(UNITS["zeroshot" if m == "zeroshot" or k else "final"] for m in todo)
                    steps.append(Step(f"{sp.id}/baselines-s{s}",
                                      py + ["-m", "method=" + ",".join(todo), f"seed={s}", "phase=final",
                                            f"hydra.sweep.dir={where}", *reuse, *base],
                                      list(results.values()), cost, after=[first] if k else []))
                sdir = where / f"{dirname}-s{s}"
                steps.append(Step(f"{sp.id}/{dirname}-s{s}",
                                  py + ["-m", "search=autoft", f"seed={s}", f"hydra.sweep.dir={sdir}",
                                        f"search.n_trials={grid.trials}", "hydra.sweeper.threads=1", *opts, *base],
                                  [sdir / f".complete-{grid.trials}"], UNITS["trial"] * grid.trials, marker=True))
                name_opt = [] if method == "autoft" else [f"method.name={method}"]
                steps.append(Step(f"{sp.id}/{method}-s{s}",
                                  py + ["method=autoft", *name_opt, f"seed={s}", "phase=final",
                                        f"hparams={sdir / HPARAMS_FILE}",
                                        f"hydra.run.dir={where / method / f'seed{s}'}", *base],
                                  [where / method / f"seed{s}" / RESULTS_FILE], UNITS["final"],
                                  after=[f"{sp.id}/{dirname}-s{s}"]))
    return steps


# ----------------------------------------------------------------------------------------------
# collecting
# ----------------------------------------------------------------------------------------------
def collect(grid: Grid, out: Path, domains: Domains = SHAPES, logger: Optional[dict] = None) -> Optional[Path]:
    """benchmark.md, benchmark.json and the plots from the finished cells; with `logger` (the steps'
    W&B logger config, wandb_logger_config), the same in one W&B run."""
    from autoft.reporting.benchmark import (FAMILIES, CellRuns, as_dict, log_to_wandb, metric_name, paired,
                                            per_split_markdown, plot_benchmark, plot_paired, summary_markdown)
    from autoft.io import atomic_write_text
    from autoft.reporting.results import ResultsError, read_result

    required = ["zeroshot", *grid.baselines, "autoft"]  # a cell counts once all of these finished
    optional = ["autoft_alpha"] if grid.alpha_searched else []  # its row covers the cells that have it
    cells, missing = {f: [] for f in FAMILIES}, []
    splits = grid.splits(domains)
    for sp in splits:
        for s in range(grid.seeds):
            runs = {}
            for m in required + optional:
                path = out / sp.family / sp.id / m / f"seed{0 if m == 'zeroshot' else s}" / RESULTS_FILE
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
    sizes = {len(sp.ood_val) for sp in splits if sp.family == "mixture"}
    titles = {"single": "Single-domain OOD-val", "mixture": f"Mixture OOD-val ({min(sizes)} domains, class-balanced)"
              if len(sizes) == 1 else "Mixture OOD-val (class-balanced)"}
    done = f"Complete cells: {n_cells}" + (f" (missing runs: {len(missing)})" if missing else "") + "\n"
    if domains is SHAPES and not grid.rotations:
        parts = [f"# Benchmark on the embedded world\n\nGrid: {grid.single} single-domain splits, {grid.mixture} "
                 f"mixture splits, {grid.seeds} seed(s) each, {grid.trials} search trials per search. "
                 f"ID: {ID_DOMAIN}. " + done]
    else:
        roles = "; ".join(f"{'+'.join(sp.ood_val)} -> {', '.join(sp.tests)}" for sp in splits)
        parts = [f"# Benchmark on {domains.name}\n\nModel: {domains.model}. ID: {'+'.join(domains.id)} in every split. "
                 f"Splits (OOD-val -> tests): {roles}. {grid.seeds} seed(s) each, {grid.trials} search trials per "
                 f"search. " + done]
    payload = {"grid": grid.record(), "missing": missing}
    if domains is not SHAPES:
        payload["dataset"] = {"config": domains.dataset, "name": domains.name, "model": domains.model,
                              "id_domain": list(domains.id), "rotation_domains": list(domains.others)}
    plots = []
    for fam, cs in cells.items():
        if not cs:
            continue
        plot = plot_benchmark(cs, out / "plots" / f"{fam}.png", f"{titles[fam]}: mean over {len(cs)} cells")
        parts.append(summary_markdown(cs, titles[fam]))
        if paired(cs):  # the paired table's answer, drawn: each difference and its interval against 0
            forest = plot_paired(paired(cs), out / "plots" / f"{fam}_paired.png",
                                 f"{titles[fam]}: paired differences over {len(cs)} cells", metric_name(cs))
            parts.append(f"![{fam}: paired differences](plots/{forest.name})\n")
            plots.append(forest)
        parts += [per_split_markdown(cs), f"![{fam}](plots/{plot.name})\n"]
        plots.append(plot)
        payload[fam] = as_dict(cs)
    md = "\n".join(parts)
    path = out / "benchmark.md"
    atomic_write_text(path, md)
    atomic_write_text(out / "benchmark.json", json.dumps(payload, indent=1, default=str))
    print(md, flush=True)
    if missing:
        print(f"collect: {len(missing)} runs missing (e.g. {missing[0]}); their cells are left out", flush=True)
    print(f"collect: wrote {path}, {out / 'benchmark.json'}, {out / 'plots'}/", flush=True)
    if logger:
        log_to_wandb(logger, out, {fam: cs for fam, cs in cells.items() if cs}, [path, out / "benchmark.json", *plots],
                     {"dataset": domains.name, "model": domains.model, "grid": grid.record()})
    return path


def wandb_logger_config(overrides: list[str], domains: Domains = SHAPES) -> Optional[dict]:
    """The `logger` config of the steps when they log to W&B (they run with logger=none unless an
    override says otherwise, such as logger=wandb), else None; collect then logs the benchmark too."""
    if not any(o.lstrip("+~").startswith("logger") for o in overrides):
        return None
    from omegaconf import OmegaConf

    from autoft.config_checks import compose_config

    cfg = compose_config([*domains.select, "logger=none", *overrides])
    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    return logger if logger.get("wandb") else None


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
            copy = f" && cp {shlex.quote(str(sdir / HPARAMS_FILE))} {shlex.quote(str(hp))}"
            steps.append(Step(f"budget/search-{tag}", ["bash", "-c", " ".join(shlex.quote(c) for c in search) + copy],
                              [hp], UNITS["trial"] * ((b - grown) if k == 0 else 2 * top_k),
                              after=previous[-1:]))
            previous.append(f"budget/search-{tag}")
            steps.append(Step(f"budget/final-{tag}", py + ["method=autoft", "seed=0", "phase=final", f"hparams={hp}",
                                                           f"hydra.run.dir={out / 'budget' / tag}", *base],
                              [out / "budget" / tag / RESULTS_FILE], UNITS["final"], after=[f"budget/search-{tag}"]))
        grown = b
    return steps


def collect_budget(out: Path, budgets: list[int], top_k: int) -> list:
    """budget.md (one row per budget and re-evaluation setting) and plots/budget.png (the curve)."""
    from autoft.errors import UserError
    from autoft.records import read_best_hparams
    from autoft.reporting.benchmark import BudgetPoint, plot_budget
    from autoft.io import atomic_write_text
    from autoft.reporting.results import read_result

    title = "Budget study (OOD-val garden; tests: the other seven domains; final seed 0)"
    points = []
    for b in budgets:
        for k in (0, top_k):
            tag = f"b{b}-top{k}"
            try:
                rec = read_best_hparams(out / "budget" / f"{tag}.yaml").records
                r = read_result(out / "budget" / tag / RESULTS_FILE)
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes", help="shapes (the embedded world), folder, or a preset built on "
                                                        "it (pacs, vlcs, officehome, terraincognita, domainnet)")
    ap.add_argument("--config-dir", help="a config directory of yours (train.py --config-dir): --dataset may name its "
                                         "dataset/<name>.yaml, and every step composes with it")
    ap.add_argument("--rotations", help="OOD-val choices, comma-separated; a+b: a class-balanced mixture (default: the "
                                        "grid's families; a domain dataset: each rotation domain in turn)")
    ap.add_argument("--quick", action="store_true", help=f"the small grid: {QUICK}")
    ap.add_argument("--out", help="output directory (default outputs/benchmark; another dataset: "
                                  "outputs/benchmark/<dataset.name>)")
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
    return ap


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)  # overrides may come before, between or after the options
    try:
        from autoft.config_checks import check_config_dir

        check_config_dir(args.config_dir)  # the embedded world composes nothing here: checked all the same
        domains = domains_of(args.dataset, args.overrides, args.config_dir)
        if args.budget and domains is not SHAPES:
            raise UserError("--budget: the budget study runs on the embedded world only (leave out --dataset)")
        grid = make_grid(args, domains)
        logger = wandb_logger_config(args.overrides, domains)  # composed now: a bad logger override stops no step midway
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or ("outputs/benchmark" if domains is SHAPES else f"outputs/benchmark/{domains.name}")).absolute()
    t0 = time.time()
    if args.budget:
        budgets = [int(b) for b in args.budgets.split(",")]
        if not args.collect:
            failed = run_steps(budget_steps(out, budgets, args.top_k, args.overrides), args.jobs, out / "logs", ROOT, "budget study")
            if failed:
                print(f"budget study: failed steps: {', '.join(failed)}", file=sys.stderr)
        collect_budget(out, budgets, args.top_k)
        return 0
    grid.splits(domains)  # checks K
    failed = [] if args.collect else run_steps(plan(grid, out, args.overrides, domains), args.jobs, out / "logs", ROOT,
                                               "benchmark")
    collect(grid, out, domains, logger)
    print(f"benchmark: {fmt_seconds(time.time() - t0)} wall", flush=True)
    if failed:
        print(f"benchmark: {len(failed)} steps failed: {', '.join(failed)}; fix and rerun the same command",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
