#!/usr/bin/env python
"""Benchmark of the search's inner loop: seconds per trial against the pure compute floor, and
against a reference-style loop, all measured in one run on the same machine and tensors.

    python scripts/bench_search.py                       # embedded task, CPU
    python scripts/bench_search.py --trials 5 experiment=synthetic_vit_b16_random device=cuda
    python scripts/bench_search.py --config-dir ~/myshift-conf dataset=myshift device=cuda   # your shift's YAML

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
- throughput: images per second of each loop (training images, OOD-val images, and both per trial
  second), and its fixed per-trial cost (ours: the fixed cost below; the reference: deep copies, loader
  set-up), so that the cost of another budget (trials x inner steps x batch + OOD-val) can be
  projected (scripts/gpu_check.py);
- fixed cost: the seconds of a trial outside its inner steps (`Finetuner.train_step`) and its OOD-val
  forward (`Workspace.logits`), each call timed inside the same trials (synchronised on CUDA): reset
  from theta0, optimiser and schedule construction, batches drawn, metrics, logger, transfers; and
  their share of the trial (the cost projection's per-trial constant);
- peak memory of each loop (CUDA: max allocated, reset before each loop; CPU: the process's max RSS,
  which only grows);
- W&B logging: seconds per trial with logging off and on (an offline W&B run per trial, as train.py
  starts one for each search trial, with its per-step loss and lr), alternated in this run; the
  overhead per trial and as a share of the trial (it should stay under 2%).

`--json PATH` (or `--out PATH`) writes every number as JSON; `main(argv)` returns the same dict.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def loop_numbers(trial_s: float, train_s: float, eval_s: float, train_images: int, eval_images: int,
                 peak_mb: float) -> dict:
    """One loop's throughput: trial = fixed per-trial cost + training + OOD-val pass."""
    return {"seconds_per_trial": trial_s, "train_seconds": train_s, "eval_seconds": eval_s,
            "overhead_seconds": max(0.0, trial_s - train_s - eval_s),
            "train_images_per_s": train_images / train_s, "eval_images_per_s": eval_images / eval_s,
            "images_per_s": (train_images + eval_images) / trial_s, "peak_memory_mb": peak_mb}


@contextlib.contextmanager
def timed_parts(device: torch.device, parts: dict):
    """Patch each `label: (owner, method)` for the block so that its calls are timed (synchronised, so
    a call owns its kernels); yields label -> seconds summed. The instrumentation lives here, not in
    the engine or the pipeline."""
    seconds = dict.fromkeys(parts, 0.0)
    originals = {label: getattr(owner, name) for label, (owner, name) in parts.items()}

    def timer(label, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            dt, out = timed(lambda: fn(*a, **k), device)
            seconds[label] += dt
            return out
        return wrapper

    for label, (owner, name) in parts.items():
        setattr(owner, name, timer(label, originals[label]))
    try:
        yield seconds
    finally:
        for label, (owner, name) in parts.items():
            setattr(owner, name, originals[label])


def fixed_cost(trial, workspace_cls, device, trials: int) -> dict:
    """Seconds of a trial outside its inner steps and its OOD-val forward, both timed call by call in
    the same trials: fixed = trial - (inner steps + OOD-val forward). Of it, the reset from theta0 and
    the Finetuner's construction (optimiser, schedule) are timed too; the rest is batches drawn,
    metrics, callbacks and transfers."""
    from autoft.engine import Finetuner

    parts = {"inner_steps": (Finetuner, "train_step"), "ood_val_forward": (workspace_cls, "logits"),
             "reset": (workspace_cls, "reset"), "optimiser": (Finetuner, "__init__")}
    rows = []
    for _ in range(trials):
        with timed_parts(device, parts) as seconds:
            total = timed(trial, device)[0]
        rows.append({"trial": total, **seconds})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    fixed = max(0.0, mean["trial"] - mean["inner_steps"] - mean["ood_val_forward"])
    return {"seconds_per_trial": mean["trial"], "inner_steps_seconds": mean["inner_steps"],
            "ood_val_forward_seconds": mean["ood_val_forward"], "fixed_seconds": fixed,
            "fixed_share": fixed / mean["trial"], "reset_seconds": mean["reset"],
            "optimiser_seconds": mean["optimiser"],
            "other_fixed_seconds": max(0.0, fixed - mean["reset"] - mean["optimiser"])}


def logging_overhead(trial, device, trials: int) -> dict:
    """Seconds per trial with W&B logging off and on (offline run per trial, every step recorded),
    measured alternately in this process; the overhead is their difference over the trial."""
    import tempfile

    from autoft.reporting import wandb_logger as W

    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(trials + 1):  # the first pair warms W&B's service up
            t_off = timed(lambda: trial(None), device)[0]

            def logged():
                run = W.start_run(enabled=True, project="bench", job_type="trial", name=f"trial-{i}", config={"i": i},
                                  out_dir=Path(tmp) / str(i), mode="offline", run_id=W.run_id("bench", i))
                with run.closing():
                    out = trial(run.on_step)
                    run.summary({"objective": out["objective"], "ood_val": out["ood_val"]})
            t_on = timed(logged, device)[0]
            if i:
                off.append(t_off)
                on.append(t_on)
    off_s, on_s = sum(off) / len(off), sum(on) / len(on)
    return {"seconds_per_trial_off": off_s, "seconds_per_trial_on": on_s, "overhead_seconds": on_s - off_s,
            "overhead_fraction": (on_s - off_s) / off_s}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3, help="timed trials per loop (after one warm-up trial)")
    ap.add_argument("--out", "--json", dest="out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--config-dir", help="a config directory of yours (train.py --config-dir): its dataset/<name>.yaml "
                    "and budget files join the repository's")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from autoft import cli
    from autoft.config_checks import compose_config, validate
    from autoft.data.loading import TensorBatches, loader
    from autoft.engine import Finetuner, make_optimizer
    from autoft.evaluation import predict
    from autoft.pipeline import pool_indices, search_trial

    cfg = compose_config(["phase=search", *args.overrides], args.config_dir)
    validate(cfg)  # as train.py does: a bad value, or a foundation model not built yet, with its fix
    spec = cli.run_spec(cfg, cli.hyperparameters(cfg))
    ws = cli.workspace(cfg)
    device, task = ws.device, ws.task
    steps, batch = spec.steps, spec.batch_size
    weights = spec.weights
    settings = spec.settings(ws.precision, seed=0)  # the settings of the trial's first inner run
    pool = pool_indices(len(task.train), steps * batch, spec.pool_seed)
    trainable = spec.trainable
    print(f"bench: dataset={cfg.dataset.name} model={cfg.model.name} device={device} precision={ws.precision} "
          f"inner_steps={steps} batch={batch} pool={len(pool)} ood_val={len(task.ood_val)} "
          f"losses={[k for k, w in weights.items() if w]}", flush=True)

    n_train, n_eval = steps * batch, len(task.ood_val)

    # 1. ours, as the search runs it
    first, _ = timed(lambda: search_trial(ws, weights, settings, trainable, pool, batch), device)
    reset_peak_memory(device)
    ours = [timed(lambda: search_trial(ws, weights, settings, trainable, pool, batch), device)[0] for _ in range(args.trials)]
    ours_s = sum(ours) / len(ours)
    mem_ours = peak_memory_mb(device)
    # W&B logging on against off, interleaved: a trial's offline run (start, per-step loss and lr,
    # summary, finish) as train.py runs it for a search trial
    logging = logging_overhead(lambda on_step: search_trial(ws, weights, settings, trainable, pool, batch,
                                                            on_step=on_step), device, args.trials)
    print(f"  W&B logging     {logging['seconds_per_trial_on']:8.3f} s/trial on, {logging['seconds_per_trial_off']:.3f} off "
          f"-> overhead {1000 * logging['overhead_seconds']:.0f} ms/trial ({100 * logging['overhead_fraction']:+.1f} %)",
          flush=True)
    # its parts, timed inside trials: inner steps, OOD-val forward (fp32), and the fixed rest
    fixed = fixed_cost(lambda: search_trial(ws, weights, settings, trainable, pool, batch), type(ws), device,
                       args.trials)
    eval_ours, fixed_s = fixed["ood_val_forward_seconds"], fixed["fixed_seconds"]

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
        """-> (training seconds, OOD-val seconds)"""
        sync(device)
        t0 = time.perf_counter()
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
        sync(device)
        t1 = time.perf_counter()
        ws.classifier.eval()
        with torch.no_grad():
            for x in ood_x:
                ws.classifier(x)  # fp32, as the search evaluates
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    bare(False)  # warm-up
    reset_peak_memory(device)
    floor_parts = min((bare(False) for _ in range(args.trials)), key=sum)
    floor_s = sum(floor_parts)
    floor_step_parts = min((bare(True) for _ in range(args.trials)), key=sum)
    floor_step_s = sum(floor_step_parts)
    mem_floor = peak_memory_mb(device)

    # 3. reference-style loop
    def reference_trial():
        """-> (trial seconds, training seconds, OOD-val seconds)"""
        sync(device)
        t0 = time.perf_counter()
        model = copy.deepcopy(ws.classifier)  # the reference deep-copied the model twice per trial
        init = copy.deepcopy(model)
        model.load_state_dict(ws.theta0)
        ps = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(ps, lr=settings.lr, weight_decay=settings.weight_decay)
        dl = loader(task.train, ws.bundle.image_size, batch, shuffle=True, num_workers=ws.num_workers, indices=pool)
        model.train()
        sync(device)
        t1 = time.perf_counter()
        for _ in range(steps):
            x, y = next(iter(dl))  # a new iterator every step
            logits, _ = model(ws.normalizer(x))
            F.cross_entropy(logits, y.to(device)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        eval_dl = loader(task.ood_val, ws.bundle.image_size, ws.eval_batch_size, num_workers=ws.num_workers)
        predict(model, eval_dl, ws.normalizer, device)  # fp32
        sync(device)
        t3 = time.perf_counter()
        del init
        return t3 - t0, t2 - t1, t3 - t2

    reset_peak_memory(device)
    reference = [reference_trial() for _ in range(max(1, args.trials - 1))]
    ref_s, ref_train, ref_eval = (sum(r[i] for r in reference) / len(reference) for i in range(3))
    mem_ref = peak_memory_mb(device)
    mem_all = mem_ref if device.type != "cuda" else max(mem_ours, mem_floor, mem_ref)

    rows = {
        "seconds_per_trial": ours_s, "first_trial_seconds": first, "floor_seconds": floor_s,
        "floor_with_adamw_seconds": floor_step_s, "overhead_ratio": ours_s / floor_s,
        "overhead_ratio_vs_floor_with_adamw": ours_s / floor_step_s, "data_share": data_s / ours_s,
        "reference_seconds_per_trial": ref_s, "speedup_vs_reference": ref_s / ours_s,
        "peak_memory_mb_ours": mem_ours, "peak_memory_mb_all": mem_all, "wandb_logging": logging,
        "fixed_cost": fixed,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "inner_steps": steps, "batch_size": batch,
        "dataset": cfg.dataset.name, "model": cfg.model.name, "image_size": ws.bundle.image_size,
        "precision": ws.precision, "ood_val": n_eval, "trials": args.trials,
        "peak_memory": "torch.cuda.max_memory_allocated per loop" if device.type == "cuda"
        else "process max RSS (cumulative over the loops)",
        "loops": {
            # its training seconds are the inner steps timed inside trials: ours_s less the other parts,
            # measured in other trials, can come out at zero or below for a model this small on a CPU
            "ours": loop_numbers(ours_s, fixed["inner_steps_seconds"], eval_ours, n_train, n_eval, mem_ours),
            "floor": loop_numbers(floor_s, *floor_parts, n_train, n_eval, mem_floor),
            "floor_with_adamw": loop_numbers(floor_step_s, *floor_step_parts, n_train, n_eval, mem_floor),
            "reference": loop_numbers(ref_s, ref_train, ref_eval, n_train, n_eval, mem_ref),
        },
    }
    loops = rows["loops"]
    print(f"  ours            {ours_s:8.3f} s/trial  ({1000 * ours_s / steps:.1f} ms/step; first trial {first:.2f} s incl. decoding)")
    print(f"  floor fwd+bwd   {floor_s:8.3f} s/trial  -> overhead ratio {rows['overhead_ratio']:.3f}")
    print(f"  floor +AdamW    {floor_step_s:8.3f} s/trial  -> overhead ratio {rows['overhead_ratio_vs_floor_with_adamw']:.3f}")
    print(f"  data share      {100 * rows['data_share']:7.1f} %")
    print(f"  fixed cost      {fixed_s:8.3f} s/trial  ({100 * fixed['fixed_share']:.1f} % of a trial: reset "
          f"{fixed['reset_seconds']:.3f}, optimiser {fixed['optimiser_seconds']:.3f}, other "
          f"{fixed['other_fixed_seconds']:.3f}; inner steps {fixed['inner_steps_seconds']:.3f}, OOD-val forward "
          f"{fixed['ood_val_forward_seconds']:.3f})")
    print(f"  reference-style {ref_s:8.3f} s/trial  -> ours is {rows['speedup_vs_reference']:.2f}x faster")
    for name in ("ours", "floor", "reference"):
        n = loops[name]
        print(f"  {name:<15} {n['images_per_s']:8.1f} images/s per trial (train {n['train_images_per_s']:.1f}, "
              f"OOD-val {n['eval_images_per_s']:.1f}; fixed {n['overhead_seconds']:.3f} s/trial), "
              f"peak memory {n['peak_memory_mb']:.0f} MB")
    print(f"  peak memory     {mem_ours:8.0f} MB (ours), {mem_all:.0f} MB (after all loops)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    from autoft.errors import UserError

    try:
        main()
    except UserError as err:  # a bad option or override: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
