#!/usr/bin/env python
"""The whole AutoFT method on the embedded default task, end to end on CPU (what `make demo` runs):

1. build (once, cached) the embedded task's small CLIP foundation model;
2. the AutoFT search: a Hydra multirun driven by our Optuna sweeper (resumable: rerun to continue),
   two trials at a time through Hydra's joblib launcher;
3. the final runs, side by side: AutoFT with the best hyperparameters, and the baselines it is
   compared with (zero-shot, fine-tuning with cross-entropy), on each seed;
4. the results table (Markdown + LaTeX, with WiSE-FT rows) and plots under outputs/<dataset>/<model>/.

Independent steps and trials run side by side, one CPU thread each (autoft.runner): on 2 cores
that is faster than one process with two threads (the model is too small to keep two busy). Every step is an ordinary command, printed
before anything runs, so each can be rerun by hand; its output goes to outputs/<dataset>/<model>/
demo_logs/. Rerunning `make demo` continues where a killed run stopped. Extra arguments are passed
to every train.py call as Hydra overrides (e.g. device=cuda).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # a clone that was not pip-installed still runs

from autoft.records import RESULTS_FILE  # noqa: E402
from autoft.runner import Step, fmt_seconds, run_steps  # noqa: E402


def composed(overrides: list[str]):
    """The config `train.py <overrides>` composes (for the paths the steps write)."""
    from autoft.config_checks import compose_config

    return compose_config(overrides)


def demo_steps(dataset: str, model: str, seeds: list[int], overrides: list[str], out: Path, jobs: int) -> list[Step]:
    """foundation -> search (`jobs` trials at a time) -> zero-shot, FT and AutoFT finals side by side."""
    py = sys.executable
    extra = [f"dataset={dataset}", f"model={model}", *overrides]  # the pair's budgets come with it
    cfg = composed(extra)
    steps, first = [], []
    if cfg.model.get("build_command"):  # the embedded task's foundation model: installed once, cached
        steps.append(Step("foundation", [py, "scripts/build_foundation.py"], [Path(str(cfg.model.checkpoint))],
                          units=1, threads=os.cpu_count()))  # runs alone: every other step needs it
        first = ["foundation"]
    # concurrent trials through Hydra's joblib launcher, one thread each (TPE's constant liar spreads them)
    # (joblib's worker processes cannot start DataLoader workers: the in-memory data needs none)
    parallel = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", f"hydra.sweeper.n_jobs={jobs}",
                "trainer.num_workers=0"] if jobs > 1 else []
    search = [py, "train.py", "-m", "search=autoft", *parallel, "hydra.sweeper.threads=1", *extra]
    # the search resumes its study by itself; the marker names the exact command that completed
    marker = out / "search-autoft" / f".complete-{hashlib.sha1(' '.join(search[1:]).encode()).hexdigest()[:10]}"
    steps.append(Step("search", search, [marker], units=16, after=first, marker=True))
    final = [py, "scripts/final_retrain.py", "--dataset", dataset, "--model", model, "--no-tables", "--skip-existing"]
    results = lambda m, s: out / m / f"seed{s}" / RESULTS_FILE  # noqa: E731
    # after the search, so that the cores are not shared three ways; one step per run fills them evenly
    for k, s in enumerate(seeds):
        methods = ["zeroshot", "ft"] if k == 0 else ["ft"]  # zero-shot has no seed: evaluated once
        steps.append(Step(f"{'+'.join(methods)}-seed{s}", final + ["--methods", ",".join(methods), "--seeds", str(s),
                                                                   *overrides],
                          [results(m, s) for m in methods], units=3 * len(methods), after=["search"]))
        steps.append(Step(f"autoft-seed{s}", final + ["--methods", "autoft", "--seeds", str(s), *overrides],
                          [results("autoft", s)], units=3, after=["search"]))
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--model", default="shapes_rn10t")
    ap.add_argument("--seeds", default="0,1", help="seeds of the final runs (comma-separated)")
    ap.add_argument("--jobs", type=int, default=2, help="steps side by side (one CPU thread each on 2 cores)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to every train.py call")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = ROOT / "outputs" / args.dataset / args.model
    t0 = time.time()
    steps = demo_steps(args.dataset, args.model, seeds, args.overrides, out, args.jobs)
    for st in steps:
        print(f"  {st.name}: $ {' '.join(shlex.quote(c) for c in st.cmd)}", flush=True)
    failed = run_steps(steps, args.jobs, out / "demo_logs", ROOT, "demo")
    if failed:
        sys.exit(f"demo: steps failed: {', '.join(failed)} (logs under {out / 'demo_logs'}); rerun `make demo` to continue")
    from autoft.reporting.wandb_logger import make_tables_args

    logger = composed([f"dataset={args.dataset}", f"model={args.model}", *args.overrides]).logger
    tables = [sys.executable, "scripts/make_tables.py", str(out), "--wise", "ft,autoft", *make_tables_args(logger)]
    print(f"\n$ {' '.join(shlex.quote(c) for c in tables)}", flush=True)
    if subprocess.run(tables, cwd=ROOT).returncode != 0:
        sys.exit("demo: the tables failed (see above)")
    print(f"\ndemo finished in {fmt_seconds(time.time() - t0)}; results under {out}/", flush=True)


if __name__ == "__main__":
    main()
