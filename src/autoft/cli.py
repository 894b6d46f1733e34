"""Turns a composed Hydra config into the typed objects autoft.pipeline runs on: the run's
Hyperparameters (autoft.hparams), its RunSpec (a search trial's or a final run's), and the Workspace.
The library itself never reads the config or Hydra globals; only this module and train.py do."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from autoft.config_checks import validate
from autoft.data.base import Task
from autoft.data.image_cache import CachePolicy
from autoft.distributed import SINGLE, DistEnv, from_environment
from autoft.engine import ADAMW, OptimizerFactory, optimizer_factory
from autoft.errors import UserError
from autoft.hparams import WISE_ALPHA_ATTR, Hyperparameters
from autoft.models import hub
from autoft.models.clip import load_clip
from autoft.pipeline import FinishedRun, RunSpec, Workspace, run_final, run_trial, seed_everything
from autoft.records import read_best_hparams, write_results, write_trial
from autoft.reporting import wandb_logger
from autoft.reporting.wandb_summary import trial_summary

log = logging.getLogger("autoft")

# Workspaces built in this process, reused by every trial a sequential launcher runs here.
_WORKSPACES: dict[str, Workspace] = {}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (torchrun's LOCAL_RANK) when CUDA is available, else the CPU; any
    other name as it is (validate refused a device this machine lacks: config_checks.device_problem)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def resolve_channels_last(value, device: torch.device) -> bool:
    """auto: on CUDA only (on CPU the NCHW kernels are as fast or faster)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def build_task(cfg: DictConfig) -> Task:
    """The dataset's task, from a config that passed autoft.config_checks.validate."""
    ds = cfg.dataset
    task_cfg = ds.task
    if "subset_dir" in task_cfg and task_cfg.subset_dir is None and HydraConfig.initialized():
        # record the OOD-val subset beside the study (multirun) or the run
        hc = HydraConfig.get()
        where = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.runtime.output_dir
        task_cfg = OmegaConf.merge(task_cfg, {"subset_dir": str(where)})
    id_metrics = list(ds.get("id_test_metrics") or [ds.metric])
    try:
        task = instantiate(task_cfg, _convert_="all")
    except InstantiationException as err:  # Hydra wraps the builder's UserError: unwrap it, so that a
        if isinstance(err.__cause__, UserError):  # search stops at once instead of failing every trial
            raise err.__cause__ from None
        raise
    task.metric, task.higher_is_better = ds.metric, bool(ds.higher_is_better)
    task.id_test_metrics = id_metrics
    task.check_metrics()  # before any split is evaluated
    return task


def build_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings Workspace.build takes from the trainer config, as the config gives them (precision
    and channels_last may still say `auto`: they are resolved for the device at the build)."""
    t = cfg.trainer
    return {"num_workers": min(int(t.num_workers), os.cpu_count() or 1), "eval_batch_size": t.eval_batch_size,
            "precision": t.precision, "compile": bool(t.get("compile", False)),
            "channels_last": t.get("channels_last", "auto"), "image_cache": image_cache_policy(cfg)}


def workspace_key(cfg: DictConfig, settings: dict[str, Any]) -> str:
    """Everything a workspace is built from (model, task, device, `settings`), interpolations resolved:
    a multirun over data_root=/a,/b builds one workspace per value instead of reusing the first one's data."""
    inputs = {"dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
              "model": OmegaConf.to_container(cfg.model, resolve=True), "device": cfg.device, **settings}
    return json.dumps(inputs, sort_keys=True, default=str)


def workspace(cfg: DictConfig) -> Workspace:
    settings = build_settings(cfg)
    key = workspace_key(cfg, settings)
    if key not in _WORKSPACES:
        device = resolve_device(cfg.device, distributed_env(cfg).local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        m = cfg.model
        # the model first: a bad checkpoint is refused before any data is read or cached
        bundle = load_clip(arch=m.get("arch"), pretrained=m.get("pretrained"),
                           custom=OmegaConf.to_container(m.custom) if m.get("custom") else None,
                           checkpoint=m.get("checkpoint"), cache_dir=m.get("cache_dir"),
                           quick_gelu=m.get("quick_gelu"))
        task = build_task(cfg)
        _WORKSPACES.clear()  # one model per process: a new config replaces the old one
        for_device = {"precision": resolve_precision(settings["precision"], device),
                      "channels_last": resolve_channels_last(settings["channels_last"], device)}
        _WORKSPACES[key] = Workspace.build(task, bundle, device, **{**settings, **for_device})
    return _WORKSPACES[key]


def image_cache_policy(cfg: DictConfig) -> CachePolicy:
    """trainer.image_cache (auto | read | off) and trainer.image_cache_dir (null: <cache_dir>/images)."""
    t = cfg.trainer
    directory = t.get("image_cache_dir") or str(Path(cfg.cache_dir) / "images")
    return CachePolicy(mode=str(t.get("image_cache", "off")), directory=directory, dataset=str(cfg.dataset.name))


def check_weights(model_cfg) -> None:
    """The model's weights can be loaded here, without downloading anything: a checkpoint is read and
    matched to its architecture; an open_clip name and tag must be known, and the file open_clip
    will load must be readable: model.pretrained=<file> itself, or the tag's file in the hub cache,
    which with HF_HUB_OFFLINE=1 must be there (autoft.models.hub.check_pretrained)."""
    import open_clip

    m = model_cfg
    if m.get("checkpoint") or m.get("custom"):
        load_clip(custom=OmegaConf.to_container(m.custom) if m.get("custom") else None, checkpoint=m.get("checkpoint"))
        return
    arch, tag = m.get("arch"), m.get("pretrained")
    if arch not in open_clip.list_models():
        raise UserError(f"model.arch={arch}: not an open_clip model; e.g. ViT-B-16, ViT-L-14 (open_clip.list_models())")
    if not tag:
        return
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in tags and not Path(tag).is_file():
        raise UserError(f"model.pretrained={tag}: neither a tag of {arch} nor an existing file; valid tags: "
                        f"{', '.join(tags)}")
    hub.check_pretrained(arch, tag, m.get("cache_dir"))


def preflight(cfg: DictConfig) -> None:
    """What every trial of a search needs, checked once before the first trial (the sweeper calls it
    when `hydra.sweeper.preflight: autoft.cli.preflight` is set): the config's values, files and
    model/dataset fit (autoft.config_checks.validate), the optimiser builds, the dataset builds, the
    model's weights load. Raises UserError; builds nothing on the accelerator and downloads nothing."""
    validate(cfg)
    run_spec(cfg, hyperparameters(cfg))
    check_weights(cfg.model)  # before the data: reading a checkpoint is cheaper than listing a dataset
    check_batch_fits(build_task(cfg), cfg)


def check_batch_fits(task: Task, cfg: DictConfig) -> None:
    """A run that trains needs one full batch of ID training images (batches drop their remainder): a
    small user dataset with a large trainer.batch_size is refused before anything trains."""
    n, batch = len(task.train), int(cfg.trainer.batch_size)
    if bool(cfg.method.get("train", True)) and batch > n:
        raise UserError(f"trainer.batch_size={batch}: the ID training split of {task.name} holds {n} images, fewer than "
                        f"one batch; lower it (e.g. trainer.batch_size={max(1, n // 4)})")


def warn_uncalibrated(cfg: DictConfig) -> None:
    """The default budget of user datasets is valid, not tuned: each run says so once. A budget file of
    the pair (it names the dataset and the model) is the user's own: its block merges over the
    default's, whose `calibrated: false` would otherwise stay."""
    b = cfg.get("budget") or {}
    own = (b.get("dataset"), b.get("model")) == (cfg.dataset.name, cfg.model.name)
    if b.get("calibrated", True) is False and not own:
        t = cfg.trainer
        log.warning("budgets from conf/budget/%s.yaml (base_lr %g, batch %d, %d inner steps, %d epochs) are not "
                    "calibrated for dataset=%s model=%s; set your own in conf/budget/<dataset>_<model>.yaml "
                    "(docs/own_data.md)", b.get("name"), t.base_lr, t.batch_size, t.inner_steps, t.epochs,
                    cfg.dataset.name, cfg.model.name)


def distributed_env(cfg: DictConfig) -> DistEnv:
    """torchrun's process group for final runs; searches scale by workers sharing a study instead."""
    if cfg.phase != "final":
        return SINGLE
    want = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else str(cfg.device).split(":")[0]
    return from_environment(want)


def hyperparameters(cfg: DictConfig) -> Hyperparameters:
    """This run's hyperparameters: the config's, or (hparams=<best_hparams.yaml>) the file's, whose
    loss terms it leaves out keep the config's weights. ce is always the config's (never searched; the
    reference code used a sampled ce weight in the final run). base_lr is the config's: run_spec
    computes the run's lr from it (Hyperparameters.lr)."""
    hp = Hyperparameters.from_config(cfg)
    if cfg.get("hparams"):  # one message naming the file and the key when it is missing or bad
        hp = read_best_hparams(cfg.hparams, defaults=hp)
    return replace(hp, loss_weights={**hp.loss_weights, "ce": float(cfg.method.loss_weights.ce)},
                   base_lr=float(cfg.trainer.base_lr))


def hparams_record(cfg: DictConfig, hp: Hyperparameters, spec: RunSpec) -> dict[str, Any]:
    """The `hparams` of trial.json and results.json (and the W&B config): the hyperparameters, the
    run's own lr (the spec's), where they came from, and the method's lr settings."""
    m = cfg.method
    record = {**hp.values(), "lr": spec.lr, "source": str(cfg.hparams) if cfg.get("hparams") else "config"}
    lr_mult = float(m.get("lr_mult", 1.0))
    if lr_mult != 1.0:
        record["lr_mult"] = lr_mult
    if spec.lp_epochs > 0:  # LP-FT: the head-only stage's lr
        record["lp_epochs"] = spec.lp_epochs
        record["lp_lr"] = spec.lp_lr
    return record


def resources(device: torch.device) -> dict[str, Any]:
    """What this process used so far, for results.json and trial.json: the device and, on CUDA, the
    peak memory torch allocated there (scripts/rehearsal.py reports it per phase)."""
    record: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        record["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return record


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> Optional[float]:
    """One run of a composed config: every key, range and file checked first (validate: nothing is
    built before it passes), then `run_validated`."""
    validate(cfg)
    return run_validated(cfg)


def run_validated(cfg: DictConfig) -> Optional[float]:
    """One run (a search trial or a final run) of a config that passed validate, once: train.py checks
    it before importing this module (a bad config is refused before torch is imported), then calls this."""
    hp = hyperparameters(cfg)
    spec = run_spec(cfg, hp)
    used = hparams_record(cfg, hp, spec)
    seed_everything(int(cfg.seed))
    warn_uncalibrated(cfg)
    finished = FinishedRun.read(cfg.weights_from) if cfg.get("weights_from") else None
    if finished is not None:  # its final model: the WiSE-FT mixture that run reported (autoft_alpha's)
        spec = replace(spec, wise_alpha=float(finished.results.get("wise_alpha", 1.0)))
    ws = workspace(cfg)
    check_batch_fits(ws.task, cfg)
    out = output_dir()
    if cfg.phase == "search":
        wb = wandb_logger.for_run(cfg, used, out, job_type="trial")  # a no-op unless logger=wandb
        with wb.closing():
            record = run_search(cfg, ws, hp, out, spec, wb=wb)
            wb.summary(trial_summary(record))
        return record["objective"]  # what the sweeper reads (a float: autoft.search.outcome)

    env = distributed_env(cfg)
    t = cfg.trainer
    hparams = {**used, "epochs": int(t.epochs), "batch_size": int(t.batch_size)}
    if finished is not None:  # a finished run's weights, evaluated on this run's domains: its hyperparameters
        used = hparams = {**(finished.results.get("hparams") or {}), "weights_from": str(finished.directory)}
    wb = wandb_logger.for_run(cfg, used, out, job_type="final", origin=hp.records)  # rank 0 only
    with wb.closing():
        res = run_final(ws, spec, out, progress=True, dist_env=env, on_epoch_end=wb.log_epoch, on_step=wb.on_step,
                        finished=finished)
        if not env.is_main:
            return None
        record = {"dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name, "seed": int(cfg.seed),
                  "objective_metric": ws.task.metric, "higher_is_better": ws.task.higher_is_better,
                  "id_test_split": ws.task.id_test, "id_test_metrics": list(ws.task.id_test_metrics or [ws.task.metric]),
                  "extra_test_splits": list(ws.task.extra_tests), "hparams": hparams, **res,
                  "resources": resources(ws.device), "image_sources": dict(ws.image_sources)}
        path = write_results(out, record)
        wb.log_final(record, out, upload_checkpoint=bool((cfg.get("logger") or {}).get("upload_checkpoint", False)))
    log.info("results written to %s", path)
    if res["wise_alpha"] != 1.0:
        log.info("  the final model is the WiSE-FT mixture at alpha=%g (hparams wise_alpha)", res["wise_alpha"])
    for split, m in res["metrics"].items():
        log.info("  %-16s %s %.4f", split, ws.task.metric, m[ws.task.metric])
    return res["metrics"]["id_val"][ws.task.metric]


def run_spec(cfg: DictConfig, hp: Hyperparameters) -> RunSpec:
    """This run's spec, for either phase: the config's method, trainer, dataset and search settings
    with this run's hyperparameters (the only place a run's settings are read from the config, and
    the one place its learning rates are computed). A trial runs trainer.inner_steps steps per inner
    run, search.seeds_per_trial seeds (seed, seed+1, ...), scored on OOD-val; a final run trains
    trainer.epochs epochs."""
    t, m, search = cfg.trainer, cfg.method, cfg.get("search") or {}
    lp_epochs = int(m.get("lp_epochs", 0) or 0)
    return RunSpec(weights=dict(hp.loss_weights), lr=hp.lr(hp.base_lr, float(m.get("lr_mult", 1.0))),
                   weight_decay=hp.weight_decay, batch_size=int(t.batch_size), trainable=str(m.trainable),
                   seed=int(cfg.seed), warmup_fraction=float(t.warmup_fraction), clip_grad_norm=t.clip_grad_norm,
                   accum_steps=int(t.accum_steps), max_loss=float(t.max_loss), optimizer=optimizer(cfg),
                   steps=int(t.inner_steps), seeds_per_trial=int(search.get("seeds_per_trial", 1)),
                   pool_seed=int(search.get("pool_seed", 0)), eval_every=int(search.get("eval_every", 0) or 0),
                   bootstrap=int(search.get("bootstrap", 1000) or 0),
                   wise_alphas=tuple(float(a) for a in search.get("wise_alphas") or ()),
                   regenerate_head=bool(search.get("regenerate_head", False)),
                   epochs=int(t.epochs), train=bool(m.train), lp_epochs=lp_epochs,
                   lp_lr=hp.lr(hp.base_lr, float(m.get("lp_lr_mult", 1.0))) if lp_epochs > 0 else None,
                   refresh_head=bool(m.get("refresh_head", False)),
                   passes_per_epoch=int(cfg.dataset.get("passes_per_epoch", 1)), wise_alpha=hp.wise_alpha)


def optimizer(cfg: DictConfig) -> OptimizerFactory:
    """trainer.optimizer ({_target_: a torch.optim class, _partial_: true, ...}) as the engine's factory."""
    node = cfg.trainer.get("optimizer")
    return optimizer_factory(node) if node is not None else ADAMW


def run_search(cfg: DictConfig, ws: Workspace, hp: Hyperparameters, out: Path,
               spec: Optional[RunSpec] = None, wb: Optional[wandb_logger.WandbRun] = None) -> dict[str, Any]:
    """One trial (pipeline.run_trial): writes trial.json and reports the per-seed scores, the
    interval and the chosen WiSE-FT alpha (search.wise_alphas) to the study; `wb` records the
    per-step loss and lr and the intermediate OOD-val scores (search.eval_every). Returns the
    trial's record (what trial.json holds; its `objective` is the trial's score)."""
    spec = spec or run_spec(cfg, hp)
    from autoft.search.trial import TrialReporter

    reporter = TrialReporter.from_config(cfg.get("search"))
    reporter = reporter if reporter.active else None
    logging_on = wb is not None and wb.active

    def report(step: int, value: float) -> None:
        if logging_on:  # first: a pruned trial's run keeps the score that pruned it
            wb.record_ood_val(step, value)
        if reporter is not None:
            reporter.report(step, value)

    record = run_trial(ws, spec, report=report if reporter is not None or logging_on else None,
                       progress=reporter.progress if reporter is not None else None,
                       on_step=wb.on_step if logging_on else None)
    record["hparams"] = hparams_record(cfg, hp, spec)
    record["resources"] = resources(ws.device)
    record["image_sources"] = dict(ws.image_sources)  # cached or live images, per split
    write_trial(out, record)
    if reporter is not None:
        attrs = {"per_seed": record["per_seed"], "seeds": record["seeds"], "peak_lr": record["runs"][0]["peak_lr"]}
        if "ci" in record:
            attrs.update(ci_low=record["ci"][0], ci_high=record["ci"][1])
        if "wise_alpha" in record:
            attrs[WISE_ALPHA_ATTR] = record["wise_alpha"]
        reporter.set_user_attrs(**attrs)
    ci = f"  95% CI [{record['ci'][0]:.4f}, {record['ci'][1]:.4f}]" if "ci" in record else ""
    alpha = f"  at WiSE-FT alpha {record['wise_alpha']:g}" if "wise_alpha" in record else ""
    k = len(spec.seeds)
    log.info("trial objective (%s on OOD-val, %d seed%s): %.4f%s%s  [%.1fs]", ws.task.metric, k, "s" if k > 1 else "",
             record["objective"], alpha, ci, sum(r["seconds"] for r in record["runs"]))
    return record
