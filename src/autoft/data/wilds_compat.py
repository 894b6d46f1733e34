"""Make the `wilds` 2.0 package work with current libraries, without patching its files.

1. WILDS' group metrics (`wilds.common.utils.avg_over_groups`) import `torch_scatter`, which has no
   wheels for current torch. `install()` registers a pure-torch module under that name, only when
   the real package is absent. It implements `scatter` (and the scatter_* helpers) for the
   reductions sum/add/mean/max/min with torch_scatter's semantics: empty groups give 0.
2. FMoW's metadata mixes timestamps with and without fractional seconds; pandas >= 2 infers one
   format from the first row and rejects the others. `fmow_iso8601()` makes the FMoW module's
   `pd.to_datetime` parse ISO 8601 while the dataset is constructed (our reader);
   `fmow_timestamps("mixed")` infers the format of each element, as pandas 1.x, which wilds 2.0 was
   written against, did (the reference reading of `wilds_agreement`, a second opinion on the same
   strings).
3. `import wilds` starts a PyPI version check (package `outdated`) in a non-daemon thread, with no
   timeout: on an offline compute node it can hold the process open at exit. `import_wilds()`
   imports the package with that check disabled.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from contextlib import contextmanager
from typing import Optional

import torch


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    # torch_scatter broadcasting: a 1-D index runs along `dim` of src
    if index.dim() == 1 and src.dim() > 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    return index.expand_as(src)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.scatter in plain torch: reduce the entries of src that share an index."""
    dim = dim % src.dim() if src.dim() else 0
    index = _broadcast(index.long(), src, dim)
    if dim_size is None:
        dim_size = int(index.max().item()) + 1 if index.numel() else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    if reduce in ("sum", "add", "mean"):
        result = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add_(dim, index, src)
        if reduce == "mean":
            count = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add_(dim, index, torch.ones_like(src))
            result = result / count.clamp(min=1) if src.is_floating_point() else result.div(count.clamp(min=1), rounding_mode="floor")
    elif reduce in ("max", "min", "amax", "amin"):
        op = "amax" if reduce in ("max", "amax") else "amin"
        result = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_reduce_(dim, index, src, op, include_self=False)
    else:
        raise ValueError(f"unsupported reduce '{reduce}'")
    if out is not None:
        out.copy_(result)
        return out
    return result


def scatter_sum(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, out, dim_size, "sum")


def scatter_mean(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, out, dim_size, "mean")


def scatter_max(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, out, dim_size, "max")


def scatter_min(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, out, dim_size, "min")


def _shim() -> types.ModuleType:
    module = types.ModuleType("torch_scatter")
    module.__doc__ = "pure-torch stand-in for torch_scatter, installed by autoft.data.wilds_compat"
    module.scatter, module.scatter_sum, module.scatter_add = scatter, scatter_sum, scatter_sum
    module.scatter_mean, module.scatter_max, module.scatter_min = scatter_mean, scatter_max, scatter_min
    module.AUTOFT_SHIM = True
    return module


def install() -> None:
    """Provide `torch_scatter` if it is not installed (idempotent)."""
    if "torch_scatter" in sys.modules:
        return
    if importlib.util.find_spec("torch_scatter") is None:
        sys.modules["torch_scatter"] = _shim()


def import_wilds():
    """Import `wilds` without its background PyPI version check (a network call at import)."""
    if "wilds" in sys.modules:
        return sys.modules["wilds"]
    missing = object()
    saved = sys.modules.get("outdated", missing)
    sys.modules["outdated"] = None  # `from outdated import ...` raises ImportError: wilds skips the check
    try:
        import wilds
    finally:
        if saved is missing:
            del sys.modules["outdated"]
        else:
            sys.modules["outdated"] = saved
    return wilds


class _PandasDatetimes:
    """The pandas module, except that to_datetime parses with a fixed `format` unless told one."""

    def __init__(self, pd, format: str = "ISO8601"):
        self._pd, self._format = pd, format

    def __getattr__(self, name):
        return getattr(self._pd, name)

    def to_datetime(self, arg, *args, **kwargs):
        kwargs.setdefault("format", self._format)
        return self._pd.to_datetime(arg, *args, **kwargs)


@contextmanager
def fmow_timestamps(format: str):
    """While active, wilds' FMoW dataset parses its timestamps with pandas' `format` ('ISO8601', 'mixed')."""
    import wilds.datasets.fmow_dataset as fmow_module

    original = fmow_module.pd
    fmow_module.pd = _PandasDatetimes(original, format)
    try:
        yield
    finally:
        fmow_module.pd = original


def fmow_iso8601():
    """While active, wilds' FMoW dataset parses its timestamps as ISO 8601 (how our reader opens FMoW)."""
    return fmow_timestamps("ISO8601")
