#!/usr/bin/env python
"""Paper-style tables and plots from final-run results.

    python scripts/make_tables.py outputs/shapes/shapes_rn10t
    python scripts/make_tables.py outputs --wise ft,autoft --reference refs/iwildcam.yaml
    python scripts/make_tables.py outputs/iwildcam/vit_b16 --wandb      # also log them to W&B

Rows = methods (zero-shot, LP, FT, LP-FT, L2-SP, FLYP, AutoFT, and WiSE-FT rows from the fine-tuned
runs' `wise` blocks); columns = ID test, each OOD test set, OOD mean; cells = mean ± std over seeds of
the dataset's objective metric (x100). Writes results_table.{md,tex,csv,json} and plots/*.png next to
the results of each <dataset>/<model>, and prints the Markdown table. When a search lies there too
(its best_hparams.yaml), selection_report.{md,json} puts side by side the chosen hyperparameters'
trial score, re-evaluated score, final OOD-val score and OOD test scores (autoft.reporting.selection).

A run directory whose results.json is missing, corrupt or incomplete stops the script with a message
naming each such file; --skip-bad builds the tables from the usable runs and lists the others in the
Markdown file. The reference file format is described in autoft/reporting/tables.py.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import logging
import sys
from pathlib import Path

from autoft.errors import UserError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="results directory (e.g. outputs/<dataset>/<model>, or outputs)")
    ap.add_argument("--wise", default="ft",
                    help="methods that get a WiSE-FT row (comma-separated), 'all' trained methods, or 'none'")
    ap.add_argument("--alpha", type=float, default=0.5, help="WiSE-FT mixing coefficient of those rows")
    ap.add_argument("--reference", help="YAML file of published numbers: adds (ref.) columns")
    ap.add_argument("--skip-bad", action="store_true",
                    help="tabulate the usable runs and list unusable results files instead of stopping")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--study", action="append", default=[],
                    help="extra Optuna storage URL to plot (SQLite studies under root are found by themselves)")
    ap.add_argument("--wandb", action="store_true", help="log tables and plots to W&B (job_type=report)")
    ap.add_argument("--wandb-project", default="autoft")
    ap.add_argument("--wandb-entity", default=None)
    ap.add_argument("--wandb-mode", default="auto", help="auto (offline without an API key), online, offline")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from autoft.reporting.benchmark import is_benchmark
    from autoft.reporting.report import log_to_wandb, make_report
    from autoft.search.study import load_studies, load_studies_under

    wise = [] if args.wise == "none" else [m.strip() for m in args.wise.split(",") if m.strip()]
    if not 0.0 <= args.alpha <= 1.0:
        print("error: --alpha must be in [0, 1]", file=sys.stderr)
        return 2
    try:
        refuse_benchmark(Path(args.root))
        # the studies are read here, once; reporting takes their records and opens no storage
        studies = {} if args.no_plots else {**load_studies_under(args.root),
                                             **{url: load_studies(url) for url in args.study}}
        report = make_report(args.root, wise_of=wise, wise_alpha=args.alpha, reference=args.reference,
                             strict=not args.skip_bad, plots=not args.no_plots, studies=studies)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        if "unusable results" in str(err):
            inside = next((p.parent for p in Path(args.root).rglob("benchmark.json") if is_benchmark(p.parent)), None)
            print(f"(results of the benchmark {inside} are among them: give make_tables one of its splits, or use "
                  "scripts/benchmark.py --collect)" if inside else
                  "(fix or delete those runs, or pass --skip-bad to tabulate the rest)", file=sys.stderr)
        return 2
    from autoft.reporting.selection import write_selection_report

    for g in report.groups:
        print(f"\n## {g.dataset} / {g.model}  ({g.table.metric} x100, mean ± std over seeds)\n")
        print(g.markdown)
        # a search under this group: the chosen hyperparameters' trial, re-evaluated, final and test scores
        selection_md, selection_files = write_selection_report(g.out_dir, g.runs)
        if selection_md:
            print(selection_md)
            g.files += selection_files
        print("written:", *[str(f) for f in g.files], sep="\n  ")
    for p in report.problems:
        print(f"warning: not included: {p}", file=sys.stderr)
    if args.wandb:
        log_to_wandb(report, project=args.wandb_project, entity=args.wandb_entity, mode=args.wandb_mode)
    return 0


def refuse_benchmark(root: Path) -> None:
    """A benchmark's folder (or one of its family folders) holds every split's runs of the same methods
    and seeds: its tables are scripts/benchmark.py's; make_tables takes one split."""
    from autoft.reporting.benchmark import FAMILIES, is_benchmark

    bench = root if is_benchmark(root) else root.parent if root.name in FAMILIES and is_benchmark(root.parent) else None
    if bench is None:
        return
    splits = sorted(p for f in FAMILIES for p in (bench / f).glob("*") if p.is_dir())
    example = f", for example {splits[0]}" if splits else ""
    raise UserError(f"{root} is a benchmark's folder (scripts/benchmark.py): its splits test on different domains "
                    f"and repeat the same methods and seeds, so they do not make one table. Its tables are "
                    f"{bench / 'benchmark.md'} (rewrite them with scripts/benchmark.py --collect and the run's options); "
                    f"make_tables takes one split's folder{example}.")


if __name__ == "__main__":
    atexit.register(gc.freeze)  # no collector pass over the imported libraries at exit: about 0.9 s (docs/speed.md)
    sys.exit(main())
