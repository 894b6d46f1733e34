"""The one check of a composed config's values, ranges and cross-field rules, run before any work:
`validate(cfg)` raises one UserError listing every problem (`problems(cfg)`), then checks the files
the config names (`check_files`).

The budgets come from the budget file of the dataset and the model (autoft.config): a pair without
one, or a budget file chosen for another pair, is the one message (`missing_budgets_problem`,
`pairing_problem`), naming the pairs that have budgets. The hyperparameters' values
(method.loss_weights, trainer.lr_scale, trainer.weight_decay) are checked by their own type's check
(autoft.hparams.Hyperparameters.problems), which a hparams file goes through too; dataset.task by
autoft.config_task.

Torch-free, like the schema (a CUDA device alone imports torch, to count the GPUs): a bad config is
refused in a second.
"""
import logging
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from autoft.config import BUDGET_KEYS  # importing the schema registers it (base_config) for compose_config
from autoft.config_messages import composition_error, unknown_keys
from autoft.config_task import task_problems
from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.names import (IMAGE_CACHE_MODES, METRIC_NAMES, OOD_ROLE_KEYS, PHASES, PRECISIONS, SEARCHED_LOSSES,
                          TRAINABLE, WANDB_MODES)
from autoft.records import read_best_hparams, read_finished_run
from autoft.values import finite, must, plain, show

log = logging.getLogger(__name__)


class _Checker:
    def __init__(self):
        self.problems: list[str] = []

    def need(self, ok: bool, key: str, value, allowed: str) -> bool:
        if not ok:
            self.problems.append(must(key, value, allowed))
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


def device_problem(device) -> Optional[str]:
    """The one device check: auto, cpu, or a CUDA device this machine has (autoft.cli.resolve_device
    trusts it)."""
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


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # train.py's config directory
BUDGET_DIR = CONF_DIR / "budget"


def check_config_dir(config_dir) -> None:
    """A config directory of the user's (--config-dir) must be one: Hydra would only say that the
    config it should hold cannot be found."""
    if config_dir and not Path(config_dir).is_dir():
        raise UserError(f"--config-dir {config_dir}: not a directory")


def search_path(config_dir) -> list[str]:
    """The override that puts a config directory of the user's on Hydra's search path, as
    `train.py --config-dir <dir>` does: its groups' files (conf/dataset/myshift.yaml, a budget file)
    join the repository's, and theirs win on a name both have."""
    return [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []


def compose_config(overrides, config_dir=None, *, keep_hydra: bool = False) -> DictConfig:
    """The config `train.py [--config-dir <config_dir>] <overrides>` composes, for the scripts that
    plan or check train.py runs; Hydra's error as one UserError naming the key (composition_error).
    Other hydra.* overrides than the search path are left out unless `keep_hydra`: they choose
    launchers and sweepers, not the config, and a compose outside a run refuses some of them.
    Composed is not checked: `validate` (or `problems`) checks its values, as train.py does; a key
    that a config file of the user's misspells in dataset.task (no schema there) is found there."""
    from hydra import compose, initialize_config_dir

    check_config_dir(config_dir)
    mine = [o for o in overrides if keep_hydra or o.startswith("hydra.searchpath=")
            or not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[*mine, *search_path(config_dir)])
    except Exception as err:  # noqa: BLE001 (Hydra raises many kinds; each is the user's override or file)
        raise UserError(composition_error(err)) from None


def config_files(group: str, config_dir=None) -> list[Path]:
    """The config files of a group: `conf/<group>/*.yaml`, then those of the user's config directory."""
    folders = [CONF_DIR / group, *([Path(config_dir) / group] if config_dir else [])]
    return [p for folder in folders for p in sorted(folder.glob("*.yaml"))]


def config_names(group: str, config_dir=None) -> list[str]:
    """The configs of a group by name (config_files), sorted."""
    return sorted({p.stem for p in config_files(group, config_dir)})


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
        return f"trainer.optimizer={show(node)}: must be a mapping {example}"
    if node.get("_partial_") is not True:
        return f"trainer.optimizer._partial_={show(node.get('_partial_'))}: must be true (the engine passes the parameters)"
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
    device = device_problem(copy.device)
    if device:
        c.problems.append(device)
    if copy.get("weights_from") is not None:  # evaluates a finished final run: nothing to search or choose
        if copy.phase != "final":
            c.problems.append(f"weights_from={copy.weights_from}: only a final run (phase=final) evaluates a "
                              "finished run's weights; leave it out of a search")
        if copy.get("hparams"):
            c.problems.append(f"weights_from with hparams={copy.hparams}: a run that evaluates a finished run's "
                              "weights keeps that run's hyperparameters; leave out hparams")

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
    c.problems += task_problems(ds.task)

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
    """Files named by the config that every run reads: the hparams file, the finished run that
    weights_from names, and the model checkpoint."""
    if cfg.get("hparams"):  # one UserError naming the file and every bad or missing key
        read_best_hparams(cfg.hparams)
    if cfg.get("weights_from"):
        check_finished_run(cfg)
    ckpt = cfg.model.get("checkpoint")
    if ckpt and not Path(ckpt).is_file():
        hint = cfg.model.get("build_command") or "point model.checkpoint at an existing file"
        raise UserError(f"model.checkpoint={ckpt}: file not found. Build it with: {hint}")


def check_finished_run(cfg: DictConfig) -> None:
    """The run weights_from names: its results.json is this run's dataset, model, method and seed
    (autoft.records.read_finished_run, a UserError otherwise). A warning when that run's saved config
    (.hydra/config.yaml) set a dataset.task key other than the OOD roles (names.OOD_ROLE_KEYS)
    otherwise: its ID data or head may differ from this run's. Values are compared unresolved, so a
    data_root moved elsewhere is no difference."""
    read_finished_run(cfg.weights_from, dataset=cfg.dataset.name, model=cfg.model.name, method=cfg.method.name,
                      seed=int(cfg.seed))
    saved = Path(cfg.weights_from) / ".hydra" / "config.yaml"
    if saved.is_file():
        there = OmegaConf.to_container(OmegaConf.load(saved), resolve=False).get("dataset", {}).get("task", {})
        here = OmegaConf.to_container(cfg.dataset.task, resolve=False)
        differ = [f"dataset.task.{k} {there.get(k)!r} there, {here.get(k)!r} here"
                  for k in sorted(set(there) | set(here)) if k not in OOD_ROLE_KEYS and there.get(k) != here.get(k)]
        if differ:
            log.warning("weights_from=%s: %s. That run may have trained on other ID data or with another head; "
                        "these results may not be its weights evaluated on other domains", cfg.weights_from,
                        "; ".join(differ))


def validate(cfg: DictConfig) -> None:
    """Check every value, range and cross-field rule of a composed config, and the files it names;
    raise one UserError listing every problem. Runs before any data, model or study is touched."""
    found = problems(cfg)
    if found:
        if len(found) == 1:
            raise UserError(f"invalid config: {found[0]}")
        raise UserError("invalid config:\n  - " + "\n  - ".join(found))
    check_files(cfg)
