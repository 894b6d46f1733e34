"""One fine-tuning loop for both the search's short inner runs and the final runs.

Defects of the reference implementation this loop is written against (docs/design.md section 3): the
peak learning rate is the run's own (searched) lr, never overwritten; the warm-up is a fraction of
the run's own length, so even a 10-step trial reaches its lr; one persistent data iterator; no model
copies per trial (the caller resets one working model from theta0).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from autoft.data.loading import Normalizer
from autoft.distributed import SINGLE, DistEnv, average_gradients, feature_gatherer
from autoft.errors import TrialDiverged, UserError
from autoft.losses import AutoFTObjective
from autoft.models.classifier import CLIPClassifier, freeze_batchnorm_stats


OptimizerFactory = Callable[..., torch.optim.Optimizer]  # (params, lr=..., weight_decay=...) -> optimiser
ADAMW: OptimizerFactory = functools.partial(torch.optim.AdamW)


def optimizer_factory(node: Any) -> OptimizerFactory:
    """The optimiser partial of trainer.optimizer ({_target_: torch.optim.AdamW, _partial_: true, ...}),
    instantiated once per run; a target that does not resolve is the user's error, named."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = node.get("_target_") if hasattr(node, "get") else node
    try:
        factory = instantiate(node, _convert_="all")
    except InstantiationException as err:
        raise UserError(f"trainer.optimizer._target_={target}: cannot be built ({' '.join(str(err).split())[:200]}); "
                        "name a torch.optim optimiser, e.g. torch.optim.AdamW") from None
    if not callable(factory) or isinstance(factory, torch.optim.Optimizer):
        raise UserError(f"trainer.optimizer._target_={target}: must be an optimiser class given with _partial_: true")
    return factory


@dataclass
class FinetuneSettings:
    """One run's settings, from values the schema checked (autoft.config_checks.validate: each value once)."""
    steps: int  # optimiser steps of the whole run (sets the schedule's length)
    lr: float  # peak learning rate
    weight_decay: float
    warmup_steps: int = 0
    clip_grad_norm: Optional[float] = None
    accum_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    max_loss: float = 1e4
    seed: int = 0
    # trainer.optimizer as a factory (optimizer_factory): called with the parameters, lr, weight_decay
    optimizer: OptimizerFactory = field(default=ADAMW, compare=False)

    @classmethod
    def for_run(cls, steps: int, lr: float, weight_decay: float, warmup_fraction: float = 0.1,
                clip_grad_norm: Optional[float] = None, accum_steps: int = 1, precision: str = "fp32",
                max_loss: float = 1e4, seed: int = 0, optimizer: OptimizerFactory = ADAMW) -> "FinetuneSettings":
        """The settings of a run of `steps` steps whose warm-up is `warmup_fraction` of them (every run
        is built here: search trials, final runs and the LP stage)."""
        return cls(steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=int(round(warmup_fraction * steps)),
                   clip_grad_norm=clip_grad_norm, accum_steps=accum_steps, precision=precision,
                   max_loss=max_loss, seed=seed, optimizer=optimizer)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """lr factor for optimiser step `step` (0-based): linear warm-up to 1, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _accepts_fused(factory: OptimizerFactory) -> bool:
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device,
                   factory: OptimizerFactory = ADAMW) -> torch.optim.Optimizer:
    """The run's optimiser from its factory, with the schedule's peak lr and weight decay. The fused
    kernel (where the class has one and the config did not set `fused`) updates all parameters at
    once, on GPUs and CPUs alike: on the embedded task's CPU step, 2.4 ms against 16 ms for AdamW's
    default per-parameter loop."""
    extra = {}
    preset = factory.keywords if isinstance(factory, functools.partial) else {}
    if device.type in ("cuda", "cpu") and "fused" not in preset and _accepts_fused(factory):
        extra["fused"] = True
    return factory(params, lr=lr, weight_decay=weight_decay, **extra)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


StepCallback = Callable[[int, dict], None]


class Finetuner:
    """Owns the optimiser and schedule of one run; `run` may be called repeatedly (one call per
    epoch in final runs) and continues the same schedule."""

    def __init__(self, classifier: CLIPClassifier, params: list[nn.Parameter], objective: AutoFTObjective,
                 normalizer: Normalizer, settings: FinetuneSettings, device: torch.device,
                 caption_tokens: Optional[torch.Tensor] = None, dist_env: DistEnv = SINGLE):
        self.model, self.params, self.objective = classifier, params, objective
        self.normalize, self.settings, self.device = normalizer, settings, device
        if objective.uses_text and caption_tokens is None:
            raise ValueError("the flyp term needs caption tokens [classes, templates, context]")
        self.captions = caption_tokens.to(device) if caption_tokens is not None else None
        self.dist_env = dist_env
        self.gather = feature_gatherer(dist_env)
        self.optimizer = make_optimizer(params, settings.lr, settings.weight_decay, device, settings.optimizer)
        warmup, total = settings.warmup_steps, settings.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.step = 0
        self.generator = torch.Generator().manual_seed(settings.seed)

    def _caption_batch(self, labels: torch.Tensor) -> torch.Tensor:
        """One prompt per example: its class with a template drawn at random (seeded)."""
        n_templates = self.captions.shape[1]
        pick = torch.randint(n_templates, (len(labels),), generator=self.generator).to(self.device)
        return self.captions[labels, pick]

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        s, obj = self.settings, self.objective
        self.optimizer.zero_grad(set_to_none=True)
        labels = labels.to(self.device, non_blocking=True)
        # term values stay on the device and come back in one transfer per step (one GPU sync, not
        # one per term and micro-batch)
        parts: dict[str, torch.Tensor] = {}
        for x, y in zip(images.chunk(s.accum_steps), labels.chunk(s.accum_steps)):
            share = len(y) / len(labels)
            with autocast(self.device, s.precision):
                logits, feats = self.model(self.normalize(x))
                text = self.model.text_features(self._caption_batch(y)) if obj.uses_text else None
                terms = obj.data_terms(logits, y, feats, text, self.model.logit_scale, self.gather)
            (obj.combine(terms) * share).backward()
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v.detach() * share
        pterms = obj.param_terms()  # once per step: parameters do not change between micro-batches
        if pterms:
            obj.combine(pterms).backward()
            parts.update({k: v.detach() for k, v in pterms.items()})
        totals = dict(zip(parts, torch.stack([v.float() for v in parts.values()]).tolist()))
        loss_value = sum(obj.weights[k] * v for k, v in totals.items())
        if not math.isfinite(loss_value) or abs(loss_value) > s.max_loss:
            raise TrialDiverged(f"loss {loss_value:.4g} at step {self.step + 1} (limit trainer.max_loss={s.max_loss:g})")
        info = {"step": self.step + 1, "loss": loss_value, "lr": self.optimizer.param_groups[0]["lr"], **totals}
        average_gradients(self.params, self.dist_env)
        if s.clip_grad_norm is not None:
            info["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad_norm).item()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return info

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])

    def train_mode(self) -> None:
        self.model.train()
        freeze_batchnorm_stats(self.model)

    def run(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], n_steps: int,
            callback: Optional[StepCallback] = None) -> list[dict]:
        """`n_steps` optimiser steps; `callback(step, info)` after each (it may evaluate, or raise to stop)."""
        self.train_mode()
        history = []
        for _ in range(n_steps):
            images, labels = next(batches)
            info = self.train_step(images, labels)
            history.append(info)
            if callback is not None:
                callback(self.step, info)
        self.model.eval()
        return history
