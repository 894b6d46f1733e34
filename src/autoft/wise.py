"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model (Wortsman et al.).

theta(a) = (1 - a) theta_zeroshot + a theta_finetuned for every floating-point tensor; integer
buffers (batch-norm step counters) are taken from the fine-tuned model.
"""
from __future__ import annotations

from typing import Mapping

import torch

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def interpolate(zeroshot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    if set(zeroshot) != set(finetuned):
        raise ValueError("WiSE-FT needs two state dicts of the same architecture")
    out = {}
    for k, ft in finetuned.items():
        zs = zeroshot[k]
        out[k] = torch.lerp(zs.float(), ft.float(), alpha).to(ft.dtype) if ft.is_floating_point() else ft.clone()
    return out
