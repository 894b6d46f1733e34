"""The two phases of AutoFT on plain arguments (train.py converts the Hydra config into these).

- `run_trial` (a `RunSpec`): one search trial, an inner run per seed (`search_trial`: reset the
  working model to theta0, fine-tune for the inner budget on the cached ID pool with the trial's
  objective, score the cached OOD-val subset, and with `wise_alphas` each WiSE-FT mixture of it),
  scored by the seeds' mean.
- `run_final` (the same `RunSpec`): fine-tune for whole epochs on ID train, keep the epoch with the best
  ID-val objective, evaluate ID test and every OOD test at the spec's WiSE-FT alpha (1: the
  fine-tuned model), and the WiSE-FT curve.

autoft.cli builds the spec from the config in one place (`run_spec`), and the spec builds every
run's FinetuneSettings (`settings`).

A `Workspace` holds what is built once per process and reused by every trial in it: the task, the
model with its zero-shot head, theta0 (one separate copy, also used to reset the model between
trials: no deep copies), and the image tensors read once (the search's pool and OOD-val subset). Every
split's images come from its image cache where the policy allows one (autoft.data.image_cache), else
are decoded live; `image_sources` records which, per split, for results.json and trial.json.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from autoft.data.base import Split, Task, project_logits
from torch.utils.data import DistributedSampler

from autoft.data.loading import Normalizer, TensorBatches, image_view, loader, read_all
from autoft.data.image_cache import CachePolicy
from autoft.distributed import SINGLE, DistEnv
from autoft.errors import UserError
from autoft.engine import ADAMW, Finetuner, FinetuneSettings, OptimizerFactory
from autoft.evaluation import batch_features, linear_logits, predict, split_metrics, tensor_batches
from autoft.io import atomic_torch_save
from autoft.losses import AutoFTObjective
from autoft.metrics import bootstrap_interval
from autoft.models.classifier import CLIPClassifier, trainable_parameters, zeroshot_weights
from autoft.models.clip import ClipBundle
from autoft.models.torch_files import read_torch_file, why_unreadable
from autoft.records import MODEL_FILE, RESULTS_FILE, read_results, weights_dir
from autoft.wise import ALPHAS, interpolate

log = logging.getLogger(__name__)

# Splits up to this many bytes of uint8 images are decoded once and kept in memory; larger ones
# (iWildCam or ImageNet train at 224 px) stream through DataLoader workers.
IN_MEMORY_BYTES = 2 * 1024**3


@dataclass
class Workspace:
    task: Task
    bundle: ClipBundle
    classifier: CLIPClassifier
    theta0: dict[str, torch.Tensor]  # separate copy of the zero-shot classifier's weights
    normalizer: Normalizer
    device: torch.device
    caption_tokens: torch.Tensor  # [classes, templates, context]
    num_workers: int = 0
    eval_batch_size: int = 512
    precision: str = "fp32"  # training only: evaluation always runs in fp32
    tensors: dict = field(default_factory=dict)  # decoded splits, by key
    # what runs forward passes: the classifier itself, or its torch.compile'd wrapper (which shares
    # its parameters, so the in-place reset to theta0 never invalidates the compiled graph)
    net: Optional[torch.nn.Module] = None
    image_cache: Optional[CachePolicy] = None  # trainer.image_cache; None: live images
    image_sources: dict = field(default_factory=dict)  # split (subsets: 'train[n]') -> 'cache' | 'live'
    zero_shot: Optional[dict] = None  # evaluate_all at theta0, once per process (zero_shot_metrics)

    def __post_init__(self):
        if self.net is None:
            self.net = self.classifier

    @classmethod
    def build(cls, task: Task, bundle: ClipBundle, device: torch.device, num_workers: int = 0,
              eval_batch_size: int = 512, precision: str = "fp32", compile: bool = False,
              channels_last: bool = False, image_cache: Optional[CachePolicy] = None) -> "Workspace":
        clip = bundle.model.to(device)
        clip.eval()
        head = zeroshot_weights(clip, bundle.tokenizer, [task.prompts(c) for c in task.classnames], device)
        classifier = CLIPClassifier(clip, head).to(device)
        if channels_last:  # faster convolutions on GPUs for conv backbones
            classifier = classifier.to(memory_format=torch.channels_last)
        theta0 = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        captions = torch.stack([bundle.tokenizer(task.prompts(c)) for c in task.caption_classnames])
        return cls(task, bundle, classifier, theta0, Normalizer(bundle.mean, bundle.std, device, channels_last), device,
                   captions, num_workers, eval_batch_size, precision,
                   net=torch.compile(classifier) if compile else classifier, image_cache=image_cache)

    def reset(self) -> None:
        """Put the working model back to theta0 (in place: parameters keep their identity)."""
        self.classifier.load_state_dict(self.theta0)

    def view(self, split: Split, indices: Optional[np.ndarray] = None):
        """(a subset of) a split's (uint8 image, label) pairs: cached or live (recorded in image_sources)."""
        view, source = image_view(split, self.bundle.image_size, indices, self.image_cache)
        self.image_sources[split.name if indices is None else f"{split.name}[{len(indices)}]"] = source
        return view

    def split_tensors(self, split: Split, indices: Optional[np.ndarray] = None):
        key = (split.name, None if indices is None else tuple(int(i) for i in indices))
        if key not in self.tensors:
            images, labels = read_all(self.view(split, indices), self.num_workers, desc=f"decoding {split.name}")
            fits = images.numel() < IN_MEMORY_BYTES // 4 and self.device.type == "cuda"
            self.tensors[key] = (images.to(self.device) if fits else images, labels)
        return self.tensors[key]

    def fits_in_memory(self, n: int) -> bool:
        return n * 3 * self.bundle.image_size ** 2 <= IN_MEMORY_BYTES

    def objective(self, weights: dict, trainable: str) -> tuple[list[torch.nn.Parameter], AutoFTObjective]:
        params = trainable_parameters(self.classifier, trainable)
        ids = {id(p) for p in params}
        theta0 = [self.theta0[name] for name, p in self.classifier.named_parameters() if id(p) in ids]
        return params, AutoFTObjective(weights, params, theta0)

    def eval_batches(self, split: Split, indices: Optional[np.ndarray] = None):
        """(a subset of) a split's images in evaluation batches: decoded tensors when they fit, else a loader."""
        n = len(split) if indices is None else len(indices)
        if self.fits_in_memory(n):
            images, _ = self.split_tensors(split, indices)
            return tensor_batches(images, self.eval_batch_size)
        return loader(split, self.bundle.image_size, self.eval_batch_size, num_workers=self.num_workers,
                      view=self.view(split, indices))

    def logits(self, split: Split, indices: Optional[np.ndarray] = None) -> torch.Tensor:
        return predict(self.net, self.eval_batches(split, indices), self.normalizer, self.device)  # fp32 (see predict)

    def evaluate(self, split: Split, indices: Optional[np.ndarray] = None) -> dict[str, float]:
        return split_metrics(self.logits(split, indices), split, indices)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pool_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The ID examples the inner runs train on: a fixed seeded subset, decoded once per study."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: min(n, size)])


def search_trial(ws: Workspace, weights: dict, settings: FinetuneSettings, trainable: str,
                 pool_indices: np.ndarray, batch_size: int, eval_every: int = 0,
                 report: Optional[Callable[[int, float], None]] = None,
                 progress: Optional[Callable[[int, int], None]] = None, wise_alphas: Sequence[float] = (),
                 regenerate_head: bool = False, on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """One inner run. `report(step, objective)` is called every `eval_every` steps (pruning);
    `progress(step, total)` after every step (the sweeper's worker log tells slow from stuck);
    `on_step(step, info)` too, with the engine's step record (loggers).

    With `wise_alphas`, OOD-val is scored at theta(a) for each a instead of once (one pass per a):
    `wise` maps each a to its metrics and predictions, and the run's objective is its best a's.
    With `regenerate_head`, every score (reports, mixtures, the objective) is that of the scored
    weights with their head replaced by the zero-shot head of their own text tower
    (`with_zeroshot_head`); training never sees the rebuilt head."""
    task = ws.task
    t0 = time.perf_counter()
    ws.reset()
    params, objective = ws.objective(weights, trainable)
    images, labels = ws.split_tensors(task.train, pool_indices)
    batches = iter(TensorBatches(images, labels, batch_size, seed=settings.seed))
    tuner = Finetuner(ws.net, params, objective, ws.normalizer, settings, ws.device, ws.caption_tokens)

    def score() -> dict:  # OOD-val at the working model's current weights
        def ood_val() -> dict:
            return ood_val_scores(ws, ws.logits(task.ood_val))
        return with_zeroshot_head(ws, ood_val) if regenerate_head else ood_val()

    def step_done(step: int, info: dict) -> None:
        if on_step is not None:
            on_step(step, info)
        if progress is not None:
            progress(step, settings.steps)
        if report is not None and eval_every and step % eval_every == 0 and step < settings.steps:
            report(step, score()["metrics"][task.metric])
            tuner.train_mode()

    history = tuner.run(batches, settings.steps, step_done)
    if wise_alphas:
        wise = dict(zip((float(a) for a in wise_alphas), at_mixtures(ws, wise_alphas, score)))
        alpha = best_alpha({a: w["metrics"][task.metric] for a, w in wise.items()}, task.higher_is_better)
        chosen = wise[alpha]
    else:
        wise, alpha, chosen = None, 1.0, score()
    # what the optimiser really used, so tests and users can check the sampled values arrived
    out = {"objective": chosen["metrics"][task.metric], "ood_val": chosen["metrics"], "final_loss": history[-1]["loss"],
           "ood_val_pred": chosen["pred"],
           "peak_lr": max(h["lr"] for h in history), "weight_decay": tuner.optimizer.param_groups[0]["weight_decay"],
           "loss_terms": {k: v for k, v in history[-1].items() if k not in ("step", "loss", "lr", "grad_norm")},
           "seconds": time.perf_counter() - t0}
    if wise is not None:
        out.update(wise_alpha=alpha, wise=wise)
    return out


def ood_val_scores(ws: Workspace, logits: torch.Tensor) -> dict:
    """OOD-val metrics and the class predictions behind them (the bootstrap resamples these)."""
    split = ws.task.ood_val
    return {"metrics": split_metrics(logits, split), "pred": project_logits(logits, split.class_map).argmax(dim=1)}


def best_alpha(scores: dict[float, float], higher_is_better: bool = True) -> float:
    """The a with the best score; a tie goes to the a listed first."""
    sign = 1.0 if higher_is_better else -1.0
    return max(scores, key=lambda a: sign * scores[a])


@dataclass(frozen=True)
class RunSpec:
    """Everything a run depends on beside the workspace (and a final run's output directory): one
    spec for a search trial (`run_trial`) and a final run (`run_final`). autoft.cli builds it from the
    config in one place (`run_spec`); `settings` builds every run's FinetuneSettings. The values
    arrive checked (autoft.config_checks.validate)."""
    weights: dict                        # loss term -> weight (autoft.names.LOSS_NAMES)
    lr: float                            # peak lr (trainer.base_lr x the hyperparameters' scale x lr_mult)
    weight_decay: float
    batch_size: int
    trainable: str = "all"               # all | head
    seed: int = 0                        # a final run's seed; a trial's inner runs use seed, seed + 1, ...
    warmup_fraction: float = 0.1
    clip_grad_norm: Optional[float] = None
    accum_steps: int = 1
    max_loss: float = 1e4
    optimizer: OptimizerFactory = field(default=ADAMW, compare=False)  # trainer.optimizer (engine.optimizer_factory)
    # a search trial
    steps: int = 0                       # optimiser steps of each inner run (trainer.inner_steps)
    seeds_per_trial: int = 1             # inner runs per trial, scored by their mean
    pool_seed: int = 0                   # seed of the fixed ID subset the inner runs train on
    eval_every: int = 0                  # > 0: report OOD-val every so many steps (pruning)
    bootstrap: int = 1000                # resamples of the OOD-val interval (0: none)
    wise_alphas: tuple = ()              # score theta(a) for each a too; the objective is the best a's
    regenerate_head: bool = False        # score with the tuned text tower's zero-shot head (reference --regenerate_head)
    # a final run
    epochs: int = 0                      # epochs of the fine-tuning stage (after the LP stage, if any)
    train: bool = True                   # false: evaluate the zero-shot model as it is
    lp_epochs: int = 0                   # LP-FT: head-only epochs first, at lp_lr
    lp_lr: Optional[float] = None
    refresh_head: bool = False           # FLYP: rebuild the zero-shot head before each evaluation
    passes_per_epoch: int = 1
    wise_alpha: float = 1.0              # the final model: theta(a) of the selected epoch (1: as fine-tuned)
    curve_alphas: tuple = tuple(ALPHAS)  # the WiSE-FT curve's mixing weights (empty: none)

    @property
    def seeds(self) -> tuple:
        """The seeds of a trial's inner runs."""
        return tuple(self.seed + i for i in range(self.seeds_per_trial))

    def settings(self, precision: str, *, steps: Optional[int] = None, seed: Optional[int] = None,
                 lr: Optional[float] = None) -> FinetuneSettings:
        """The settings of one run: a trial's inner run (`steps` steps, at its `seed`), or a final
        run's stage of `steps` steps (fine-tuning, or the LP stage at its own `lr`)."""
        return FinetuneSettings.for_run(self.steps if steps is None else steps, self.lr if lr is None else lr,
                                        self.weight_decay, self.warmup_fraction, self.clip_grad_norm,
                                        self.accum_steps, precision, self.max_loss,
                                        self.seed if seed is None else seed, self.optimizer)


def run_trial(ws: Workspace, spec: RunSpec, report: Optional[Callable[[int, float], None]] = None,
              progress: Optional[Callable[[int, int], None]] = None,
              on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """One trial: an inner run per seed, scored by the mean of their OOD-val scores, with a bootstrap
    interval over the OOD-val examples.

    With `spec.wise_alphas` the objective is max_a mean_seeds score(theta_seed(a)), and `wise_alpha`
    is the a that reached it (`wise` holds every a's mean). Intermediate reports (pruning) come from
    the first seed's run only, and so do `on_step` calls. Returns the trial record (trial.json) and
    `objective`."""
    task = ws.task
    pool = pool_indices(len(task.train), spec.steps * spec.batch_size, spec.pool_seed)
    runs = []
    for i, seed in enumerate(spec.seeds):
        settings = spec.settings(ws.precision, seed=seed)
        seed_everything(settings.seed)
        runs.append(search_trial(ws, spec.weights, settings, spec.trainable, pool, spec.batch_size,
                                 eval_every=spec.eval_every, report=report if i == 0 else None, progress=progress,
                                 wise_alphas=spec.wise_alphas, regenerate_head=spec.regenerate_head,
                                 on_step=on_step if i == 0 else None))
    record: dict = {"metric": task.metric, "seeds": list(spec.seeds), "regenerate_head": spec.regenerate_head}
    if spec.wise_alphas:
        means = {a: float(np.mean([r["wise"][a]["metrics"][task.metric] for r in runs])) for a in spec.wise_alphas}
        alpha = best_alpha(means, task.higher_is_better)
        chosen = [r["wise"][alpha] for r in runs]
        record.update(wise_alpha=alpha, wise={f"{a:g}": v for a, v in means.items()})
    else:
        chosen = [{"metrics": r["ood_val"], "pred": r["ood_val_pred"]} for r in runs]
    per_seed = [c["metrics"][task.metric] for c in chosen]
    record.update(objective=float(np.mean(per_seed)), per_seed=per_seed)
    if spec.bootstrap:
        split = task.ood_val
        groups = torch.as_tensor(split.groups, dtype=torch.long) if split.groups is not None else None
        record["ci"] = list(bootstrap_interval(task.metric, [c["pred"] for c in chosen],
                                               torch.as_tensor(split.labels, dtype=torch.long), groups, spec.bootstrap))
    record["runs"] = [_plain_run(r) for r in runs]
    return record


def _plain_run(run: dict) -> dict:
    """An inner run's record without its prediction tensors (trial.json holds numbers only)."""
    out = {k: v for k, v in run.items() if k not in ("ood_val_pred", "wise")}
    if "wise" in run:
        out["wise"] = {f"{a:g}": w["metrics"] for a, w in run["wise"].items()}
    return out


def eval_splits(task: Task) -> dict[str, Split]:
    """The splits a final run reports, in the order its results hold them: id_val, ood_val, the tests."""
    return {"id_val": task.id_val, "ood_val": task.ood_val, **task.tests}


def evaluate_all(ws: Workspace) -> dict[str, dict[str, float]]:
    return {name: ws.evaluate(split) for name, split in eval_splits(ws.task).items()}


class EpochSource:
    """The final run's training batches, epoch by epoch: in-memory tensors when the split fits,
    else DataLoader workers; sharded across ranks; epoch e's order depends only on (seed, e).

    An epoch is `passes` shuffled passes over the images: the reference's epochs run over caption
    files that hold one row per image and prompt template (iWildCam 2, FMoW 16; docs/fidelity.md),
    and `passes` reproduces their length, their schedule and where epochs are selected."""

    def __init__(self, ws: Workspace, split: Split, batch_size: int, seed: int, dist_env: DistEnv = SINGLE,
                 passes: int = 1):
        self.passes = passes
        self.steps = len(split) // batch_size * passes
        if self.steps < 1:
            raise UserError(f"{split.name}: {len(split)} examples cannot fill trainer.batch_size={batch_size}")
        if batch_size % dist_env.world_size:
            raise UserError(f"trainer.batch_size={batch_size} must be divisible by the {dist_env.world_size} processes")
        self.tensors = None
        if ws.fits_in_memory(len(split)):
            images, labels = ws.split_tensors(split)
            self.tensors = TensorBatches(images, labels, batch_size, seed, dist_env.rank, dist_env.world_size)
        else:
            view = ws.view(split)
            self.sampler = DistributedSampler(view, dist_env.world_size, dist_env.rank, shuffle=True, seed=seed,
                                              drop_last=True)
            self.loader = loader(split, ws.bundle.image_size, batch_size // dist_env.world_size,
                                 num_workers=ws.num_workers, drop_last=True, sampler=self.sampler, view=view)

    def epoch(self, e: int) -> Iterator:
        for k in range(e * self.passes, (e + 1) * self.passes):  # passes=1: pass k = epoch e
            if self.tensors is not None:
                yield from self.tensors.epoch(k)
            else:
                self.sampler.set_epoch(k)
                yield from self.loader


def _settings_record(settings: FinetuneSettings) -> dict:
    """What last.pt records of the settings, to resume only a run with the same ones (the optimiser
    factory by its description: a partial compares by identity)."""
    return {**asdict(settings), "optimizer": repr(settings.optimizer)}


# what a final run's results record about its training: kept by a run that evaluates its weights again
TRAINING_RECORD = ("selected_epoch", "epochs", "images_seen", "lp_epochs")


@dataclass(frozen=True)
class FinishedRun:
    """A finished final run whose weights are evaluated again instead of training (weights_from)."""
    directory: Path
    results: dict              # its results.json (autoft.records.read_finished_run checked it is this run's)
    weights: Optional[dict]    # the weights it selected (its model.pt); None when it trained nothing

    @classmethod
    def read(cls, directory: str | Path) -> "FinishedRun":
        """Read before any work (validate checked the run: config_checks.check_finished_run); an
        unreadable model.pt is one UserError naming the file. `directory` becomes the one that holds
        the weights (records.weights_dir: a run that evaluated another's)."""
        results = read_results(Path(directory) / RESULTS_FILE)
        origin = weights_dir(directory, results)
        if not results.get("epochs"):
            return cls(origin, results, None)
        try:
            return cls(origin, results, read_torch_file(origin / MODEL_FILE))  # weights-only: no code runs
        except Exception as err:  # cut short, overwritten or carrying code
            raise UserError(f"weights_from={directory}: cannot read {origin / MODEL_FILE} ({why_unreadable(err)}); "
                            "rerun the final run that wrote it") from None


def run_final(ws: Workspace, spec: RunSpec, output_dir: Path, progress: bool = True, dist_env: DistEnv = SINGLE,
              on_epoch_end: Optional[Callable[[int, dict], None]] = None,
              on_step: Optional[Callable[[int, dict], None]] = None,
              finished: Optional[FinishedRun] = None) -> dict:
    """Fine-tune on all of ID train for `spec.epochs`, select the epoch on ID val, evaluate everything.

    After every epoch the full training state goes to `output_dir/last.pt` (rank 0, atomically); a
    rerun with the same output dir resumes from it and ends with the same weights as an uninterrupted
    run. Returns the results dict (what results.json holds); the selected weights go to model.pt.
    The stages, in order: resume from last.pt; the LP stage of LP-FT (lp_epochs > 0: the head alone
    with cross-entropy at lp_lr, then fine-tuning from there); the epochs, each followed by the FLYP
    head refresh (refresh_head) and the ID-val evaluation that selects the epoch; the evaluation of
    every split at the spec's WiSE-FT alpha (1: the fine-tuned model itself; model.pt always holds
    the fine-tuned weights, and results record `wise_alpha`); the WiSE-FT curve (an alpha on the curve,
    1 by default, is evaluated once: the curve's point is the final model's evaluation).

    `finished`: a finished final run of the same method and seed whose weights are evaluated instead
    of training again (weights_from). Training never reads OOD-val or the tests (the epoch is
    selected on ID val), so they are the weights this run would train with other OOD-val or test
    domains; the results keep that run's training record (TRAINING_RECORD).

    `on_step(step, info)` follows every fine-tuning step (step: the run's optimiser step, continued
    on resume) and `on_epoch_end(epoch, results)` every epoch, before its checkpoint: a logger that
    writes there holds every checkpointed epoch, so a resumed run continues its history."""
    ws.reset()
    t0 = time.perf_counter()
    results: dict = {"selected_epoch": 0, "epochs": []}
    if spec.train and finished is not None:
        try:
            ws.classifier.load_state_dict(finished.weights)
        except RuntimeError:  # another class set (dataset.task.classes) or another model's weights
            raise UserError(f"weights_from={finished.directory}: its {MODEL_FILE} holds another classifier's "
                            "weights; evaluate a run of this dataset, model and class set") from None
        results = {k: finished.results[k] for k in TRAINING_RECORD if k in finished.results}
    elif spec.train:
        results = _fine_tune(ws, spec, Path(output_dir), progress, dist_env, on_epoch_end, results, on_step)
    alphas = [float(a) for a in spec.curve_alphas] if spec.train else []
    curve = (head_mixtures(ws, alphas) or mixtures(ws, alphas)) if alphas else []  # theta(1) is exact (wise.py)
    if spec.wise_alpha in alphas:  # the final model is on the curve: evaluated once
        results["metrics"] = curve[alphas.index(spec.wise_alpha)]
    elif spec.train and spec.wise_alpha != 1.0:
        (results["metrics"],) = mixtures(ws, [spec.wise_alpha])
    else:
        results["metrics"] = evaluate_all(ws) if spec.train else zero_shot_metrics(ws)
    results["wise_alpha"] = float(spec.wise_alpha) if spec.train else 1.0
    if alphas:
        results["wise"] = dict(zip((f"{a:.1f}" for a in alphas), curve))
    results["seconds"] = time.perf_counter() - t0
    return results


def _fine_tune(ws: Workspace, spec: RunSpec, output_dir: Path, progress: bool, dist_env: DistEnv,
               on_epoch_end, results: dict, on_step=None) -> dict:
    task = ws.task
    torch.manual_seed(spec.seed)
    params, objective = ws.objective(spec.weights, spec.trainable)
    source = EpochSource(ws, task.train, spec.batch_size, spec.seed, dist_env, spec.passes_per_epoch)
    total = source.steps * spec.epochs
    results["images_seen"] = total * spec.batch_size
    settings = spec.settings(ws.precision, steps=total)
    tuner = Finetuner(ws.net, params, objective, ws.normalizer, settings, ws.device, ws.caption_tokens, dist_env)
    checkpoint = output_dir / "last.pt"
    best_score, best_state, first_epoch = -math.inf, None, 1
    state = _resume_state(checkpoint, settings)
    if state is not None:
        ws.classifier.load_state_dict(state["model"])
        tuner.load_state_dict(state["tuner"])
        best_score, best_state, results = state["best_score"], state["best_state"], state["results"]
        first_epoch = state["epoch"] + 1
        log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
    if spec.lp_epochs > 0 and first_epoch == 1:  # a resumed run's checkpoint already holds the probed head
        results["lp_epochs"] = linear_probe(ws, source, spec, dist_env)
        trainable_parameters(ws.classifier, spec.trainable)  # the probe froze all but the head
    sign = 1.0 if task.higher_is_better else -1.0
    bar = tqdm(total=total, initial=(first_epoch - 1) * source.steps, desc=f"fine-tuning ({spec.epochs} epochs)",
               disable=not progress or not dist_env.is_main, leave=False)
    for epoch in range(first_epoch, spec.epochs + 1):
        def step_done(s: int, info: dict) -> None:
            bar.update(1)
            if on_step is not None:
                on_step(s, info)

        hist = tuner.run(source.epoch(epoch), source.steps, step_done)
        if spec.refresh_head:
            refresh_zeroshot_head(ws)
        val = ws.evaluate(task.id_val)  # every rank evaluates the same set: same selection everywhere
        score = sign * val[task.metric]
        results["epochs"].append({"epoch": epoch, "loss": float(np.mean([h["loss"] for h in hist])), "id_val": val})
        log.info("epoch %d/%d  loss %.4f  id_val %s %.4f", epoch, spec.epochs, results["epochs"][-1]["loss"],
                 task.metric, val[task.metric])
        if score > best_score:
            best_score, results["selected_epoch"] = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in ws.classifier.state_dict().items()}
        if on_epoch_end is not None:  # before the checkpoint: never a checkpointed epoch the hook missed
            on_epoch_end(epoch, results)
        if dist_env.is_main:
            atomic_torch_save({"epoch": epoch, "settings": _settings_record(settings), "model": ws.classifier.state_dict(),
                               "tuner": tuner.state_dict(), "best_score": best_score, "best_state": best_state,
                               "results": results}, checkpoint)
    bar.close()
    ws.classifier.load_state_dict(best_state)
    if dist_env.is_main:
        atomic_torch_save(best_state, output_dir / MODEL_FILE)
        checkpoint.unlink()  # the run is complete: model.pt and results.json are its record
    return results


def _resume_state(checkpoint: Path, settings: FinetuneSettings) -> Optional[dict]:
    """The state saved in last.pt by an interrupted run with these settings, else None."""
    if not checkpoint.is_file():
        return None
    try:
        state = read_torch_file(checkpoint)  # weights-only: a last.pt from someone else cannot run code
    except Exception as err:  # cut short (a full disk), overwritten or carrying code: say which file, never guess
        raise UserError(f"cannot resume from {checkpoint} ({why_unreadable(err)}); "
                        f"delete it to restart this run from epoch 1") from None
    if not isinstance(state, dict) or state.get("settings") != _settings_record(settings):
        log.warning("ignoring %s: it belongs to a run with other settings", checkpoint)
        return None
    return state


def linear_probe(ws: Workspace, source: "EpochSource", spec: RunSpec, dist_env: DistEnv = SINGLE) -> list[dict]:
    """The LP stage of LP-FT: the head alone, cross-entropy, `spec.lp_epochs` epochs at `spec.lp_lr`
    (default the spec's lr), with its own warm-up and cosine schedule."""
    params, objective = ws.objective({"ce": 1.0}, "head")
    epochs = spec.lp_epochs
    settings = spec.settings(ws.precision, steps=source.steps * epochs, lr=spec.lp_lr or spec.lr)
    tuner = Finetuner(ws.net, params, objective, ws.normalizer, settings, ws.device, None, dist_env)
    history = []
    for epoch in range(1, epochs + 1):
        hist = tuner.run(source.epoch(epoch), source.steps)
        val = ws.evaluate(ws.task.id_val)
        history.append({"epoch": epoch, "loss": float(np.mean([h["loss"] for h in hist])), "id_val": val})
        log.info("LP epoch %d/%d  loss %.4f  id_val %s %.4f", epoch, epochs, history[-1]["loss"], ws.task.metric,
                 val[ws.task.metric])
    return history


@torch.no_grad()
def refresh_zeroshot_head(ws: Workspace) -> None:
    """The head becomes the zero-shot head of the current text tower, the one CLIPClassifier starts
    with: W = logit_scale.exp() x zeroshot_weights(current text tower), b = 0 (the reference's
    `get_zeroshot_classifier` builds a new head with a zero bias too)."""
    clip = ws.classifier.clip
    clip.eval()  # the fine-tuning loop puts the model back in train mode (BN frozen) itself
    emb = zeroshot_weights(clip, ws.bundle.tokenizer, [ws.task.prompts(c) for c in ws.task.classnames], ws.device)
    ws.classifier.head.weight.copy_(emb * clip.logit_scale.exp())
    ws.classifier.head.bias.zero_()


def with_zeroshot_head(ws: Workspace, evaluate: Callable[[], object]):
    """`evaluate()` with the head replaced by the zero-shot head of the current text tower
    (`refresh_zeroshot_head`), then the head put back: what the reference's `--regenerate_head`
    scores a trial with, without handing the rebuilt head to the training that may continue."""
    head = {k: v.detach().clone() for k, v in ws.classifier.head.state_dict().items()}
    try:
        refresh_zeroshot_head(ws)
        return evaluate()
    finally:
        ws.classifier.head.load_state_dict(head)


def head_mixtures(ws: Workspace, alphas: Sequence[float]) -> Optional[list]:
    """`at_mixtures(ws, alphas, lambda: evaluate_all(ws))` for a model whose every tensor but the head
    is still theta0 (a linear probe): theta(a) then has theta0's image tower exactly (a lerp of equal
    tensors is exact), so each split's features are computed once and each alpha is only its head,
    W(a) = lerp(W0, W, a), on them: one pass of the tower per split instead of one per alpha, the
    same numbers (eager mode). None when anything outside the head moved."""
    if any(not torch.equal(v, ws.theta0[k]) for k, v in ws.classifier.state_dict().items() if not k.startswith("head.")):
        return None
    splits = eval_splits(ws.task)
    features = {name: batch_features(ws.net, ws.eval_batches(split), ws.normalizer) for name, split in splits.items()}
    zeroshot = {k: ws.theta0[f"head.{k}"] for k in ("weight", "bias")}
    tuned = {k: v.detach() for k, v in ws.classifier.head.state_dict().items()}
    out = []
    for a in alphas:
        head = interpolate(zeroshot, tuned, float(a))
        out.append({name: split_metrics(linear_logits(f, head["weight"], head["bias"]), splits[name])
                    for name, f in features.items()})
    return out


def zero_shot_metrics(ws: Workspace) -> dict:
    """evaluate_all of the zero-shot model (theta0), once per Workspace: the zeroshot method's results
    and every fine-tuned run's WiSE-FT point at alpha 0, which the runs of one process (a multirun
    of the baselines) share; the working model is left as it was."""
    if ws.zero_shot is None:
        (ws.zero_shot,) = at_mixtures(ws, [0.0], lambda: evaluate_all(ws))
    return copy.deepcopy(ws.zero_shot)


def mixtures(ws: Workspace, alphas: Sequence[float]) -> list:
    """evaluate_all at theta(a) for each a. theta(0) is theta0 exactly (a lerp at weight 0 returns its
    start), so that point is the zero-shot evaluation (zero_shot_metrics)."""
    rest = [a for a in alphas if a != 0.0]
    points = dict(zip(rest, at_mixtures(ws, rest, lambda: evaluate_all(ws))))
    return [zero_shot_metrics(ws) if a == 0.0 else points[a] for a in alphas]


def at_mixtures(ws: Workspace, alphas: Sequence[float], evaluate: Callable[[], object]) -> list:
    """`evaluate()` with the working model at theta(a) = (1 - a) theta0 + a theta_now, for each a;
    leaves the working model at theta_now (the fine-tuned weights)."""
    finetuned = {k: v.detach().clone() for k, v in ws.classifier.state_dict().items()}
    out = []
    try:
        for a in alphas:
            ws.classifier.load_state_dict(interpolate(ws.theta0, finetuned, float(a)))
            out.append(evaluate())
    finally:
        ws.classifier.load_state_dict(finetuned)
    return out

