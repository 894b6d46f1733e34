#!/usr/bin/env python
"""The final phase: every method on several seeds through train.py's final run, then the tables.

    python scripts/final_retrain.py                                   # embedded task, all methods, seeds 0,1,2
    python scripts/final_retrain.py --dataset iwildcam --seeds 0,1,2 device=cuda   # its paper backbone, vit_b16
    python scripts/final_retrain.py --methods ft,autoft --hparams my_best.yaml
    python scripts/final_retrain.py --methods autoft --study sqlite:///outputs/x/optuna.db --study-name s1

It runs `python train.py -m method=<m1>,<m2>,... seed=<seeds> [hparams=<file>] <overrides>`: one
process for the methods that need the same seeds and one for AutoFT, so the model and the data load
once per process. Each run fine-tunes on ID train, selects the epoch on ID val, saves the weights
atomically, evaluates ID test, every OOD test set and the WiSE-FT curve (a = 0, 0.1, ..., 1), and
writes <out>/<method>/seed<N>/results.json. Then scripts/make_tables.py builds the tables and plots.

AutoFT's hyperparameters: --hparams <yaml>, else --study <storage URL> (its best trial), else the
search's <out>/search-autoft/best_hparams.yaml. Zero-shot is evaluated once (it has no seed).
--skip-existing keeps runs whose results.json is complete (rerun the command to finish a killed run).
Extra arguments are Hydra overrides for every train.py call (device=cuda, logger=wandb, ...).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ("zeroshot", "lp", "ft", "lpft", "l2sp", "flyp", "autoft")
NO_SEED = ("zeroshot",)  # evaluation only: every seed would give the same numbers


def existing_ok(out: Path, method: str, seed: int) -> bool:
    from autoft.records import RESULTS_FILE
    from autoft.reporting.results import ResultsError, read_result

    try:
        read_result(out / method / f"seed{seed}" / RESULTS_FILE)
        return True
    except ResultsError:
        return False


def autoft_hparams(args, out: Path) -> Path:
    """The hyperparameters file AutoFT's final runs read (written from the study when asked)."""
    from autoft.errors import UserError
    from autoft.records import HPARAMS_FILE, write_best_hparams
    from autoft.search_app import best_hparams_from_study

    if args.hparams:
        path = Path(args.hparams)
        if not path.is_file():
            raise UserError(f"--hparams file not found: {path}")
        return path
    if args.study:
        from autoft.hparams import Hyperparameters

        # what the study did not search keeps the value `train.py method=autoft` would use
        defaults = Hyperparameters.from_config(compose_config(args.dataset, args.model, args.config_dir, ["method=autoft"]))
        hp = best_hparams_from_study(args.study, args.study_name, defaults)
        path = out / "autoft" / "hparams_from_study.yaml"
        rec = hp.records
        write_best_hparams(path, hp, f"# chosen trial of study {rec['study_name']} in {rec['storage']}\n")
        print(f"AutoFT hyperparameters from trial {rec['trial_number']} of study {rec['study_name']} -> {path}")
        return path
    path = out / "search-autoft" / HPARAMS_FILE
    if not path.is_file():
        raise UserError(f"AutoFT needs its searched hyperparameters: none at {path}. Run the search first "
                        f"(python train.py -m search=autoft dataset={args.dataset} model={args.model}), "
                        "or pass --hparams <file> or --study <storage URL>")
    return path


def pair(dataset: str, model: str | None) -> list[str]:
    """The overrides that choose this dataset and model (and so their budgets); no model: the
    dataset's own default (the paper's backbone for the paper's benchmarks)."""
    return [f"dataset={dataset}", *([f"model={model}"] if model else [])]


def compose_config(dataset: str, model: str | None, config_dir=None, overrides=()):
    """The config `train.py [--config-dir <config_dir>] dataset=<dataset> [model=<model>] <overrides>` composes."""
    from autoft.config_checks import compose_config as compose

    return compose([*pair(dataset, model), *overrides], config_dir)


def tables_wandb_args(args) -> list[str]:
    """make_tables' W&B options from the logger the final runs used (logger=wandb is the default)."""
    from autoft.reporting.wandb_logger import make_tables_args

    try:
        return make_tables_args(compose_config(args.dataset, args.model, args.config_dir, args.overrides).logger)
    except Exception as err:  # noqa: BLE001 (the runs are done: W&B for the tables is a bonus)
        print(f"warning: tables not sent to W&B ({type(err).__name__}: {err})", file=sys.stderr)
        return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--model", help="model config; with --dataset it picks the budgets conf/budget/<dataset>_<model>.yaml (default: the dataset's own, e.g. vit_b16 for the paper's benchmarks)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated method configs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hparams", help="AutoFT hyperparameters YAML (e.g. a search's best_hparams.yaml)")
    ap.add_argument("--study", help="Optuna storage URL: AutoFT uses the best trial of its study")
    ap.add_argument("--study-name", help="which study of --study (needed when it holds several)")
    ap.add_argument("--out", help="results directory (default outputs/<dataset.name>/<model> of the current directory, where the search wrote)")
    ap.add_argument("--config-dir", help="extra Hydra config directory (train.py --config-dir)")
    ap.add_argument("--skip-existing", action="store_true", help="keep complete runs, run only the missing ones")
    ap.add_argument("--no-tables", action="store_true")
    ap.add_argument("--wise", default="ft,autoft", help="make_tables --wise")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every train.py call")
    args = ap.parse_intermixed_args(argv)  # overrides may come before, between or after the options

    from autoft.config_checks import config_names
    from autoft.errors import UserError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    valid = config_names("method", args.config_dir)
    unknown = [m for m in methods if m not in valid]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; valid: {', '.join(valid)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got '{args.seeds}'", file=sys.stderr)
        return 2
    try:  # the dataset's name and default model, as train.py dataset=<dataset> <overrides> composes them
        cfg = compose_config(args.dataset, args.model, args.config_dir, args.overrides)
    except UserError as err:  # an unknown dataset: Hydra's message, in one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.model = args.model or str(cfg.model.name)
    # outputs/<dataset.name>/<model.name> of the current directory, where `train.py -m search=autoft`
    # wrote the search (dataset.name may differ from the config's file name: dataset.name=myshift)
    out = (Path(args.out) if args.out else Path("outputs") / str(cfg.dataset.name) / args.model).resolve()
    base = [sys.executable, str(ROOT / "train.py"), "-m"]
    if args.config_dir:
        base += ["--config-dir", str(Path(args.config_dir).resolve())]
    # the config's sweep subdir puts each run at <out>/<method>/seed<N>
    common = [*pair(args.dataset, args.model), "phase=final", f"hydra.sweep.dir={out}",
              *args.overrides]
    t0 = time.time()
    try:
        hp_file = autoft_hparams(args, out) if "autoft" in methods else None
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # one train.py process per group of methods that need the same seeds (and no hparams file), so
    # the model and the decoded data are loaded once per group; AutoFT runs on its own
    todo: dict[str, list[int]] = {}
    for m in methods:
        want = seeds[:1] if m in NO_SEED else seeds
        todo[m] = [s for s in want if not (args.skip_existing and existing_ok(out, m, s))]
        if not todo[m]:
            print(f"{m}: all seeds done, skipped")
    calls: dict[tuple, list[str]] = {}
    for m, ss in todo.items():
        if ss:
            calls.setdefault((m == "autoft", tuple(ss)), []).append(m)
    failed = []
    for (is_autoft, ss), ms in calls.items():
        cmd = base + ["method=" + ",".join(ms), "seed=" + ",".join(map(str, ss)), *common]
        if is_autoft:
            cmd.append(f"hparams={hp_file}")
        print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            # Hydra runs the remaining jobs of a multirun after a failed one: name the runs that failed
            failed += [f"{m}/seed{x}" for m in ms for x in ss if not existing_ok(out, m, x)] or ms
    if failed:
        print(f"\nfailed: {', '.join(failed)} (see train.log in their run directories under {out})", file=sys.stderr)
    if not args.no_tables:
        cmd = [sys.executable, str(ROOT / "scripts" / "make_tables.py"), str(out), "--wise", args.wise]
        cmd += tables_wandb_args(args)  # the tables and plots join the runs in W&B when they went there
        print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append("make_tables")
    print(f"\nfinal retrain finished in {time.time() - t0:.0f}s; results under {out}/", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
