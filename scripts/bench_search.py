#!/usr/bin/env python
"""Benchmark of the search's inner loop: seconds per trial against the pure compute floor, and
against a reference-style loop, all measured in one run on the same machine and tensors.

    python scripts/bench_search.py                       # embedded task, CPU
    python scripts/bench_search.py --trials 5 dataset=synthetic model=vit_b16_random device=cuda

Arguments after the options are Hydra overrides of conf/config.yaml (as for train.py).

Printed, per trial and per step:
- ours: `autoft.pipeline.search_trial` as the search runs it (reset from theta0, cached uint8 pool,
  persistent iterator, one OOD-val pass with the evaluation transform); the first trial, which also
  decodes the pool and the OOD-val subset, is reported apart;
- floor: the same forward+backward passes of the inner steps plus the OOD-val forward, in a bare
  loop on tensors already normalised and on the device (and the floor with AdamW's step added);
- data: the share of a trial spent drawing and normalising batches;
- reference-style: a new DataLoader iterator every step, two deep copies of the model per trial,
  fp32, OOD-val decoded through a DataLoader every trial (the reference implementation's habits);
- peak memory (CUDA: max allocated; CPU: the process's max RSS).
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3, help="timed trials per loop (after one warm-up trial)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from autoft import cli
    from autoft.data.cache import TensorBatches, loader
    from autoft.engine import FinetuneSettings, Finetuner, make_optimizer
    from autoft.evaluation import predict
    from autoft.pipeline import search_trial

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["phase=search", *args.overrides])
    hp = cli.hyperparameters(cfg)
    ws = cli.workspace(cfg)
    device, task, t = ws.device, ws.task, cfg.trainer
    steps, batch = int(t.inner_steps), int(t.batch_size)
    weights = hp["loss_weights"]
    settings = FinetuneSettings(steps=steps, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                warmup_steps=int(round(float(t.warmup_fraction) * steps)),
                                clip_grad_norm=t.clip_grad_norm, precision=ws.precision, seed=0)
    pool = cli.pool_indices(len(task.train), steps * batch, 0)
    trainable = cfg.method.trainable
    print(f"bench: dataset={cfg.dataset.name} model={cfg.model.name} device={device} precision={ws.precision} "
          f"inner_steps={steps} batch={batch} pool={len(pool)} ood_val={len(task.ood_val)} "
          f"losses={[k for k, w in weights.items() if w]}", flush=True)

    # 1. ours, as the search runs it
    first, _ = timed(lambda: search_trial(ws, weights, settings, trainable, pool, batch), device)
    ours = [timed(lambda: search_trial(ws, weights, settings, trainable, pool, batch), device)[0] for _ in range(args.trials)]
    ours_s = sum(ours) / len(ours)
    mem_ours = peak_memory_mb(device)

    # data: drawing and normalising the same number of batches, no model
    images, labels = ws.split_tensors(task.train, pool)
    ood_images, ood_labels = ws.split_tensors(task.ood_val)
    it = iter(TensorBatches(images, labels, batch, seed=0))
    data_s, _ = timed(lambda: [ws.normalizer(next(it)[0]) for _ in range(steps)], device)

    # 2. the floor: bare forward+backward on pre-normalised device tensors (+ OOD-val forward)
    ws.reset()
    params, objective = ws.objective(weights, trainable)
    it = iter(TensorBatches(images, labels, batch, seed=0))
    xs = [(ws.normalizer(x), y.to(device)) for x, y in (next(it) for _ in range(steps))]
    ood_x = [ws.normalizer(ood_images[i: i + ws.eval_batch_size]) for i in range(0, len(ood_images), ws.eval_batch_size)]
    tuner = Finetuner(ws.classifier, params, objective, ws.normalizer, settings, device, ws.caption_tokens)
    from autoft.engine import autocast

    def bare(with_step: bool):
        tuner.train_mode()
        opt = make_optimizer(params, 1e-9, 0.0, device)
        for x, y in xs:
            with autocast(device, ws.precision):
                logits, feats = ws.classifier(x)
                text = ws.classifier.text_features(tuner._caption_batch(y)) if objective.uses_text else None
                loss = objective.combine(objective.data_terms(logits, y, feats, text, ws.classifier.logit_scale))
            pterms = objective.param_terms()
            (loss + (objective.combine(pterms) if pterms else 0)).backward()
            if with_step:
                opt.step()
            opt.zero_grad(set_to_none=True)
        ws.classifier.eval()
        with torch.no_grad():
            for x in ood_x:
                with autocast(device, ws.precision):
                    ws.classifier(x)

    bare(False)  # warm-up
    floor_s = min(timed(lambda: bare(False), device)[0] for _ in range(args.trials))
    floor_step_s = min(timed(lambda: bare(True), device)[0] for _ in range(args.trials))

    # 3. reference-style loop
    def reference_trial():
        model = copy.deepcopy(ws.classifier)  # the reference deep-copied the model twice per trial
        init = copy.deepcopy(model)
        model.load_state_dict(ws.theta0)
        ps = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(ps, lr=hp["lr"], weight_decay=hp["weight_decay"])
        dl = loader(task.train, ws.bundle.image_size, batch, shuffle=True, num_workers=ws.num_workers, indices=pool)
        model.train()
        for _ in range(steps):
            x, y = next(iter(dl))  # a new iterator every step
            logits, _ = model(ws.normalizer(x))
            F.cross_entropy(logits, y.to(device)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        eval_dl = loader(task.ood_val, ws.bundle.image_size, ws.eval_batch_size, num_workers=ws.num_workers)
        predict(model, eval_dl, ws.normalizer, device, "fp32")
        del init

    reference = [timed(reference_trial, device)[0] for _ in range(max(1, args.trials - 1))]
    ref_s = sum(reference) / len(reference)
    mem_all = peak_memory_mb(device)

    rows = {
        "seconds_per_trial": ours_s, "first_trial_seconds": first, "floor_seconds": floor_s,
        "floor_with_adamw_seconds": floor_step_s, "overhead_ratio": ours_s / floor_s,
        "overhead_ratio_vs_floor_with_adamw": ours_s / floor_step_s, "data_share": data_s / ours_s,
        "reference_seconds_per_trial": ref_s, "speedup_vs_reference": ref_s / ours_s,
        "peak_memory_mb_ours": mem_ours, "peak_memory_mb_all": mem_all,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "inner_steps": steps, "batch_size": batch,
    }
    print(f"  ours            {ours_s:8.3f} s/trial  ({1000 * ours_s / steps:.1f} ms/step; first trial {first:.2f} s incl. decoding)")
    print(f"  floor fwd+bwd   {floor_s:8.3f} s/trial  -> overhead ratio {rows['overhead_ratio']:.3f}")
    print(f"  floor +AdamW    {floor_step_s:8.3f} s/trial  -> overhead ratio {rows['overhead_ratio_vs_floor_with_adamw']:.3f}")
    print(f"  data share      {100 * rows['data_share']:7.1f} %")
    print(f"  reference-style {ref_s:8.3f} s/trial  -> ours is {rows['speedup_vs_reference']:.2f}x faster")
    print(f"  peak memory     {mem_ours:8.0f} MB (ours), {mem_all:.0f} MB (after all loops)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
