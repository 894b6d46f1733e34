"""The nine AutoFT loss terms (autoft.names.LOSS_NAMES) and their weighted sum (docs/design.md section 3).

Data terms use the head's logits (and, for flyp, normalised image and caption features); parameter
terms compare the trainable parameters with theta0, a separate copy of their initial values (never a
view of the live tensors: the reference code's aliasing made l1init/l2init silently zero). Parameter
terms are per-parameter means (divided by N, the number of trainable elements) so that their weights
act smoothly instead of as an on/off freeze switch, and use torch._foreach_* kernels instead of a
Python loop over parameters on every step. The weights arrive checked (autoft.hparams:
Hyperparameters.problems, the one check of their values).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from autoft.errors import UserError
from autoft.names import LOSS_NAMES


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i sum_{c != y_i} relu(logit_ic - logit_iy_i + 1)."""
    margins = F.relu(logits - logits.gather(1, labels[:, None]) + 1.0)
    margins = margins.scatter(1, labels[:, None], 0.0)  # the true class is not a competitor
    return margins.sum(dim=1).mean()


def _entropies(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _entropies(logits).mean()


def dcm(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Entropy of misclassified examples, averaged over the whole batch (as the reference code)."""
    wrong = (logits.argmax(dim=1) != labels).to(logits.dtype).detach()
    return (wrong * _entropies(logits)).mean()


def flyp(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
         gather: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]]] = None
         ) -> torch.Tensor:
    """Symmetric CLIP contrastive loss between images and their captions (features L2-normalised).

    `gather` (distributed training) returns (all image features, all text features, this rank's
    offset): the local rows are scored against every rank's rows."""
    offset = 0
    all_img, all_txt = image_features, text_features
    if gather is not None:
        all_img, all_txt, offset = gather(image_features, text_features)
    scale = logit_scale.exp()
    targets = torch.arange(len(image_features), device=image_features.device) + offset
    per_image = scale * image_features @ all_txt.T
    per_text = scale * text_features @ all_img.T
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2


class AutoFTObjective:
    """sum_k w_k * loss_k, computing only the terms whose weight is non-zero."""

    def __init__(self, weights: Mapping[str, float], params: Sequence[torch.Tensor],
                 theta0: Optional[Sequence[torch.Tensor]] = None):
        self.weights = {k: float(w) for k, w in weights.items()}
        unknown = sorted(set(self.weights) - set(LOSS_NAMES))
        if unknown:  # the schema refuses these for users; a caller's typo must not drop a term silently
            raise ValueError(f"unknown loss term(s) {', '.join(unknown)}; the terms: {', '.join(LOSS_NAMES)}")
        self.active = {k: w for k, w in self.weights.items() if w != 0.0}
        if not self.active:
            raise UserError("method.loss_weights: every weight is 0, so there is nothing to train on")
        self.params = list(params)
        self.numel = sum(p.numel() for p in self.params)
        needs_theta0 = any(k in self.active for k in ("l1init", "l2init"))
        if needs_theta0:
            if theta0 is None:
                raise ValueError("l1init/l2init need theta0, a copy of the initial parameters")
            self.theta0 = list(theta0)
            for p, p0 in zip(self.params, self.theta0):
                if p.data_ptr() == p0.data_ptr():
                    raise ValueError("theta0 must be a separate copy, not a view of the live parameters")
        else:
            self.theta0 = None

    @property
    def uses_text(self) -> bool:
        return "flyp" in self.active

    def data_terms(self, logits: torch.Tensor, labels: torch.Tensor, image_features: Optional[torch.Tensor] = None,
                   text_features: Optional[torch.Tensor] = None, logit_scale: Optional[torch.Tensor] = None,
                   gather=None) -> dict[str, torch.Tensor]:
        terms = {}
        logits = logits.float()
        for name, fn in (("ce", cross_entropy), ("hinge", hinge), ("entropy", entropy), ("dcm", dcm)):
            if name in self.active:
                terms[name] = fn(logits, labels)
        if "flyp" in self.active:
            terms["flyp"] = flyp(image_features.float(), text_features.float(), logit_scale, gather)
        return terms

    def param_terms(self) -> dict[str, torch.Tensor]:
        terms = {}
        active = self.active
        if "l1init" in active or "l2init" in active:
            diffs = torch._foreach_sub(self.params, self.theta0)
            if "l1init" in active:
                terms["l1init"] = torch.stack(torch._foreach_norm(diffs, 1)).sum() / self.numel
            if "l2init" in active:
                terms["l2init"] = torch.stack(torch._foreach_norm(diffs, 2)).square().sum() / self.numel
        if "l1zero" in active:
            terms["l1zero"] = torch.stack(torch._foreach_norm(self.params, 1)).sum() / self.numel
        if "l2zero" in active:
            terms["l2zero"] = torch.stack(torch._foreach_norm(self.params, 2)).square().sum() / self.numel
        return terms

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in terms.items())
