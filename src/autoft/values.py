"""Plain values every layer shares: the one finite-number check, the one OmegaConf-to-Python step and
the one way a message writes a value (`show`) and names a bad one (`must`).

On the ground floor beside errors.py, io.py and names.py: at import it reads only the standard library
(omegaconf when `plain` first runs), so that the lowest layers may import it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


def finite(x: Any) -> bool:
    """`x` is a finite real number: Python's or numpy's int or float, never a bool, None or a string."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def plain(x: Any) -> Any:
    """An OmegaConf container as plain Python (dicts and lists, interpolations resolved); anything
    else as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def show(value: Any) -> str:
    """A value as a user writes it in YAML or on the command line, for messages: null, true/false,
    [a,b]."""
    value = plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def must(key: str, value: Any, allowed: str) -> str:
    """The one wording of a bad config value, for every check: `key=value: must be <allowed>`."""
    return f"{key}={show(value)}: must be {allowed}"
