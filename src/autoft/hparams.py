"""The hyperparameters a search chooses and a final run uses: one type for a trial's parameters,
best_hparams.yaml, the final run's config and the `hparams` record of results.json, and the one
mapping between them and the override keys a search space searches (autoft.names).

    loss_weights   the nine loss terms (autoft.names.LOSS_NAMES), each a finite weight >= 0
    lr_scale       peak lr = trainer.base_lr x lr_scale (x the method's lr_mult), > 0
    weight_decay   >= 0
    wise_alpha     the final model is theta(a) = (1 - a) theta_zeroshot + a theta_finetuned, a in [0, 1];
                   1 (the default, and what a file without the key means) is the fine-tuned model
    base_lr        the base lr the values were found with (a record: the final run uses its own)
    seed           the searched seed, when the search searched it

Their allowed values are checked here only (`problems`): for the config's own values by the schema's
validation (autoft.config_checks.problems), for a file when it is read (`from_mapping`).

Everything else in a best_hparams.yaml (objective, study, trial, re-evaluation, ...) says where the
values came from: it is kept as `records` and written back unchanged.

The file format is the one searches have always written: `lr` (= base_lr x lr_scale) is derived
when base_lr is known, a file with `lr` and `base_lr` but no `lr_scale` (the warm-start files) reads
as lr / base_lr, and loss terms a file leaves out take their default (ce 1, the others 0).

The file itself is read and written by autoft.records (read_best_hparams, write_best_hparams). This
module imports only the standard library, OmegaConf and the ground floor (autoft.names, autoft.values),
so that a bad file is refused before torch is imported (autoft.config_checks.check_files).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from autoft.errors import UserError
from autoft.names import LOSS_NAMES, LOSS_PREFIX, LR_SCALE_KEY, SEED_KEY, WEIGHT_DECAY_KEY
from autoft.values import finite, plain, show

# the WiSE-FT mixing weight a trial chose (search.wise_alphas): a trial user attribute, not a parameter
WISE_ALPHA_ATTR = "wise_alpha"

HPARAMS_FIELDS = ("loss_weights", "lr_scale", "lr", "base_lr", "weight_decay", "seed", "wise_alpha")
REQUIRED = ("loss_weights", "weight_decay")  # and lr_scale, or lr with base_lr
FIX = "pass the best_hparams.yaml a search wrote (rerunning the search command rewrites it)"


def default_weights() -> dict[str, float]:
    """ce 1 and every other term 0: plain fine-tuning."""
    return {k: 1.0 if k == "ce" else 0.0 for k in LOSS_NAMES}


@dataclass(frozen=True)
class Hyperparameters:
    loss_weights: Mapping[str, float] = field(default_factory=default_weights)
    lr_scale: float = 1.0
    weight_decay: float = 0.0
    wise_alpha: float = 1.0
    base_lr: Optional[float] = None
    seed: Optional[int] = None
    records: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        # every term, in LOSS_NAMES order (unknown names are kept for `problems` to name)
        weights = {**default_weights(), **dict(self.loss_weights)}
        object.__setattr__(self, "loss_weights", weights)
        object.__setattr__(self, "records", dict(self.records))

    # ------------------------------------------------------------------ checks
    def problems(self, config_keys: bool = False) -> list[str]:
        """`key=value: must be ...` for every bad value (empty: valid): the one check of these values.
        Keys are named as a best_hparams.yaml spells them, or with `config_keys` as the config does
        (method.loss_weights.<term>, trainer.lr_scale, trainer.weight_decay)."""
        weights, lr_scale, weight_decay = ((LOSS_PREFIX, LR_SCALE_KEY, WEIGHT_DECAY_KEY) if config_keys
                                           else ("loss_weights.", "lr_scale", "weight_decay"))
        out = []
        for k, w in self.loss_weights.items():
            if k not in LOSS_NAMES:
                out.append(f"{weights}{k}: unknown loss term; valid: {', '.join(LOSS_NAMES)}")
            elif not (finite(w) and w >= 0):
                out.append(f"{weights}{k}={show(w)}: must be a finite number >= 0")
        if not (finite(self.lr_scale) and self.lr_scale > 0):
            out.append(f"{lr_scale}={show(self.lr_scale)}: must be a finite number > 0")
        if not (finite(self.weight_decay) and self.weight_decay >= 0):
            out.append(f"{weight_decay}={show(self.weight_decay)}: must be a finite number >= 0")
        if not (finite(self.wise_alpha) and 0 <= self.wise_alpha <= 1):
            out.append(f"wise_alpha={show(self.wise_alpha)}: must be a number in [0, 1] (1: the fine-tuned model)")
        if self.base_lr is not None and not (finite(self.base_lr) and self.base_lr > 0):
            out.append(f"base_lr={show(self.base_lr)}: must be a finite number > 0 or absent")
        if self.seed is not None and not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            out.append(f"seed={show(self.seed)}: must be an integer >= 0 or absent")
        return out

    def validate(self, where: str, fix: str = "") -> "Hyperparameters":
        """Raise one UserError naming `where` (a file, a trial, the config) and every bad key."""
        bad = self.problems()
        if bad:
            raise UserError(f"{where}: " + "; ".join(bad) + (f"; {fix}" if fix else ""))
        return self

    def same_as(self, other: "Hyperparameters", rel_tol: float = 1e-6) -> bool:
        """Equal loss weights, lr scale, weight decay and WiSE-FT alpha (up to float rounding)."""
        def close(a, b):
            return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-12)

        return (set(self.loss_weights) == set(other.loss_weights)
                and all(close(self.loss_weights[k], other.loss_weights[k]) for k in self.loss_weights)
                and close(self.lr_scale, other.lr_scale) and close(self.weight_decay, other.weight_decay)
                and close(self.wise_alpha, other.wise_alpha))

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_mapping(cls, data: Any, where: str, defaults: Optional["Hyperparameters"] = None,
                     fix: str = FIX) -> "Hyperparameters":
        """Parse and validate a best_hparams mapping (a file's content, or results.json's `hparams`).

        Required: loss_weights, weight_decay, and lr_scale (or lr with base_lr). Loss terms the
        mapping leaves out come from `defaults` (else ce 1, the others 0); keys that are not
        hyperparameters are kept as records."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: holds {type(data).__name__}, not a mapping with "
                            f"{', '.join(REQUIRED)} and lr_scale; {fix}")
        missing = [k for k in REQUIRED if data.get(k) is None]
        lr_scale = _lr_scale(data)
        if lr_scale is None:
            missing.append("lr_scale (or lr with base_lr)")
        if missing:
            raise UserError(f"{where}: missing key {', '.join(missing)}; {fix}")
        weights = data["loss_weights"]
        if not isinstance(weights, dict):
            raise UserError(f"{where}: loss_weights={show(weights)}: must be a mapping of loss terms to weights; {fix}")
        base_weights = dict(defaults.loss_weights) if defaults is not None else default_weights()
        seed = data.get("seed")
        hp = cls(loss_weights={**base_weights, **weights}, lr_scale=lr_scale, weight_decay=data["weight_decay"],
                 wise_alpha=data.get("wise_alpha", 1.0), base_lr=data.get("base_lr"),
                 seed=int(seed) if finite(seed) and float(seed).is_integer() else seed,
                 records={k: v for k, v in data.items() if k not in HPARAMS_FIELDS})
        hp.validate(where, fix)
        return hp._as_floats()

    @classmethod
    def from_config(cls, cfg) -> "Hyperparameters":
        """The config's own values: method.loss_weights, trainer.lr_scale, trainer.weight_decay, as
        they are (autoft.config_checks.validate checks them, with `problems`)."""
        from omegaconf import OmegaConf

        def get(key, default=None):
            return OmegaConf.select(cfg, key, default=default)

        weights = get("method.loss_weights")
        weights = plain(weights) if weights is not None else {}
        base_lr = get("trainer.base_lr")
        return cls(loss_weights=weights, lr_scale=get(LR_SCALE_KEY, 1.0), weight_decay=get(WEIGHT_DECAY_KEY, 0.0),
                   base_lr=float(base_lr) if finite(base_lr) else None)

    @classmethod
    def from_trial(cls, params: Mapping[str, Any], user_attrs: Optional[Mapping[str, Any]] = None,
                   defaults: Optional["Hyperparameters"] = None,
                   records: Optional[Mapping[str, Any]] = None) -> "Hyperparameters":
        """A trial's values: its searched parameters (override keys; the inverse of `search_params`),
        the WiSE-FT alpha it chose (a user attribute), and `defaults` (usually `from_config`) for
        everything unsearched. The trial's own run checked its values (autoft.config_checks.validate)."""
        base = defaults if defaults is not None else cls()
        weights = dict(base.loss_weights)
        weights.update({k[len(LOSS_PREFIX):]: float(v) for k, v in params.items() if k.startswith(LOSS_PREFIX)})
        attrs = user_attrs or {}
        alpha = attrs.get(WISE_ALPHA_ATTR)
        hp = replace(base, loss_weights=weights, lr_scale=float(params.get(LR_SCALE_KEY, base.lr_scale)),
                     weight_decay=float(params.get(WEIGHT_DECAY_KEY, base.weight_decay)),
                     seed=int(params[SEED_KEY]) if SEED_KEY in params else base.seed,
                     wise_alpha=float(alpha) if alpha is not None else 1.0, records=dict(records or {}))
        return hp._as_floats()

    def _as_floats(self) -> "Hyperparameters":
        return replace(self, loss_weights={k: float(v) for k, v in self.loss_weights.items()},
                       lr_scale=float(self.lr_scale), weight_decay=float(self.weight_decay),
                       wise_alpha=float(self.wise_alpha),
                       base_lr=None if self.base_lr is None else float(self.base_lr))

    # ------------------------------------------------------------------ what they become
    def lr(self, base_lr: float, lr_mult: float = 1.0) -> float:
        """The peak lr of a run with this base lr (the run's trainer.base_lr) and method multiplier:
        base_lr x lr_scale x lr_mult, the one place a learning rate is computed."""
        return float(base_lr) * self.lr_scale * float(lr_mult)

    def values(self) -> dict[str, Any]:
        """The hyperparameters alone, as best_hparams.yaml and results.json's `hparams` spell them."""
        out: dict[str, Any] = {"loss_weights": dict(self.loss_weights), "lr_scale": self.lr_scale}
        if self.base_lr is not None:
            out["lr"] = self.lr(self.base_lr)
            out["base_lr"] = self.base_lr
        out["weight_decay"] = self.weight_decay
        if self.seed is not None:
            out["seed"] = self.seed
        out["wise_alpha"] = self.wise_alpha
        return out

    def to_dict(self) -> dict[str, Any]:
        """The file's content: the values, then the records."""
        return {**self.values(), **{k: v for k, v in self.records.items() if k not in HPARAMS_FIELDS}}


def _lr_scale(data: Mapping[str, Any], base_lr: Optional[float] = None) -> Optional[float]:
    """A mapping's lr_scale, or its lr / base_lr (its own base_lr, else `base_lr`): the published
    values give the lr and the base lr they were found with. None when neither is there."""
    if data.get("lr_scale") is not None:
        return data["lr_scale"]
    lr, base = data.get("lr"), data.get("base_lr", base_lr)
    if finite(lr) and finite(base) and base > 0:
        return float(f"{lr / base:.12g}")  # 1.36e-4 / 1e-5 -> 13.6, not 13.600000000000001
    return None


def search_params(values: Mapping[str, Any], base_lr: Optional[float] = None) -> dict[str, Any]:
    """A best_hparams.yaml mapping (or a warm-start entry) as the override keys a search space
    searches: loss_weights.<term> -> method.loss_weights.<term>, lr_scale (or lr / base_lr) ->
    trainer.lr_scale, weight_decay, seed. The inverse of `Hyperparameters.from_trial`; keys the
    mapping leaves out are left out (a warm start leaves them to the sampler)."""
    out: dict[str, Any] = {LOSS_PREFIX + str(k): w for k, w in (values.get("loss_weights") or {}).items()}
    lr_scale = _lr_scale(values, base_lr)
    if lr_scale is not None:
        out[LR_SCALE_KEY] = float(lr_scale)
    for key, name in ((WEIGHT_DECAY_KEY, "weight_decay"), (SEED_KEY, "seed")):
        if values.get(name) is not None:
            out[key] = values[name]
    return out
