"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore, and the one
function that checks values, ranges and cross-field rules before any work (`validate`).

Types and key names are checked by Hydra when the config is composed (conf/config.yaml lists
`base_config` first, so every group is merged into its schema: a misspelt key or a string for a
number stops composition; `composition_error` turns Hydra's report into one message). Ranges and
rules that span keys are checked by `validate(cfg)`, which `autoft.cli.run` (and train.py, before
its heavy imports) calls first. Every value's allowed range is written once, in the comment beside
its field below.

The budgets (trainer.base_lr, batch_size, inner_steps, epochs, ..., search.n_trials) have one home:
the budget file of a dataset and a model (conf/budget/<dataset>_<model>.yaml), which the defaults list
picks from the two choices (`dataset=iwildcam` alone: its paper backbone, vit_b16, and
iwildcam_vit_b16's budgets). The file records the pair it was set for (`budget`); a pair without one,
or a budget file chosen for another pair, is refused.

The hyperparameters' values (method.loss_weights, trainer.lr_scale, trainer.weight_decay) are
checked by their own type's check (autoft.hparams.Hyperparameters.problems), which a hparams file
goes through too.

This module imports only the standard library, OmegaConf, Hydra's ConfigStore and autoft.hparams
(itself torch-free): a bad config is refused in a second, before torch is imported.
"""
import ast
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from autoft.data.roles import roles_problem, templates_problem
from autoft.errors import UserError
from autoft.hparams import Hyperparameters, default_weights
from autoft.names import (IMAGE_CACHE_MODES, IMAGENET_TESTS, IWILDCAM_CAPTION_NAMES, METRIC_NAMES,
                          PHASES, PRECISIONS, SEARCHED_LOSSES, SHAPES_DOMAINS, TRAINABLE, WANDB_MODES)
from autoft.values import finite, plain


# ----------------------------------------------------------------------------------------------
# the schema
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# dataset.task: keys from the builder's signature, values from per-argument rules
# ----------------------------------------------------------------------------------------------
def _check_positive_int(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "an integer >= 1"


def _check_optional_positive_int(v) -> Optional[str]:
    return None if v is None or _check_positive_int(v) is None else "null or an integer >= 1"


def _check_seed(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "an integer >= 0"


def _check_probability(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0
    return None if ok else "a probability in [0, 1]"


def _check_optional_probability(v) -> Optional[str]:
    return None if v is None or _check_probability(v) is None else "null or a probability in [0, 1]"


def _check_open_fraction(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < float(v) < 1.0
    return None if ok else "a fraction in (0, 1)"


def _check_severity(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 else "an integer in 1..5"


def _one_of(valid):
    def check(v) -> Optional[str]:
        return None if v in valid else f"one of {', '.join(valid)}"
    return check


def _subset_of(valid):
    def check(v) -> Optional[str]:
        ok = isinstance(v, (list, tuple)) and all(x in valid for x in v)
        return None if ok else f"a list of {', '.join(valid)}"
    return check


# Allowed values of the task builders' arguments, by argument name (the same name means the same
# thing in every builder). Keys not listed are checked by the builder itself.
TASK_ARGUMENT_RULES = {
    "n_train": _check_positive_int, "n_val": _check_positive_int, "n_test": _check_positive_int,
    "n_ood_val": _check_positive_int, "image_size": _check_positive_int,
    "num_classes": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= 2 else "an integer >= 2",
    "ood_val_size": _check_optional_positive_int,
    "seed": _check_seed, "subset_seed": _check_seed, "split_seed": _check_seed,
    "cue": _check_probability,                     # P(background colour = the class's own) in the ID domain
    "test_cue": _check_optional_probability,       # the same in the OOD domains (null: independent)
    "id_val_fraction": _check_open_fraction, "id_test_fraction": _check_open_fraction,
    "severity": _check_severity,
    "caption_names": _one_of(IWILDCAM_CAPTION_NAMES),
    "metric": _one_of(METRIC_NAMES),
    "cifar102_train": lambda v: None if isinstance(v, bool) else "true or false",  # also test on the reference's file
}
SHAPES_TARGET = "autoft.data.shapes.shapes_task"
FOLDER_TARGET = "autoft.data.folders.folder_task"
IMAGENET_TARGET = "autoft.data.imagenet.imagenet"


@dataclass(frozen=True)
class BuilderSignature:
    params: tuple        # every named parameter
    required: tuple      # parameters without a default
    var_keyword: bool    # accepts **kwargs


def _signature_from_ast(path: str, name: str) -> Optional[BuilderSignature]:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            n_req = len(positional) - len(a.defaults)
            required = [p.arg for p in positional[:n_req]]
            required += [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
            return BuilderSignature(tuple(p.arg for p in [*positional, *a.kwonlyargs]), tuple(required),
                                    a.kwarg is not None)
    return None


@lru_cache(maxsize=None)
def builder_signature(target: str) -> BuilderSignature:
    """The parameters of a `_target_` (module.function). Read from the module's source when it is
    not imported yet (no heavy imports); otherwise, or for classes and re-exports, from
    inspect.signature."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise UserError(f"dataset.task._target_={target}: not a dotted path module.function")
    if module_name not in sys.modules:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise UserError(f"dataset.task._target_={target}: no module named {module_name}; "
                            f"it must name a task builder, e.g. {SHAPES_TARGET}")
        if spec.origin and spec.origin.endswith(".py"):
            sig = _signature_from_ast(spec.origin, attr)
            if sig is not None:
                return sig
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"dataset.task._target_={target} does not resolve ({type(err).__name__}: {err}); "
                        f"it must name a task builder, e.g. {SHAPES_TARGET}") from None
    params = inspect.signature(obj).parameters.values()
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return BuilderSignature(tuple(p.name for p in named), tuple(p.name for p in named if p.default is p.empty),
                            any(p.kind == p.VAR_KEYWORD for p in params))


def _task_problems(task) -> list[str]:
    if not isinstance(task, (dict, DictConfig)):
        return [f"dataset.task={task}: must be a mapping with _target_ (a task builder) and its arguments"]
    target = task.get("_target_")
    if not isinstance(target, str) or not target:
        return ["dataset.task._target_ is missing: name the task builder, e.g. _target_: " + SHAPES_TARGET]
    sig = builder_signature(target)
    keys = [k for k in task.keys() if not str(k).startswith("_")]
    problems = []
    unknown = [k for k in keys if k not in sig.params]
    if unknown and not sig.var_keyword:
        problems.append(f"dataset.task: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} "
                        f"for {target}; valid keys: {', '.join(sig.params)}")
    missing = [p for p in sig.required if p not in keys]
    if missing:
        problems.append(f"dataset.task: {target} needs {', '.join(missing)}; add dataset.task.{missing[0]}=...")
    for k in keys:
        rule = TASK_ARGUMENT_RULES.get(k)
        value = task.get(k)
        if rule is not None and k in sig.params:
            allowed = rule(plain(value))
            if allowed:
                problems.append(f"dataset.task.{k}={_show(value)}: must be {allowed}")
    if target == SHAPES_TARGET:
        problems += _shapes_domain_problems(task)
    if target == FOLDER_TARGET:
        problems += _folder_problems(task)
    if target == IMAGENET_TARGET and "tests" in keys:
        allowed = _subset_of(IMAGENET_TESTS)(plain(task.get("tests")))
        if allowed:
            problems.append(f"dataset.task.tests={_show(task.get('tests'))}: must be {allowed}")
    return problems


def _shapes_domain_problems(task) -> list[str]:
    problems = []
    domains = {}
    for k, default in (("id_domain", "studio"), ("ood_val_domain", "garden")):
        domains[k] = plain(task.get(k, default))
        # ood_val_domain may also be a list: a class-balanced mixture of those domains
        named = domains[k] if k == "ood_val_domain" and isinstance(domains[k], list) and domains[k] else [domains[k]]
        if any(d not in SHAPES_DOMAINS for d in named):
            also = " (or a non-empty list of them)" if k == "ood_val_domain" else ""
            problems.append(f"dataset.task.{k}={_show(domains[k])}: not a shapes domain{also}; "
                            f"valid: {', '.join(SHAPES_DOMAINS)}")
    tests = plain(task.get("test_domains", ["snow", "night", "fog", "clutter"]))
    if not isinstance(tests, list) or not tests or any(d not in SHAPES_DOMAINS for d in tests):
        problems.append(f"dataset.task.test_domains={_show(tests)}: must be a non-empty list of shapes domains; "
                        f"valid: {', '.join(SHAPES_DOMAINS)}")
    elif not problems:
        val = domains["ood_val_domain"]
        every = [domains["id_domain"], *(val if isinstance(val, list) else [val]), *tests]
        if len(set(every)) != len(every):
            problems.append(f"dataset.task: id_domain={domains['id_domain']}, ood_val_domain={domains['ood_val_domain']} "
                            f"and test_domains={_show(tests)} must all differ")
    return problems


def _folder_problems(task) -> list[str]:
    """The domain roles and the templates of a folder dataset, before any folder is listed."""
    problems = []
    roles = roles_problem(*(plain(task.get(k)) for k in ("id_domain", "ood_val_domain", "test_domains")))
    if roles:
        problems.append(roles)
    templates = templates_problem(plain(task.get("templates", "openai")))
    if templates:
        problems.append(templates)
    if not task.get("root"):
        problems.append("dataset.task.root is not set: set data_root=<folder> (or dataset.task.root)")
    return problems


# ----------------------------------------------------------------------------------------------
# validate
# ----------------------------------------------------------------------------------------------
def _show(value) -> str:
    value = plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


class _Checker:
    def __init__(self):
        self.problems: list[str] = []

    def need(self, ok: bool, key: str, value, allowed: str) -> bool:
        if not ok:
            self.problems.append(f"{key}={_show(value)}: must be {allowed}")
        return ok

    def int_at_least(self, node, key: str, prefix: str, low: int) -> None:
        v = node.get(key)
        self.need(isinstance(v, int) and not isinstance(v, bool) and v >= low, f"{prefix}.{key}", v,
                  f"an integer >= {low}")

    def positive(self, node, key: str, prefix: str) -> None:
        v = node.get(key)
        self.need(finite(v) and v > 0, f"{prefix}.{key}", v, "a finite number > 0")

    def optional_positive(self, node, key: str, prefix: str) -> None:
        v = node.get(key)
        self.need(v is None or (finite(v) and v > 0), f"{prefix}.{key}", v, "null (none) or a number > 0")

    def one_of(self, node, key: str, prefix: str, valid) -> None:
        v = node.get(key)
        self.need(v in valid, f"{prefix}.{key}", v, f"one of {', '.join(map(str, valid))}")


def _device_problem(device) -> Optional[str]:
    name = str(device)
    if name in ("auto", "cpu"):
        return None
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        return f"device={name}: must be auto, cpu, cuda or cuda:N (N < the number of GPUs)"
    import torch  # only for a CUDA device: the CPU paths stay free of the import

    if not torch.cuda.is_available():
        return f"device={name}: CUDA is not available here; use device=cpu or device=auto"
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        return f"device={name}: this machine has {n} GPU{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1}); use one of them or device=auto"
    return None


def read_hparams(path):
    """A best_hparams.yaml, checked (autoft.hparams.Hyperparameters.load): a readable YAML mapping
    whose loss weights are known terms with finite values >= 0, lr_scale > 0, weight_decay >= 0 and
    wise_alpha in [0, 1]; one UserError names the file and every bad or missing key."""
    return Hyperparameters.load(path)


def model_fit_problem(cfg) -> Optional[str]:
    """A model built for one task family (model.for_tasks: task builder targets) refuses the others:
    the embedded shapes model knows 48 words and 32-px images, and would score any real dataset
    without complaint, only meaninglessly."""
    allowed = cfg.model.get("for_tasks")
    target = cfg.dataset.task.get("_target_") if isinstance(cfg.dataset.get("task"), (dict, DictConfig)) else None
    if allowed and target not in allowed:
        return (f"model={cfg.model.name} was built for {', '.join(allowed)} only, but dataset={cfg.dataset.name} "
                f"is built by {target}; {_pair_hint(cfg.dataset.name, cfg.model.name, fits=False)}")
    return None


BUDGET_KEYS = ("base_lr", "weight_decay", "clip_grad_norm", "batch_size", "inner_steps", "epochs")
BUDGET_DIR = Path(__file__).resolve().parents[2] / "conf" / "budget"


@lru_cache(maxsize=None)
def preset_pairs(extra_dirs: tuple = ()) -> dict:
    """{budget name: (dataset, model)} of every budget file in conf/budget (and the `budget` folders
    of extra config dirs), read from their `budget` blocks; a file that extends another (its first
    default) inherits what it does not set."""
    raw = {}
    for folder in (BUDGET_DIR, *(Path(d) / "budget" for d in extra_dirs)):
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = OmegaConf.to_container(OmegaConf.load(path)) or {}
            except Exception:  # a broken preset is reported when it is composed, not here
                continue
            parents = [d for d in data.get("defaults", []) if isinstance(d, str) and d != "_self_"]
            raw[path.stem] = (data.get("budget") or {}, parents[:1])

    def pair(name: str, depth: int = 0) -> tuple:
        own, parents = raw.get(name, ({}, []))
        base = pair(parents[0], depth + 1) if parents and depth < 8 else (None, None)
        return own.get("dataset", base[0]), own.get("model", base[1])

    return {name: pair(name) for name in raw}


def budget_models(dataset: str, extra_dirs: tuple = ()) -> list[str]:
    """The models with a budget file for this dataset, smoke models (the tiny random CLIP) last."""
    pairs = preset_pairs(tuple(extra_dirs))
    return sorted({m for d, m in pairs.values() if d == dataset}, key=lambda m: (m == "tiny_vit", m))


def budget_for(dataset: str, model: str, extra_dirs: tuple = ()) -> Optional[str]:
    """The budget file of this dataset and model, or None."""
    return next((n for n, pair in preset_pairs(tuple(extra_dirs)).items() if pair == (dataset, model)), None)


def _pair_hint(dataset: str, model: str, fits: bool = True) -> str:
    """What to choose instead: the models with budgets for this dataset (and, when the model can be
    used with the dataset, the file to write for a new pair)."""
    found = " or ".join(f"dataset={dataset} model={m}" for m in budget_models(dataset))
    write = (f"write conf/budget/{dataset}_{model}.yaml (a `budget` block naming the pair, and its budgets)"
             if fits else "")
    return "; ".join(s for s in (f"choose a pair with budgets: {found}" if found else "", write) if s) \
        or "choose another model"


def missing_budgets_problem(cfg) -> Optional[str]:
    """Budgets unset (a pair without a budget file, or `~budget` on the command line): name them and
    the pairs of this dataset that have budgets."""
    t = cfg.get("trainer")
    missing = [k for k in BUDGET_KEYS if OmegaConf.is_missing(t, k)]
    if not missing:
        return None
    d, m = cfg.dataset.get("name"), cfg.model.get("name")
    exact = budget_for(d, m)
    why = (f"its budgets, conf/budget/{exact}.yaml, were left out" if exact
           else f"there is no conf/budget/{d}_{m}.yaml; {_pair_hint(d, m)}")
    return f"trainer.{', trainer.'.join(missing)}: not set for dataset={d} model={m}: {why}"


def pairing_problem(cfg) -> Optional[str]:
    """A model built for other tasks, or a budget file set for another dataset or model (typed as
    budget=<name>): one message with the pair to use instead."""
    fit = model_fit_problem(cfg)
    if fit:
        return fit
    d, m = cfg.dataset.get("name"), cfg.model.get("name")
    b = cfg.get("budget") or {}
    if all(b.get(k) in (None, have) for k, have in (("dataset", d), ("model", m))):
        return None
    exact = budget_for(d, m)
    return (f"budget={b.get('name')} sets the budgets (trainer.base_lr, batch_size, inner_steps, epochs, ..., "
            f"search.n_trials) for dataset={b.get('dataset')} model={b.get('model')}, not for dataset={d} model={m}; "
            + (f"leave budget= out: this pair's own, {exact}, is chosen by itself" if exact else _pair_hint(d, m)))


def optimizer_problem(node) -> Optional[str]:
    """trainer.optimizer must be a partial of an optimiser class; lr and weight_decay are the
    schedule's (trainer.base_lr x lr_scale, trainer.weight_decay), so they may not be fixed here."""
    example = "{_target_: torch.optim.AdamW, _partial_: true}"
    if not isinstance(node, (dict, DictConfig)) or not isinstance(node.get("_target_"), str):
        return f"trainer.optimizer={_show(node)}: must be a mapping {example}"
    if node.get("_partial_") is not True:
        return f"trainer.optimizer._partial_={_show(node.get('_partial_'))}: must be true (the engine passes the parameters)"
    fixed = [k for k in ("lr", "weight_decay", "params") if k in node]
    if fixed:
        return (f"trainer.optimizer.{fixed[0]}: set by the schedule, not here; use trainer.base_lr / trainer.lr_scale / "
                f"trainer.weight_decay")
    return None


def problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed config, as `key=value: must be ...` lines (empty: valid)."""
    c = _Checker()
    try:
        copy = OmegaConf.create(plain(cfg))
    except Exception as err:
        return [f"the config does not resolve: {' '.join(str(err).split())}"]
    for group in ("model", "dataset", "method", "trainer", "logger"):
        if not isinstance(copy.get(group), DictConfig):
            c.problems.append(f"{group}: missing; choose one with {group}=<name>")
    if c.problems:
        return c.problems
    # the budgets come from the budget file of this dataset and model: without one, or with another
    # pair's, every number below would be wrong, so this is the one message (a model that cannot
    # serve this dataset at all is said first: no budget file would help)
    pairing = model_fit_problem(copy) or missing_budgets_problem(cfg) or pairing_problem(copy)
    if pairing:
        return [pairing]
    # keys added with +key=value bypass Hydra's schema check: refuse them here
    c.problems += unknown_keys(copy)
    c.need(copy.phase in PHASES, "phase", copy.phase, "search or final")
    c.need(isinstance(copy.seed, int) and not isinstance(copy.seed, bool) and copy.seed >= 0, "seed", copy.seed,
           "an integer >= 0")
    device = _device_problem(copy.device)
    if device:
        c.problems.append(device)

    t, ds, m, mo, lg = copy.trainer, copy.dataset, copy.method, copy.model, copy.logger
    # trainer
    for k in ("batch_size", "eval_batch_size", "inner_steps", "accum_steps"):
        c.int_at_least(t, k, "trainer", 1)
    final_trains = copy.phase == "final" and bool(m.get("train", True))
    c.int_at_least(t, "epochs", "trainer", 1 if final_trains else 0)
    c.int_at_least(t, "num_workers", "trainer", 0)
    c.positive(t, "base_lr", "trainer")
    c.positive(t, "max_loss", "trainer")
    wf = t.get("warmup_fraction")
    c.need(finite(wf) and 0 <= wf < 1, "trainer.warmup_fraction", wf, "a number in [0, 1)")
    c.optional_positive(t, "clip_grad_norm", "trainer")
    c.one_of(t, "precision", "trainer", PRECISIONS)
    c.need(t.get("channels_last") in ("auto", True, False), "trainer.channels_last", t.get("channels_last"),
           "auto, true or false")
    c.one_of(t, "image_cache", "trainer", IMAGE_CACHE_MODES)
    opt = optimizer_problem(t.get("optimizer"))
    if opt:
        c.problems.append(opt)
    b, a = t.get("batch_size"), t.get("accum_steps")
    if isinstance(b, int) and isinstance(a, int) and b >= 1 and a >= 1 and b % a:
        c.problems.append(f"trainer.accum_steps={a}: must divide trainer.batch_size={b} "
                          f"(micro-batches of equal size); e.g. trainer.accum_steps={max(d for d in range(1, a + 1) if b % d == 0)}")

    s = copy.get("search")
    if isinstance(s, DictConfig):  # the search group's keys (conf/search/autoft.yaml), those it sets
        _search_problems(c, s)

    # dataset
    c.one_of(ds, "metric", "dataset", METRIC_NAMES)
    idm = ds.get("id_test_metrics")
    c.need(idm is None or (len(idm) > 0 and all(x in METRIC_NAMES for x in idm)), "dataset.id_test_metrics", idm,
           f"null or a non-empty list of {', '.join(METRIC_NAMES)}")
    c.int_at_least(ds, "passes_per_epoch", "dataset", 1)
    c.problems += _task_problems(ds.task)

    # method.loss_weights, trainer.lr_scale, trainer.weight_decay: the hyperparameters' own check
    # (trainer.base_lr, their record of the base lr, is the trainer's: checked above)
    c.problems += replace(Hyperparameters.from_config(copy), base_lr=None).problems(config_keys=True)
    # method
    c.one_of(m, "trainable", "method", TRAINABLE)
    c.positive(m, "lr_mult", "method")
    c.positive(m, "lp_lr_mult", "method")
    c.int_at_least(m, "lp_epochs", "method", 0)
    sl = m.get("search_losses")
    c.need(sl is None or all(x in SEARCHED_LOSSES for x in sl), "method.search_losses", sl,
           f"null or a list of {', '.join(SEARCHED_LOSSES)}")

    # model: exactly one source
    sources = [k for k in ("arch", "custom", "checkpoint") if mo.get(k)]
    if len(sources) != 1:
        c.problems.append(f"model={mo.get('name')}: set exactly one of model.arch (open_clip name), model.custom "
                          f"(open_clip config) or model.checkpoint (a file); set: {', '.join(sources) or 'none'}")
    if mo.get("pretrained") and not mo.get("arch"):
        c.problems.append(f"model.pretrained={mo.pretrained}: needs model.arch (the open_clip name it belongs to)")

    # logger
    c.one_of(lg, "mode", "logger", WANDB_MODES)
    if lg.get("wandb"):
        if not (isinstance(lg.get("log_every_n_steps"), int) and lg.log_every_n_steps >= 1):
            c.problems.append(f"logger.log_every_n_steps={lg.get('log_every_n_steps')}: must be an integer >= 1")
        if not (isinstance(lg.get("init_timeout"), (int, float)) and lg.init_timeout > 0):
            c.problems.append(f"logger.init_timeout={lg.get('init_timeout')}: must be a number of seconds > 0")
    return c.problems


def _search_problems(c: "_Checker", s: DictConfig) -> None:
    """The search's budget and a trial's settings (autoft.cli.run_spec reads them as they are)."""
    if "n_trials" in s:  # the search's budget (hydra.sweeper.n_trials reads it)
        c.int_at_least(s, "n_trials", "search", 1)
    if "seeds_per_trial" in s:  # inner runs per trial
        c.int_at_least(s, "seeds_per_trial", "search", 1)
    for k in ("pool_seed", "eval_every", "bootstrap"):  # eval_every, bootstrap: null or 0 is off
        v = s.get(k)
        if k in s and not (k != "pool_seed" and v is None):
            c.int_at_least(s, k, "search", 0)
    if "regenerate_head" in s:  # a trial's score: trained or rebuilt zero-shot head
        c.need(isinstance(s.regenerate_head, bool), "search.regenerate_head", s.regenerate_head, "true or false")
    a = s.get("wise_alphas")
    ok = a is None or (isinstance(a, ListConfig) and len(a) > 0 and all(finite(x) and 0 <= x <= 1 for x in a)
                       and len({float(x) for x in a}) == len(a))
    c.need(ok, "search.wise_alphas", a, "null or a non-empty list of distinct numbers in [0, 1], e.g. [0.25,0.5,0.75,1.0]")


def check_files(cfg: DictConfig) -> None:
    """Files named by the config that every run reads: the hparams file and the model checkpoint."""
    if cfg.get("hparams"):
        read_hparams(cfg.hparams)
    ckpt = cfg.model.get("checkpoint")
    if ckpt and not Path(ckpt).is_file():
        hint = cfg.model.get("build_command") or "point model.checkpoint at an existing file"
        raise UserError(f"model.checkpoint={ckpt}: file not found. Build it with: {hint}")


def validate(cfg: DictConfig) -> None:
    """Check every value, range and cross-field rule of a composed config, and the files it names;
    raise one UserError listing every problem. Runs before any data, model or study is touched."""
    found = problems(cfg)
    if found:
        if len(found) == 1:
            raise UserError(f"invalid config: {found[0]}")
        raise UserError("invalid config:\n  - " + "\n  - ".join(found))
    check_files(cfg)


# ----------------------------------------------------------------------------------------------
# command-line keys (train.py): a misspelt key is named with the valid ones before Hydra composes
# ----------------------------------------------------------------------------------------------


def _schema_keys(path: list[str]) -> Optional[tuple[str, tuple]]:
    """(where, valid keys) for the node a key path lands in, or None when that node is free-form."""
    schema, where = RootConf, ""
    for part in path[:-1]:
        sub = {f.name: f for f in fields(schema)}.get(part)
        if sub is None:
            return None
        if not is_dataclass(sub.type):
            return None  # a free-form node (dataset.task, model.build, search, ...)
        schema, where = sub.type, f"{where}.{part}" if where else part
    return where, tuple(f.name for f in fields(schema))


def unknown_keys(cfg) -> list[str]:
    """`unknown key ...; valid keys of <node>: ...` for every key of a schema node that its
    dataclass does not declare (free-form nodes such as dataset.task and search are skipped)."""
    found = []

    def walk(node, schema, where: str) -> None:
        declared = {f.name: f for f in fields(schema)}
        extra = [k for k in node.keys() if k not in declared]
        if extra:
            found.append(f"unknown config key{'s' if len(extra) > 1 else ''} "
                         f"{', '.join((where + '.' if where else '') + str(k) for k in extra)}; "
                         f"valid keys of {where or 'the root config'}: {', '.join(declared)}")
        for k, f in declared.items():
            if is_dataclass(f.type) and isinstance(node.get(k), (dict, DictConfig)):
                walk(node.get(k), f.type, f"{where}.{k}" if where else k)

    walk(cfg, RootConf, "")
    return found


def unknown_override(args: list[str]) -> Optional[str]:
    """The message for the first command-line override (key=value, +key=value) whose key is not in
    the schema, or None. Group choices (model=...), hydra.* and free-form nodes are left to Hydra."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "@" in key or not re.fullmatch(r"[A-Za-z_][\w.]*", key) or "." not in key:
            continue
        path = key.split(".")
        if path[0] == "hydra":
            continue
        found = _schema_keys(path)
        if found is None:
            continue
        where, valid = found
        if path[-1] not in valid:
            close = [v for v in valid if _similar(v, path[-1])]
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            return f"unknown config key {key}{hint}; valid keys of {where}: {', '.join(valid)}"
    return None


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


# ----------------------------------------------------------------------------------------------
# composition errors: a misspelt key or a wrong type in a YAML file or on the command line
# ----------------------------------------------------------------------------------------------
def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _schema_field(path: list[str]):
    """The dataclass field a key path names, or None (free-form nodes, unknown keys)."""
    schema, found = RootConf, None
    for part in path:
        if schema is None:
            return None
        found = {f.name: f for f in fields(schema)}.get(part)
        if found is None:
            return None
        schema = found.type if is_dataclass(found.type) else None
    return found


def expected_type(tp) -> str:
    """A field's type in words: 'an integer', 'null or a number', 'true or false', ..."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return "null or " + expected_type(args[0])
    origin = typing.get_origin(tp) or tp
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list [a, b, ...]",
             dict: "a mapping {key: value, ...}"}
    return words.get(origin, getattr(origin, "__name__", str(origin)))


def _source(err: BaseException) -> str:
    """Where Hydra met the problem: ' in <group>/<option>.yaml' or ' on the command line'."""
    first = str(err).splitlines()[0] if str(err) else ""
    m = re.match(r"In '([^']+)'", first)
    if m and m.group(1) != "config":
        return f" in {m.group(1)}.yaml"
    if m:
        return " in config.yaml"
    return " on the command line" if first.startswith(("Error merging override", "Could not override")) else ""


def composition_error(err: BaseException) -> str:
    """One line for an error raised while Hydra composes the config: the key, its value and the
    expected type, or the valid keys of the node; a YAML file that does not parse is named with the
    line; a missing group option with the available ones."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    where = _source(err)
    for e in _causes(err):
        key = getattr(e, "full_key", None)
        if key and isinstance(e, ValidationError):
            f = _schema_field(str(key).split("."))
            allowed = expected_type(f.type) if f is not None else "of the schema's type"
            return f"{key}={_show(getattr(e, 'value', None))}{where}: must be {allowed}"
        if key and isinstance(e, (ConfigKeyError, AttributeError)):
            path = str(key).split(".")
            found = _schema_keys(path)
            if found is None:
                node = ".".join(path[:-1])
                return (f"{key}{where}: {node or 'the root config'} has no key {path[-1]}; to add one to this free-form "
                        f"node write +{key}=<value>")
            node, valid = found
            close = [v for v in valid if _similar(v, path[-1])]
            hint = f" (did you mean {node}.{close[0]}?)" if close else ""
            return f"unknown config key {key}{where}{hint}; valid keys of {node or 'the root config'}: {', '.join(valid)}"
        if type(e).__module__.startswith("yaml"):
            mark = getattr(e, "problem_mark", None)
            at = f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            return f"{at}: not valid YAML ({getattr(e, 'problem', None) or ' '.join(str(e).split())}); fix the file"
        if type(e).__name__ == "MissingConfigException":
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            options = [ln for ln in lines[2:] if not ln.startswith(("provider=", "Config search path", "base_"))]
            first = re.sub(r"^In '[^']+': ", "", lines[0])
            return f"{first}; available: {', '.join(options)}" if options else first
    return " ".join(str(err).split())


register()
