"""hydra-optuna-sweeper's deprecated `search_space` key (Hydra 1.1's schema, still read by 1.3).

    hydra.sweeper.search_space:                     same space as hydra.sweeper.params:
      x: {type: float, low: -5.5, high: 5.5, step: 0.5}     x: range(-5.5, 5.5, step=0.5)
      y: {type: categorical, choices: [-5, 0, 5]}           y: choice(-5, 0, 5)
      n: {type: int, low: 1, high: 100, log: true}          n: tag(log, int(interval(1, 100)))

Each entry becomes a `params` string, so it meets the same checks and a command-line value of
the key still replaces it. As in hydra-optuna-sweeper: bounds are inclusive, `log` wins over
`step`, and when `params` is set too, `params` is used and `search_space` ignored (with a warning).
Kept free of heavy imports: Hydra imports this package on every run to discover plugins.
"""
import warnings
from typing import Any, Mapping, Optional

from autoft.errors import UserError
from autoft.values import finite

FIELDS = ("type", "choices", "low", "high", "log", "step")
TYPES = ("float", "int", "categorical")


def space_params(params: Optional[Mapping[str, Any]], search_space: Optional[Mapping[str, Any]]) -> Optional[dict]:
    """The `params` to search: `params` itself, or the deprecated `search_space` converted (warned)."""
    if search_space is None:
        return None if params is None else dict(params)
    if params is not None:
        warnings.warn("hydra.sweeper.params and the deprecated hydra.sweeper.search_space are both set: the "
                      "search space comes from params alone; delete search_space", UserWarning, stacklevel=2)
        return dict(params)
    warnings.warn("hydra.sweeper.search_space is deprecated (as in hydra-optuna-sweeper since Hydra 1.2): it "
                  "still works, but write the space as hydra.sweeper.params in Hydra's override grammar, e.g. "
                  "'x: interval(0, 1)' for {type: float, low: 0, high: 1}", UserWarning, stacklevel=2)
    if not isinstance(search_space, Mapping):
        raise UserError(f"hydra.sweeper.search_space must map parameter names to {{type, low, high, ...}}, "
                        f"got {search_space!r}")
    return {str(key): entry_params(str(key), entry) for key, entry in search_space.items()}


def _bad(key: str, why: str) -> UserError:
    return UserError(f"hydra.sweeper.search_space.{key} {why}")


def _number(key: str, entry: Mapping, name: str) -> float:
    value = entry.get(name)
    if not finite(value):
        raise _bad(key, f"needs a finite number '{name}', got {value!r}")
    return value


def entry_params(key: str, entry: Any) -> str:
    """One search_space entry as a `params` string of the same distribution."""
    from autoft.search.space import format_value

    if not isinstance(entry, Mapping):
        raise _bad(key, f"must be a mapping with keys {', '.join(FIELDS)}, got {entry!r}")
    unknown = sorted(set(map(str, entry)) - set(FIELDS))
    if unknown:
        raise _bad(key, f"has unknown key(s) {unknown}; allowed: {', '.join(FIELDS)}")
    kind = str(getattr(entry.get("type"), "name", entry.get("type"))).lower()  # a DistributionType enum too
    if kind not in TYPES:
        raise _bad(key, f"has type {entry.get('type')!r}; allowed: {', '.join(TYPES)}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise _bad(key, "is categorical and needs a non-empty list 'choices'")
        return "choice(" + ", ".join(format_value(c) for c in choices) + ")"
    low, high = _number(key, entry, "low"), _number(key, entry, "high")
    step = entry.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
        raise _bad(key, f"needs a positive 'step', got {step!r}")
    num = int if kind == "int" else float
    interval = f"interval({num(low)!r}, {num(high)!r})"
    interval = f"int({interval})" if kind == "int" else interval
    if entry.get("log"):
        return f"tag(log, {interval})"
    if step is None or (kind == "int" and int(step) == 1):  # an int step of 1 is the plain int interval
        return interval
    return f"range({num(low)!r}, {num(high)!r}, step={num(step)!r})"
