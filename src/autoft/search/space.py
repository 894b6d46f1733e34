"""The search space: `hydra.sweeper.params` in Hydra's override grammar -> Optuna distributions.

    method.loss_weights.hinge: tag(log, interval(1e-4, 10))   -> FloatDistribution(1e-4, 10, log=True)
    trainer.weight_decay: interval(0, 1)                      -> FloatDistribution(0, 1)
    seed: tag(int, interval(0, 10))  or  int(interval(0, 10))  -> IntDistribution(0, 10)
    seed: range(0, 10)                                        -> IntDistribution(0, 10)
    x: range(0.5, 5.5, step=1)                                -> FloatDistribution(0.5, 5.5, step=1)
    n: tag(log, int(interval(1, 100)))                        -> IntDistribution(1, 100, log=True)
    model: choice(a, b)   or   x=1,2,3 on the command line    -> CategoricalDistribution
    k: shuffle(range(1, 4))                                   -> CategoricalDistribution([1, 2, 3])
    trainer.inner_steps: 50                                   -> fixed: passed to every trial

`range(a, b, step)` includes b, as hydra-optuna-sweeper reads it (Hydra's basic sweeper and
`shuffle(range(...))` stop before b); a float bound or step makes it a float range.

Every mistake is a UserError naming the key, raised before any trial exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from autoft.errors import UserError
from autoft.values import finite

_TAGS = {"log", "int"}


@dataclass
class SearchSpace:
    """Searched keys with their distributions, plus fixed overrides every trial receives."""

    distributions: dict = field(default_factory=dict)  # config key -> optuna distribution
    prefixes: dict = field(default_factory=dict)  # config key -> '' | '+' | '++' (how to override it)
    fixed: dict = field(default_factory=dict)  # override key (with prefix) -> value string
    sources: dict = field(default_factory=dict)  # config key -> the grammar string it came from

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """Hydra overrides for one trial: the fixed ones, then the sampled values."""
        out = [f"{k}={v}" for k, v in self.fixed.items()]
        for key, value in params.items():
            out.append(f"{self.prefixes.get(key, '')}{key}={format_value(value)}")
        return out

    def describe(self) -> dict:
        """A stable, JSON-able description (study attributes, fingerprint)."""
        return {"searched": {k: self.sources[k] for k in sorted(self.distributions)},
                "fixed": {k: self.fixed[k] for k in sorted(self.fixed)}}

    def contains(self, key: str, value: Any) -> bool:
        """Whether `value` is a point of the key's distribution (within its bounds, on its step grid)."""
        from optuna.distributions import CategoricalDistribution

        dist = self.distributions[key]
        if isinstance(dist, CategoricalDistribution):
            return value in dist.choices
        if not (finite(value) and dist.low <= value <= dist.high):
            return False
        step = getattr(dist, "step", None)
        if not step:
            return True
        k = (value - dist.low) / step
        return abs(k - round(k)) <= 1e-8 * max(1.0, abs(k))


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bad(key: str, text: str, why: str) -> UserError:
    return UserError(f"search space: hydra.sweeper.params '{key}: {text}' {why}. Fix it in "
                     f"conf/search/autoft.yaml or on the command line.")


def _distribution(key: str, text: str, override) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    tags = set(getattr(value, "tags", set()) or set())
    if tags - _TAGS:
        raise _bad(key, text, f"has unknown tag(s) {sorted(tags - _TAGS)}; valid tags: log, int")
    log, is_int = "log" in tags, "int" in tags
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        # int(interval(a, b)): Hydra's cast leaves int bounds (a plain interval has float bounds)
        is_int = is_int or (isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool))
        if not (finite(lo) and finite(hi)):
            raise _bad(key, text, "needs two finite bounds")
        if not lo < hi:
            raise _bad(key, text, f"is an empty or negative range (low {lo:g} must be below high {hi:g})")
        if log and lo <= 0:
            raise _bad(key, text, f"is log-scaled, so its low bound must be > 0 (got {lo:g})")
        if is_int:
            if lo != int(lo) or hi != int(hi):
                raise _bad(key, text, "is tagged int but has non-integer bounds")
            return IntDistribution(int(lo), int(hi), log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    if isinstance(value, RangeSweep):
        if value.shuffle:  # shuffle(range(...)): the order has no meaning in a search: its values as a choice
            if log or is_int:
                raise _bad(key, text, "is a shuffled range (a choice); tags log/int do not apply to it")
            choices, x = [], value.start
            while (value.step > 0 and x < value.stop) or (value.step < 0 and x > value.stop):
                choices.append(x)
                x = x + value.step
            if not choices:
                raise _bad(key, text, "is an empty range")
            return CategoricalDistribution(choices)
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0:
            raise _bad(key, text, "needs a positive step")
        if start > stop:
            raise _bad(key, text, f"is an empty range (start {start:g} must not exceed stop {stop:g})")
        # both ends included (hydra-optuna-sweeper's reading); the last point is the last step at or below stop
        n = math.floor(round((stop - start) / step, 9))
        if n < 1:
            raise _bad(key, text, "holds a single value; write the value itself to fix it")
        if not any(isinstance(x, float) for x in (start, stop, step)):  # a float anywhere: a float range
            if log and (step != 1 or start <= 0):
                raise _bad(key, text, "is log-scaled, so it needs step 1 and start > 0")
            return IntDistribution(start, start + n * step, log=log, step=step)
        if log:
            raise _bad(key, text, "is a log-scaled float range; use tag(log, interval(low, high))")
        return FloatDistribution(float(start), float(round(start + n * step, 12)), step=float(step))
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not choices:
            raise _bad(key, text, "is an empty choice")
        if log or is_int:
            raise _bad(key, text, "is a choice; tags log/int do not apply to it")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise _bad(key, text, f"has a choice {c!r} that is not a plain value")
        return CategoricalDistribution(choices)
    raise _bad(key, text, f"uses a sweep type this sweeper does not support ({type(value).__name__}); "
                          "use interval, range or choice")


def _exists(config, key: str) -> bool:
    if config is None:
        return True
    from omegaconf import OmegaConf

    missing = object()
    try:
        found = OmegaConf.select(config, key, default=missing, throw_on_resolution_failure=False)
    except Exception:
        found = missing
    if found is not missing:
        return True
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None)
    return choices is not None and key in choices  # a config group (model=choice(a, b))


def parse_space(params: Optional[Mapping[str, Any]], arguments: Sequence[str] = (), *,
                config=None, keep: Optional[Callable[[str], bool]] = None) -> tuple[SearchSpace, list[str]]:
    """Build the search space from the sweeper's `params` and the command line.

    Command-line sweeps (`x=interval(0, 1)`, `x=1,2,3`) join the space; a plain command-line value
    of a searched key fixes it. Keys `keep` refuses are dropped and keep their config value (the
    app's choice, SearchApp.space_filter). Returns the space and the other command-line overrides,
    to pass to every trial.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    # (key text, value text); a null value is skipped, e.g. seed: ${search.seed_space} while seed search is off
    entries = [(str(key), str(text)) for key, text in (params or {}).items() if text is not None]
    passthrough: list[str] = []
    for arg in arguments:
        try:
            ov = parser.parse_override(arg)
        except HydraException as err:
            raise UserError(f"command line: cannot parse override '{arg}': {err}") from None
        searched_before = any(k.lstrip("+") == ov.key_or_group for k, _ in entries)
        if ov.is_sweep_override() or searched_before:
            entries.append((ov.get_key_element(), arg.split("=", 1)[1]))
        else:
            passthrough.append(arg)

    space = SearchSpace()
    for key_text, text in entries:
        try:
            ov = parser.parse_override(f"{key_text}={text}")
        except HydraException as err:
            raise _bad(key_text, text, f"cannot be parsed ({err})") from None
        key = ov.key_or_group
        prefix = key_text[: len(key_text) - len(key_text.lstrip("+"))]
        if ov.is_delete():
            raise _bad(key_text, text, "deletes a key; a search parameter must set one")
        if keep is not None and not keep(key):
            space.distributions.pop(key, None)
            continue
        if not prefix and not _exists(config, key):
            raise UserError(f"search space: hydra.sweeper.params has unknown config key '{key}' (not in "
                            f"the composed config). Check its spelling, or write '+{key}' to add a new key.")
        # a later entry (the command line) replaces an earlier one for the same key
        space.distributions.pop(key, None)
        space.sources.pop(key, None)
        for k in [k for k in space.fixed if k.lstrip("+") == key]:
            del space.fixed[k]
        if ov.is_sweep_override():
            space.distributions[key] = _distribution(key, text, ov)
            space.prefixes[key] = prefix
            space.sources[key] = text
        else:
            space.fixed[key_text] = ov.get_value_element_as_str()
    return space, passthrough


def grid_values(space: SearchSpace) -> dict:
    """The grid a GridSampler walks: every searched key's values; UserError for a continuous one."""
    from optuna.distributions import CategoricalDistribution

    out = {}
    for key, d in space.distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[key] = list(d.choices)
        elif getattr(d, "step", None) is not None and not d.log:
            n = int(round((d.high - d.low) / d.step)) + 1
            vals = [d.low + i * d.step for i in range(n)]
            out[key] = [int(v) for v in vals] if isinstance(d.low, int) else [float(round(v, 12)) for v in vals]
        else:
            raise _bad(key, space.sources.get(key, "?"), "is continuous; the grid sampler needs a choice or a range")
    return out


def midpoint(dist) -> Any:
    """A representative value of a distribution (to check that a trial's config composes)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    if isinstance(dist, IntDistribution):
        return dist.low
    if dist.log:
        return math.sqrt(dist.low * dist.high)
    return dist.low if dist.step is not None else (dist.low + dist.high) / 2
