"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Types and key names are checked by Hydra when the config is composed (conf/config.yaml lists
`base_config` first, so every group is merged into its schema: a misspelt key or a string for a
number stops composition; autoft.config_messages.composition_error turns Hydra's report into one
message). Ranges and rules that span keys are checked by autoft.config_checks.validate, before any
work. Every value's allowed range is written once, in the comment beside its field below; the
allowed names are autoft.names'.

The budgets (trainer.base_lr, batch_size, inner_steps, epochs, ..., search.n_trials) have one home:
the budget file of a dataset and a model (conf/budget/<dataset>_<model>.yaml), which the defaults list
picks from the two choices (`dataset=iwildcam` alone: its paper backbone, vit_b16, and
iwildcam_vit_b16's budgets). The file records the pair it was set for (`budget`); a pair without one,
or a budget file chosen for another pair, is refused (autoft.config_checks).

This module imports only the standard library, OmegaConf, Hydra's ConfigStore and autoft.hparams
(itself torch-free): a bad config is refused in a second, before torch is imported.
"""
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from autoft.hparams import default_weights


# Weights of the nine loss terms (autoft.names.LOSS_NAMES; docs/design.md section 3), each a finite
# number >= 0: ce 1 (fixed, never searched: the final run always uses the config's ce), the others 0.
LossWeightsConf = make_dataclass("LossWeightsConf", [(name, float, field(default=w))
                                                     for name, w in default_weights().items()])
LossWeightsConf.__module__ = __name__  # pickled by reference (joblib, submitit workers), like the other schemas


@dataclass
class MethodConf:
    name: str = MISSING                  # the method's name in results and tables
    loss_weights: LossWeightsConf = field(default_factory=LossWeightsConf)
    trainable: str = "all"               # all (both towers, head, logit scale) | head (linear probe)
    train: bool = True                   # false: evaluate the zero-shot model as it is
    lr_mult: float = 1.0                 # > 0: the lr is trainer.base_lr x trainer.lr_scale x lr_mult
    lp_epochs: int = 0                   # >= 0: LP-FT's head-only epochs before full fine-tuning
    lp_lr_mult: float = 1.0              # > 0: the probe stage's lr multiplier (LP-FT)
    refresh_head: bool = False           # rebuild the zero-shot head from the text tower before each evaluation (FLYP)
    search_losses: Optional[List[str]] = None  # null, or a subset of autoft.names.SEARCHED_LOSSES (all but ce)


def _adamw() -> Dict[str, Any]:
    return {"_target_": "torch.optim.AdamW", "_partial_": True}


@dataclass
class TrainerConf:
    # the budgets: set by the budget file of the dataset and model (MISSING without one)
    batch_size: int = MISSING            # >= 1: the total batch of one optimiser step; accum_steps must divide it
    inner_steps: int = MISSING           # >= 1: optimiser steps of one search trial
    epochs: int = MISSING                # >= 1 for a final run that trains (>= 0 otherwise); of dataset.passes_per_epoch passes
    base_lr: float = MISSING             # > 0, finite: the lr the search's lr_scale multiplies
    weight_decay: float = MISSING        # >= 0, finite (searched by search=autoft)
    clip_grad_norm: Optional[float] = MISSING  # null (no clipping) or > 0
    # the same for every experiment
    eval_batch_size: int = 512           # >= 1
    lr_scale: float = 1.0                # > 0, finite: peak lr = base_lr x lr_scale
    warmup_fraction: float = 0.1         # in [0, 1): linear warm-up over this share of the run's steps
    accum_steps: int = 1                 # >= 1 and divides batch_size: micro-batches per optimiser step
    precision: str = "auto"              # auto | fp32 | bf16
    num_workers: int = 4                 # >= 0: DataLoader workers
    max_loss: float = 1.0e4              # > 0: a loss above this (or NaN/inf) fails the run as diverged
    compile: bool = False                # torch.compile the classifier once per process
    channels_last: Any = "auto"          # auto | true | false
    image_cache: str = "auto"            # auto | read | off: preprocessed images from disk (autoft.data.image_cache)
    image_cache_dir: Optional[str] = None  # where the image caches live; null: <cache_dir>/images
    # the optimiser class as a partial (_target_ a torch.optim.Optimizer, _partial_: true), called with
    # the parameters, lr (base_lr x lr_scale x the method's lr_mult, on the warm-up/cosine schedule) and
    # weight_decay; other constructor arguments may be set here (betas, eps, ...), not lr or weight_decay
    optimizer: Dict[str, Any] = field(default_factory=_adamw)


@dataclass
class DatasetConf:
    name: str = MISSING                  # the dataset's name in results, tables and output paths
    # arguments of the task builder named by task._target_; their keys are checked against the
    # builder's signature, their values by the per-argument rules in TASK_ARGUMENT_RULES below
    task: Dict[str, Any] = MISSING
    metric: str = MISSING                # one of autoft.names.METRIC_NAMES: the search objective and the OOD columns
    id_test_metrics: Optional[List[str]] = None  # null (= [metric]) or metric names: the tables' ID columns
    higher_is_better: bool = True
    passes_per_epoch: int = 1            # >= 1: passes over the images in one final-run epoch (the reference's
                                         # caption files hold this many rows per image)


@dataclass
class ModelConf:
    # exactly one source: arch (+ pretrained), custom, or checkpoint
    name: str = MISSING                  # the model's name in results, tables and output paths
    arch: Optional[str] = None           # an open_clip registry name, e.g. ViT-B-16
    pretrained: Optional[str] = None     # an open_clip tag of arch (e.g. openai) or a weights file; needs arch
    custom: Optional[Dict[str, Any]] = None  # an open_clip CLIP config (embed_dim, vision_cfg, text_cfg)
    checkpoint: Optional[str] = None     # a file written by autoft.models.clip.save_checkpoint (must exist)
    cache_dir: Optional[str] = None      # where open_clip caches downloaded weights (null: the hub's default)
    quick_gelu: Optional[bool] = None    # null: what the pretrained tag was trained with
    for_tasks: Optional[List[str]] = None  # null, or the task builder targets this model may be used with
    build_command: Optional[str] = None  # how to build the checkpoint (shown when it is missing)
    build: Optional[Dict[str, Any]] = None  # settings of build_command (scripts/build_foundation.py)


@dataclass
class LoggerConf:
    wandb: bool = False                  # true: one W&B run per trial and per final run
    project: str = "autoft"
    entity: Optional[str] = None
    mode: str = "auto"                   # one of autoft.names.WANDB_MODES
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None            # parent of the wandb/ folder; null: the run's output directory
    log_every_n_steps: int = 10          # >= 1: train/loss and train/lr every so many optimiser steps
    init_timeout: float = 30.0           # > 0: seconds an online start may take before falling back to offline
    upload_checkpoint: bool = False      # false: the final run's model.pt is a reference to the local file


@dataclass
class BudgetConf:
    """The pair a budget file was set for (conf/budget/<dataset>_<model>.yaml writes it)."""
    name: Optional[str] = None           # the file, e.g. iwildcam_vit_b16 (null: none chosen)
    dataset: Optional[str] = None        # the dataset.name its budgets are for (null: any)
    model: Optional[str] = None          # the model.name its budgets are for (null: any)
    calibrated: bool = True              # false: valid defaults, not tuned for the pair (each run says so)


@dataclass
class RootConf:
    budget: BudgetConf = field(default_factory=BudgetConf)
    model: ModelConf = MISSING
    dataset: DatasetConf = MISSING
    method: MethodConf = MISSING
    trainer: TrainerConf = MISSING
    logger: LoggerConf = MISSING
    search: Any = None                   # the search group (conf/search) and search.n_trials: checked by the sweeper
    phase: str = "final"                 # search | final
    seed: int = 0                        # >= 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N with N < the number of GPUs
    data_root: str = "data"
    cache_dir: str = MISSING
    hparams: Optional[str] = None        # null, or a readable best_hparams.yaml (final phase)
    weights_from: Optional[str] = None   # null, or a finished final run's directory: evaluate its weights (final phase)


# the keys a budget file sets (conf/budget/<dataset>_<model>.yaml); MISSING without one
BUDGET_KEYS = ("base_lr", "weight_decay", "clip_grad_norm", "batch_size", "inner_steps", "epochs")
GROUP_SCHEMAS = {"model": ModelConf, "dataset": DatasetConf, "method": MethodConf, "trainer": TrainerConf,
                 "logger": LoggerConf}


def register() -> None:
    """Register the schemas in Hydra's ConfigStore: `base_config` (the primary config's schema) and
    `<group>/base_<group>` (usable as `defaults: [base_<group>, _self_]` in a group's YAML)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RootConf)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)


register()
