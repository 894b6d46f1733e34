#!/usr/bin/env python
"""The whole AutoFT method on the embedded default task, end to end on CPU (what `make demo` runs):

1. build (once, cached) the embedded task's small CLIP foundation model;
2. the AutoFT search: a Hydra multirun driven by our Optuna sweeper (resumable: rerun to continue);
3. the final retrain with the best hyperparameters, on several seeds;
4. the baselines it is compared with: zero-shot, fine-tuning with cross-entropy (+ WiSE-FT);
5. the results table (Markdown + LaTeX) and plots under outputs/<dataset>/<model>/.

Every step is an ordinary command, printed before it runs, so each can be rerun by hand.
Extra arguments are passed to every train.py call as Hydra overrides (e.g. device=cuda).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str]) -> None:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"demo: step failed (exit {done.returncode}): {' '.join(cmd)}")
    print(f"[{time.time() - t0:.0f}s]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--model", default="shapes_rn10t")
    ap.add_argument("--seeds", default="0,1", help="seeds of the final runs (comma-separated)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to every train.py call")
    args = ap.parse_args()
    py, extra = sys.executable, [f"dataset={args.dataset}", f"model={args.model}", *args.overrides]
    out = Path("outputs") / args.dataset / args.model
    t0 = time.time()
    if args.model == "shapes_rn10t":
        sh([py, "scripts/build_foundation.py"])
    sh([py, "train.py", "-m", "search=autoft", *extra])
    # final retrain of AutoFT with the search's best_hparams.yaml, the baselines, then the tables
    sh([py, "scripts/final_retrain.py", "--dataset", args.dataset, "--model", args.model,
        "--methods", "zeroshot,ft,autoft", "--seeds", args.seeds, *args.overrides])
    print(f"\ndemo finished in {time.time() - t0:.0f}s; results under {out}/", flush=True)


if __name__ == "__main__":
    main()
