"""Turns a composed Hydra config into plain arguments for autoft.pipeline (the library itself never
reads Hydra globals; only this module and train.py do)."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from autoft import config as schema
from autoft.data.base import Task
from autoft.distributed import SINGLE, DistEnv, from_environment
from autoft.engine import FinetuneSettings
from autoft.errors import UserError
from autoft.losses import validate_weights
from autoft.metrics import METRICS, bootstrap_interval
from autoft.models.clip import load_clip
from autoft.pipeline import FinalSpec, Workspace, run_final, search_trial
from autoft.reporting import wandb_logger
from autoft.reporting.io import write_json

log = logging.getLogger("autoft")

# Workspaces built in this process, reused by every trial a sequential launcher runs here.
_WORKSPACES: dict[str, Workspace] = {}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (torchrun's LOCAL_RANK) when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def resolve_channels_last(value, device: torch.device) -> bool:
    """auto: on CUDA only (on CPU the NCHW kernels are as fast or faster)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_task(cfg: DictConfig) -> Task:
    ds = cfg.dataset
    if ds.metric not in METRICS:
        raise UserError(f"dataset.metric '{ds.metric}' is not a metric; valid: {', '.join(sorted(METRICS))}")
    task_cfg = ds.task
    if "subset_dir" in task_cfg and task_cfg.subset_dir is None and HydraConfig.initialized():
        # record the OOD-val subset beside the study (multirun) or the run
        hc = HydraConfig.get()
        where = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.runtime.output_dir
        task_cfg = OmegaConf.merge(task_cfg, {"subset_dir": str(where)})
    id_metrics = list(ds.get("id_test_metrics") or [ds.metric])
    unknown = [m for m in id_metrics if m not in METRICS]
    if unknown:
        raise UserError(f"dataset.id_test_metrics: {unknown} are not metrics; valid: {', '.join(sorted(METRICS))}")
    try:
        task = instantiate(task_cfg, _convert_="all")
    except InstantiationException as err:  # Hydra wraps the builder's UserError: unwrap it, so that a
        if isinstance(err.__cause__, UserError):  # search stops at once instead of failing every trial
            raise err.__cause__ from None
        raise
    task.metric, task.higher_is_better = ds.metric, bool(ds.higher_is_better)
    task.id_test_metrics = id_metrics
    return task


def check_model_fits_dataset(cfg: DictConfig) -> None:
    """A model built for one task family (model.for_tasks: task builder targets) refuses the others:
    the embedded shapes model knows 48 words and 32-px images, and would score any real dataset
    without complaint, only meaninglessly."""
    problem = schema.model_fit_problem(cfg)
    if problem:
        raise UserError(problem)


def workspace(cfg: DictConfig) -> Workspace:
    key = OmegaConf.to_yaml({"dataset": cfg.dataset, "model": cfg.model, "device": cfg.device,
                             "precision": cfg.trainer.precision})
    if key not in _WORKSPACES:
        device = resolve_device(cfg.device, distributed_env(cfg).local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        m = cfg.model
        if m.get("checkpoint") and not Path(m.checkpoint).is_file():
            hint = m.get("build_command") or "point model.checkpoint at an existing file"
            raise UserError(f"model.checkpoint not found: {m.checkpoint}. Build it with: {hint}")
        # the model first: a bad checkpoint is refused before any data is read or cached
        bundle = load_clip(arch=m.get("arch"), pretrained=m.get("pretrained"),
                           custom=OmegaConf.to_container(m.custom) if m.get("custom") else None,
                           checkpoint=m.get("checkpoint"), cache_dir=m.get("cache_dir"),
                           quick_gelu=m.get("quick_gelu"))
        task = build_task(cfg)
        _WORKSPACES.clear()  # one model per process: a new config replaces the old one
        workers = min(int(cfg.trainer.num_workers), os.cpu_count() or 1)
        _WORKSPACES[key] = Workspace.build(task, bundle, device, num_workers=workers,
                                           eval_batch_size=cfg.trainer.eval_batch_size,
                                           precision=resolve_precision(cfg.trainer.precision, device),
                                           compile=bool(cfg.trainer.get("compile", False)),
                                           channels_last=resolve_channels_last(cfg.trainer.get("channels_last", "auto"), device))
    return _WORKSPACES[key]


def check_weights(model_cfg) -> None:
    """The model's weights can be loaded here, without downloading anything: a checkpoint is read and
    matched to its architecture; an open_clip name and tag must be known, and with HF_HUB_OFFLINE=1
    the tag's weights must already be in the hub cache."""
    import open_clip

    m = model_cfg
    if m.get("checkpoint") or m.get("custom"):
        load_clip(custom=OmegaConf.to_container(m.custom) if m.get("custom") else None, checkpoint=m.get("checkpoint"))
        return
    arch, tag = m.get("arch"), m.get("pretrained")
    if arch not in open_clip.list_models():
        raise UserError(f"model.arch={arch}: not an open_clip model; e.g. ViT-B-16, ViT-L-14 (open_clip.list_models())")
    if not tag or Path(tag).is_file():
        return
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in tags:
        raise UserError(f"model.pretrained={tag}: not a tag of {arch}; valid tags: {', '.join(tags)}")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub")
    if offline and hub:
        from huggingface_hub import try_to_load_from_cache

        repo, name = os.path.split(hub)  # 'org/model/' (default file name) or 'org/model/file.bin'
        name = name or "open_clip_pytorch_model.bin"
        names = (name[:-4] + ".safetensors", name) if name.endswith(".bin") else (name,)
        if not any(isinstance(try_to_load_from_cache(repo, n, cache_dir=m.get("cache_dir")), str) for n in names):
            raise UserError(f"model={m.name}: the {arch}/{tag} weights (hub repo {repo}) are not in the Hugging Face "
                            f"cache and HF_HUB_OFFLINE=1 forbids downloading them; download them once on a machine with "
                            f"network access, or pass model.pretrained=/path/to/weights")


def preflight(cfg: DictConfig) -> None:
    """What every trial of a search needs, checked once before the first trial (the sweeper calls it
    when `hydra.sweeper.preflight: autoft.cli.preflight` is set): the config's values and files, the
    model/dataset fit, the dataset builds, the model's weights load. Raises UserError; builds nothing
    on the accelerator and downloads nothing."""
    schema.validate(cfg)
    check_model_fits_dataset(cfg)
    hyperparameters(cfg)
    check_weights(cfg.model)  # before the data: reading a checkpoint is cheaper than listing a dataset
    build_task(cfg)


def distributed_env(cfg: DictConfig) -> DistEnv:
    """torchrun's process group for final runs; searches scale by workers sharing a study instead."""
    if cfg.phase != "final":
        return SINGLE
    want = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else str(cfg.device).split(":")[0]
    return from_environment(want)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """Loss weights, lr and weight decay of this run: the config, or a best-hparams file (final)."""
    weights = dict(OmegaConf.to_container(cfg.method.loss_weights))
    lr_scale, wd = float(cfg.trainer.lr_scale), float(cfg.trainer.weight_decay)
    source = "config"
    if cfg.get("hparams"):
        path = Path(cfg.hparams)
        best = schema.read_hparams(path)  # one message naming the file when it is missing or unreadable
        weights.update(best.get("loss_weights", {}))
        lr_scale = float(best.get("lr_scale", lr_scale))
        wd = float(best.get("weight_decay", wd))
        source = str(path)
    # ce is fixed to 1 (never searched); the reference code used a sampled ce weight in the final run
    weights["ce"] = float(cfg.method.loss_weights.ce)
    weights = validate_weights(weights)
    if not lr_scale > 0:
        raise UserError(f"trainer.lr_scale must be > 0, got {lr_scale}")
    # method presets may scale the lr: a linear probe's head (weights ~ logit_scale) needs larger steps
    lr_mult = float(cfg.method.get("lr_mult", 1.0))
    if not lr_mult > 0:
        raise UserError(f"method.lr_mult must be > 0, got {lr_mult}")
    lr = float(cfg.trainer.base_lr) * lr_scale * lr_mult
    if not lr > 0:
        raise UserError(f"trainer.base_lr must be > 0, got {cfg.trainer.base_lr}")
    if not 0 <= wd:
        raise UserError(f"trainer.weight_decay must be >= 0, got {wd}")
    hp = {"loss_weights": weights, "lr": lr, "lr_scale": lr_scale, "weight_decay": wd, "source": source}
    if lr_mult != 1.0:
        hp["lr_mult"] = lr_mult
    if int(cfg.method.get("lp_epochs", 0) or 0) > 0:  # LP-FT: the head-only stage's lr
        hp["lp_epochs"] = int(cfg.method.lp_epochs)
        hp["lp_lr"] = float(cfg.trainer.base_lr) * lr_scale * float(cfg.method.get("lp_lr_mult", 1.0))
    return hp


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def pool_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The ID examples the inner runs train on: a fixed seeded subset, decoded once per study."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: min(n, size)])


def run(cfg: DictConfig) -> Optional[float]:
    schema.validate(cfg)  # every key, range and file first: nothing is built before this passes
    hp = hyperparameters(cfg)  # validate before building anything
    seed_everything(int(cfg.seed))
    ws = workspace(cfg)
    out = output_dir()
    t = cfg.trainer
    if cfg.phase == "search":
        wb = wandb_logger.for_run(cfg, hp, out, job_type="trial")  # a no-op unless logger=wandb
        with wb.closing():
            objective = run_search(cfg, ws, hp, out)
            wb.summary(wandb_logger.trial_summary(out / "trial.json", objective))
        return objective

    env = distributed_env(cfg)
    wb = wandb_logger.for_run(cfg, hp, out, job_type="final")  # rank 0 only
    with wb.closing():
        res = run_final(ws, final_spec(cfg, hp), out, progress=True, dist_env=env, on_epoch_end=wb.log_epoch)
        if env.is_main:
            wb.summary(wandb_logger.summary_of(res))
    if not env.is_main:
        return None
    record = {"dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name, "seed": int(cfg.seed),
              "objective_metric": ws.task.metric, "higher_is_better": ws.task.higher_is_better,
              "id_test_split": ws.task.id_test, "id_test_metrics": list(ws.task.id_test_metrics or [ws.task.metric]),
              "hparams": {**hp, "epochs": int(t.epochs), "batch_size": int(t.batch_size)}, **res}
    write_json(out / "results.json", record)
    log.info("results written to %s", out / "results.json")
    for split, m in res["metrics"].items():
        log.info("  %-16s %s %.4f", split, ws.task.metric, m[ws.task.metric])
    return res["metrics"]["id_val"][ws.task.metric]


def final_spec(cfg: DictConfig, hp: dict) -> FinalSpec:
    """The final run's spec: the config's method, trainer and dataset settings with this run's
    hyperparameters (the only place a final run's settings are read from the config)."""
    t, m = cfg.trainer, cfg.method
    return FinalSpec(weights=hp["loss_weights"], lr=hp["lr"], weight_decay=hp["weight_decay"], epochs=int(t.epochs),
                     batch_size=int(t.batch_size), trainable=str(m.trainable), train=bool(m.train), seed=int(cfg.seed),
                     warmup_fraction=float(t.warmup_fraction), clip_grad_norm=t.clip_grad_norm,
                     accum_steps=int(t.accum_steps), max_loss=float(t.max_loss),
                     lp_epochs=int(hp.get("lp_epochs", 0)), lp_lr=hp.get("lp_lr"),
                     refresh_head=bool(m.get("refresh_head", False)),
                     passes_per_epoch=int(cfg.dataset.get("passes_per_epoch", 1)))


def trial_settings(cfg: DictConfig, hp: dict, precision: str, seed: int) -> FinetuneSettings:
    """One search trial's inner run: trainer.inner_steps steps with this trial's hyperparameters."""
    t = cfg.trainer
    return FinetuneSettings.for_run(int(t.inner_steps), hp["lr"], hp["weight_decay"], float(t.warmup_fraction),
                                    t.clip_grad_norm, int(t.accum_steps), precision, float(t.max_loss), seed)


def run_search(cfg: DictConfig, ws: Workspace, hp: dict, out: Path) -> float:
    """One trial: `search.seeds_per_trial` inner runs (seeds seed, seed+1, ...) scored by their mean,
    with a bootstrap interval over the OOD-val examples; per-seed scores go to the study too."""
    t, task = cfg.trainer, ws.task
    search = cfg.get("search") or {}
    steps = int(t.inner_steps)
    k = int(search.get("seeds_per_trial", 1))
    if k < 1:
        raise UserError(f"search.seeds_per_trial must be >= 1, got {k}")
    reporter = None
    if search.get("trial_id") is not None:
        from autoft.search.trial import TrialReporter
        reporter = TrialReporter.from_config(search)
    pool = pool_indices(len(task.train), steps * int(t.batch_size), int(search.get("pool_seed", 0)))
    runs = []
    for i in range(k):
        settings = trial_settings(cfg, hp, ws.precision, int(cfg.seed) + i)
        seed_everything(settings.seed)
        # intermediate reports (pruning) come from the first seed's run only
        report = reporter.report if reporter is not None and i == 0 else None
        runs.append(search_trial(ws, hp["loss_weights"], settings, cfg.method.trainable, pool, int(t.batch_size),
                                 eval_every=int(search.get("eval_every", 0) or 0), report=report,
                                 progress=reporter.progress if reporter is not None else None))
    per_seed = [r["objective"] for r in runs]
    objective = float(np.mean(per_seed))
    record = {"objective": objective, "metric": task.metric, "seeds": [int(cfg.seed) + i for i in range(k)],
              "per_seed": per_seed, "hparams": hp, "runs": [{k2: v for k2, v in r.items() if k2 != "ood_val_pred"} for r in runs]}
    n_boot = int(search.get("bootstrap", 1000) or 0)
    if n_boot:
        split = task.ood_val
        groups = torch.as_tensor(split.groups, dtype=torch.long) if split.groups is not None else None
        record["ci"] = list(bootstrap_interval(task.metric, [r["ood_val_pred"] for r in runs],
                                               torch.as_tensor(split.labels, dtype=torch.long), groups, n_boot))
    write_json(out / "trial.json", record)
    if reporter is not None:
        attrs = {"per_seed": per_seed, "seeds": record["seeds"], "peak_lr": runs[0]["peak_lr"]}
        if "ci" in record:
            attrs.update(ci_low=record["ci"][0], ci_high=record["ci"][1])
        reporter.set_user_attrs(**attrs)
    ci = f"  95% CI [{record['ci'][0]:.4f}, {record['ci'][1]:.4f}]" if "ci" in record else ""
    log.info("trial objective (%s on OOD-val, %d seed%s): %.4f%s  [%.1fs]", task.metric, k, "s" if k > 1 else "",
             objective, ci, sum(r["seconds"] for r in runs))
    return objective
