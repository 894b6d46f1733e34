"""How the embedded shapes task's defaults were chosen: zero-shot, fine-tuning and WiSE-FT per domain.

    python scripts/explore_shapes_regime.py --checkpoint PATH [--lrs 1e-5 1e-4 3e-4] [--seeds 0 1]

For a foundation checkpoint (scripts/build_foundation.py) it measures, on every domain of the
shapes world: the zero-shot classifier; fine-tuning with cross-entropy at each learning rate (batch
norm statistics frozen, AdamW, cosine schedule with warm-up, as the engine does); and WiSE-FT
(a = 0.5) of each fine-tuned model. It prints one table per setting and appends JSON lines to
--out. The point is to check the regime DESIGN.md section 8 asks for before any search: fine-tuning
beats zero-shot on ID, loses to zero-shot or WiSE-FT on the held-out domains, and OOD-val accuracy
as a function of the learning rate peaks above zero-shot at an intermediate rate.

Fine-tuning goes through the library's own final run (`autoft.pipeline.final_run`: epochs over ID
train, epoch selected on ID val, WiSE-FT from the same weights), exactly what `train.py` runs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoft.data import shapes
from autoft.models.clip import load_checkpoint
from autoft.pipeline import Workspace, evaluate_all, final_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip-grad-norm", type=float, default=1.0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--cue", type=float, default=0.75)
    p.add_argument("--id-domain", default="studio")
    p.add_argument("--templates", default=None, help="'|'-separated prompt templates (default: the task's)")
    p.add_argument("--out", default="explore_shapes.jsonl")
    p.add_argument("--tag", default="")
    args = p.parse_args()

    t0 = time.time()
    bundle = load_checkpoint(args.checkpoint)
    # every other domain is evaluated: the first one stands in as the OOD-val split
    others = [d for d in shapes.DOMAINS if d != args.id_domain]
    task = shapes.shapes_task(seed=0, n_train=args.n_train, n_val=500, n_test=args.n_test, ood_val_size=args.n_test,
                              id_domain=args.id_domain, ood_val_domain=others[0], test_domains=others[1:],
                              cue=args.cue)
    if args.templates:
        task.templates = args.templates.split("|")
    ws = Workspace.build(task, bundle, torch.device("cpu"))
    names = ["id_test"] + others
    print(f"data + model {time.time() - t0:.1f} s; templates {task.templates}")

    def row(label: str, metrics: dict, extra: dict) -> None:
        accs = {n: metrics["ood_val" if n == others[0] else n]["accuracy"] for n in names}
        ood = float(np.mean([accs[n] for n in others]))
        rec = dict(tag=args.tag, method=label, ood_mean=ood, **accs, **extra)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{label:>22} " + " ".join(f"{100 * accs[n]:5.1f}" for n in names) + f" | {100 * ood:5.1f}", flush=True)

    print(f"{'':>22} " + " ".join(f"{n[:5]:>5}" for n in names) + " |  ood")
    ws.reset()
    row("zero-shot", evaluate_all(ws), {})
    for lr in args.lrs:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.time()
                res = final_run(ws, {"ce": 1.0}, lr, args.weight_decay, args.epochs, args.batch_size, "all", True,
                                Path(tmp), seed, clip_grad_norm=args.clip_grad_norm, wise_alphas=(0.5,),
                                progress=False)
            extra = dict(lr=lr, seed=seed, epochs=args.epochs, batch=args.batch_size, n_train=args.n_train,
                         selected_epoch=res["selected_epoch"], seconds=round(time.time() - t, 1))
            row(f"ft lr={lr:g} s{seed}", res["metrics"], extra)
            row(f"wise.5 lr={lr:g} s{seed}", res["wise"]["0.5"], extra)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
