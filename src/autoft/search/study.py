"""Study helpers: naming, creation/resume, reading studies as records (for reports), counting toward
n_trials, lost trials, warm starts.

Lost trials are found by autoft.search.liveness.fail_stale and retried here (RetryLost, requeue).

Counting: `n_trials` is the study's total of *finished* trials, COMPLETE plus PRUNED (a pruned
trial was evaluated and judged by the pruner: its budget is spent as the user asked; set
`count_pruned: false` to count COMPLETE only). FAILED trials never count: a lost trial (dead
worker) is retried with the same parameters, a trial that raised or diverged is replaced by a new
one (and `max_failures` stops a search that keeps failing).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from autoft.errors import UserError
from autoft.values import must
from autoft.records import read_yaml
from autoft.search.settings import direction_name
from autoft.search.space import SearchSpace
from autoft.search.storage import STUDY_FILE, normalize_url

log = logging.getLogger(__name__)

# user attributes the sweeper writes on trials (visible in optuna-dashboard and trials.csv)
FAIL_REASON = "fail_reason"
FAIL_KIND = "fail_kind"  # error | diverged | nan | lost | interrupted | surplus | user_error
RETRY_OF = "retry_of"  # number of the trial whose parameters this one retries
RETRIES_ATTR = "autoft:retries"  # system attribute: how often these parameters were retried
WARM_START_ATTR = "warm_start"
FINGERPRINT_ATTR = "autoft_fingerprint"
COUNTED_FAILURES = ("error", "diverged", "nan")


# ----------------------------------------------------------------------------- naming

def _drop(tree: Any, dotted: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node:
            return
        node = node[p]
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def fingerprint(config, *, space: SearchSpace, direction: str, sampler: Mapping, pruner: Any,
                exclude: Iterable[str], neutral: Optional[Mapping[str, Any]] = None) -> str:
    """A short hash of everything a trial's objective depends on.

    The config is taken unresolved (`${data_root}` stays a reference, so the same command on
    another machine finds the same study); `exclude` drops keys that never change a trial
    (the app's: device, paths, n_trials, final-run settings); a `neutral` key (added after studies
    were made, SearchApp.neutral_defaults) counts only away from its neutral value, so those studies
    keep their names.
    """
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(config, resolve=False) if config is not None else {}
    for key in exclude:
        _drop(tree, key)
    for key, default in (neutral or {}).items():
        value = OmegaConf.select(config, key, default=None) if config is not None else None
        if type(value) is type(default) and value == default:
            _drop(tree, key)
    # searched and fixed keys take their values from the trial's overrides (in `space`)
    for key in [*space.distributions, *(k.lstrip("+") for k in space.fixed)]:
        _drop(tree, key)
    payload = {"config": tree, "space": space.describe(), "direction": direction,
               "sampler": dict(sampler or {}), "pruner": pruner}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def study_name_for(label: str, fp: str) -> str:
    """<label>-<fingerprint>: the app's label (SearchApp.label), else `study`."""
    return f"{label or 'study'}-{fp}"


def direction_for(direction: Any) -> Any:
    """'maximize' | 'minimize', or a list of them for a multi-objective study, from
    hydra.sweeper.direction (checked with the settings, autoft.search.settings) or, when that is
    null, the app's (SearchApp.direction; hydra-optuna-sweeper's minimize)."""
    out = [direction_name(d) for d in (direction if isinstance(direction, (list, tuple)) else [direction])]
    return out if len(out) > 1 else out[0]


def open_study(storage, name: str, direction: str, fp: str, attrs: Mapping[str, Any], sampler=None,
               pruner=None) -> tuple[Any, bool]:
    """Create the study, or load it when it exists; (study, created_here).

    A study with the same name but another fingerprint or direction was made by another config:
    stop rather than mix its trials in.
    """
    import optuna
    from optuna.study import StudyDirection

    created = False
    try:
        directions = direction if isinstance(direction, (list, tuple)) else [direction]
        storage.create_new_study([StudyDirection[d.upper()] for d in directions], study_name=name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if created:
        for k, v in {FINGERPRINT_ATTR: fp, **attrs}.items():
            study.set_user_attr(k, v)
    else:
        have = direction_for(study.directions)
        old = study.user_attrs.get(FINGERPRINT_ATTR)
        if have != direction or (old is not None and old != fp):
            what = f"direction {have}" if have != direction else f"fingerprint {old}"
            raise UserError(f"study '{name}' already exists in this storage with another configuration ({what}; "
                            f"this run: direction {direction}, fingerprint {fp}). Choose another "
                            "hydra.sweeper.study_name, or leave it null to derive one from the config.")
    return study, created


@dataclass
class StudyRecord:
    """A study as readers outside the search see it: its name, directions and trials (FrozenTrials)."""

    name: str
    directions: list
    trials: list
    user_attrs: dict


def load_studies(url: str) -> list[StudyRecord]:
    """Every study in a storage URL, read once (reports and plots take these, never the storage)."""
    import optuna

    url = normalize_url(url)
    out = []
    for summary in optuna.study.get_all_study_summaries(url, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        out.append(StudyRecord(summary.study_name, [d.name.lower() for d in study.directions],
                               study.get_trials(deepcopy=False), dict(study.user_attrs)))
    return out


def load_studies_under(root: Path) -> dict[Path, list[StudyRecord]]:
    """Every study stored in a SQLite file (the sweeper's optuna.db) under root: study file -> its
    studies' records (what autoft.reporting.report.make_report takes as `studies`)."""
    return {db: load_studies(f"sqlite:///{db.resolve()}") for db in sorted(Path(root).rglob(STUDY_FILE))}


# ----------------------------------------------------------------------------- counting

@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    counted_failures: int = 0

    def done(self, count_pruned: bool) -> int:
        return self.complete + (self.pruned if count_pruned else 0)


def counted_failure(trial) -> bool:
    """A failure that counts against max_failures: it raised, diverged or returned NaN (not lost, interrupted...)."""
    return trial.state.name == "FAIL" and trial.user_attrs.get(FAIL_KIND) in COUNTED_FAILURES


def count(trials: Sequence) -> Counts:
    n = Counter(t.state.name for t in trials)
    return Counts(n["COMPLETE"], n["PRUNED"], n["RUNNING"], n["WAITING"], n["FAIL"], sum(map(counted_failure, trials)))


def fail_reason(trial) -> Optional[str]:
    """Why a FAILED trial failed; a trial failed by a heartbeat check carries no attribute."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return None
    return trial.user_attrs.get(FAIL_REASON) or "lost: its worker stopped sending heartbeats (killed or crashed)"


def last_failure(trials: Sequence) -> Optional[str]:
    """The reason of the latest trial whose failure counts against the limits."""
    counted = [t for t in trials if counted_failure(t)]
    return fail_reason(max(counted, key=lambda t: t.number)) if counted else None


# ----------------------------------------------------------------------------- retries

def requeue(study, trial, *, max_retries: int, why: str, count_retry: bool = True) -> bool:
    """Enqueue a failed trial's parameters again (at most `max_retries` retries per origin; an
    interruption or a surplus give-back does not use up a retry)."""
    import optuna
    from optuna.trial import TrialState

    retries = int(trial.system_attrs.get(RETRIES_ATTR, 0))
    origin = trial.user_attrs.get(RETRY_OF, trial.number)
    if count_retry and retries >= max_retries:
        log.warning("trial %d (%s) is not retried: its parameters were retried %d times already", trial.number,
                    why, retries)
        return False
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
    user_attrs = {RETRY_OF: origin}
    if WARM_START_ATTR in trial.user_attrs:
        user_attrs[WARM_START_ATTR] = trial.user_attrs[WARM_START_ATTR]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": params, RETRIES_ATTR: retries + (1 if count_retry else 0)},
        user_attrs=user_attrs))
    log.info("trial %d (%s): parameters re-queued%s", trial.number, why,
             f" (retry {retries + 1} of {max_retries})" if count_retry else "")
    return True


class RetryLost:
    """Heartbeat-stale callback: re-queue the parameters of a trial whose worker was lost."""

    def __init__(self, max_retries: int):
        self.max_retries = max_retries

    def __call__(self, study, trial) -> None:
        log.warning("trial %d was lost (no heartbeat): marked FAIL", trial.number)
        requeue(study, trial, max_retries=self.max_retries, why="lost worker")


# ----------------------------------------------------------------------------- samplers and pruners

def _seed_for(seed: int, number: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(number)]).generate_state(1)[0])


# samplers whose draws follow from the study's state and one fixed seed: never re-seeded per trial
_FIXED_SEED = ("GridSampler", "QMCSampler", "BruteForceSampler")


def make_sampler(spec: Optional[Mapping], grid_space: Optional[Mapping] = None):
    """The sampler the config names. A seeded sampler is re-seeded for every trial from
    (seed, trial number): reproducible in one worker, and concurrent or resumed workers never
    replay each other's random draws (which one shared seed would do). Grid, QMC and brute-force
    samplers keep their one seed (their sequence is the point). A grid sampler without
    `search_space` gets `grid_space` (built from hydra.sweeper.params)."""
    import optuna
    from hydra.utils import instantiate

    spec = dict(spec or {"_target_": "optuna.samplers.TPESampler"})
    target = str(spec.get("_target_", ""))
    if target.endswith("MOTPESampler"):
        raise UserError("hydra.sweeper.sampler: The 'motpe' sampler was removed in Optuna 4.0. Use "
                        "hydra/sweeper/sampler=tpe instead: TPESampler handles multi-objective studies")
    if target.endswith("GridSampler") and spec.get("search_space") is None:
        if grid_space is None:
            raise UserError("hydra/sweeper/sampler=grid needs a grid: every searched parameter a choice or a range")
        spec["search_space"] = {k: list(v) for k, v in grid_space.items()}
    spec.setdefault("_convert_", "all")
    seed = spec.pop("seed", None)
    per_trial = seed is not None and not target.endswith(_FIXED_SEED)

    def build(s: Optional[int]):
        return instantiate(spec) if s is None else instantiate(spec, seed=s)

    try:
        first = build(_seed_for(seed, 0) if per_trial else seed)
    except Exception as err:
        raise UserError(f"hydra.sweeper.sampler cannot be built ({spec.get('_target_')}): {err}") from None
    if not isinstance(first, optuna.samplers.BaseSampler):
        raise UserError(f"hydra.sweeper.sampler._target_ {spec.get('_target_')} is not an Optuna sampler")
    return _trial_seeded_sampler_class()(build, int(seed) if per_trial else None, first)


def _trial_seeded_sampler_class():
    """make_sampler's wrapper, a class built at call time (optuna is imported late)."""
    import optuna

    class _TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self, factory: Callable[[int], Any], seed: Optional[int], first):
            self._factory, self._seed, self._inner = factory, seed, first

        def before_trial(self, study, trial):
            if self._seed is not None:
                self._inner = self._factory(_seed_for(self._seed, trial.number))
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            try:
                self._inner.after_trial(study, trial, state, values)
            except RuntimeError as err:  # GridSampler calls study.stop() when the grid is done:
                if "stop" not in str(err):  # only optimize() may stop; the sweeper counts the grid itself
                    raise

        def reseed_rng(self):
            self._inner.reseed_rng()

    return _TrialSeeded


PRUNERS = {
    "median": ("optuna.pruners.MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 0}),
    "successive_halving": ("optuna.pruners.SuccessiveHalvingPruner", {}),
    "hyperband": ("optuna.pruners.HyperbandPruner", {}),
}


def make_pruner(spec: Any, key: str = "pruner"):
    """None/'none' -> no pruning; a name in PRUNERS; or a {_target_: ...} mapping. `key`: the
    setting the messages name (the app's, SearchApp.pruner)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf
    import optuna

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "null", "")):
        return optuna.pruners.NopPruner()
    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise UserError(f"{key} '{spec}' is not a pruner; valid: none, {', '.join(PRUNERS)}, "
                            "or {_target_: optuna.pruners.<Pruner>, ...}")
        target, kwargs = PRUNERS[spec]
        spec = {"_target_": target, **kwargs}
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise UserError("invalid config: " + must(key, spec, "a name or a mapping with _target_"))
    try:
        pruner = instantiate(dict(spec))
    except Exception as err:
        raise UserError(f"{key} cannot be built ({spec.get('_target_')}): {err}") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise UserError(f"{key}._target_ {spec.get('_target_')} is not an Optuna pruner")
    return pruner


# ----------------------------------------------------------------------------- warm starts

def _entries(obj: Any, origin: str, keys: Sequence[str]) -> list[tuple[str, dict]]:
    """One warm-start entry (a mapping with any of `keys`), or a mapping of name -> such entry."""
    if not isinstance(obj, Mapping):
        raise UserError(f"warm start {origin}: expected a mapping of hyperparameters, got {type(obj).__name__}")
    if set(keys) & set(obj):
        return [(origin, dict(obj))]
    out = []
    for name, entry in obj.items():
        if not isinstance(entry, Mapping) or not set(keys) & set(entry):
            raise UserError(f"warm start {origin}: entry '{name}' holds none of {sorted(keys)}")
        out.append((f"{origin}:{name}", dict(entry)))
    return out


WARM_START_FIX = ("name a best_hparams.yaml, or a YAML mapping of names to such entries "
                  "(conf/search/warm_start/)")


def load_warm_starts(files: Sequence[str], inline: Optional[Mapping[str, Any]] = None,
                     keys: Sequence[str] = ("params",)) -> list[tuple[str, dict]]:
    """The warm-start entries: the app's own (`inline`, origin -> mapping; SearchApp.warm_starts),
    then hydra.sweeper.warm_start's files. `keys` mark one entry (SearchApp.warm_start_keys)."""
    from omegaconf import OmegaConf

    out: list[tuple[str, dict]] = []
    for origin, mapping in (inline or {}).items():
        if mapping:
            out += _entries(OmegaConf.to_container(mapping, resolve=True) if OmegaConf.is_config(mapping)
                            else mapping, origin, keys)
    for f in files or []:
        data = read_yaml(f, f"hydra.sweeper.warm_start: {f}", WARM_START_FIX)
        out += _entries(data, str(Path(f)), keys)
    return out


def warm_start_params(values: Mapping[str, Any], space: SearchSpace, origin: str) -> dict:
    """One entry's values (override key -> value, SearchApp.warm_start_values) on the searched keys;
    values outside the space are skipped."""
    from optuna.distributions import IntDistribution

    params = {}
    for key, value in values.items():
        if key not in space.distributions:
            continue
        if isinstance(value, float) and value.is_integer() and isinstance(space.distributions[key], IntDistribution):
            value = int(value)
        if space.contains(key, value):
            params[key] = value
        else:
            log.warning("warm start %s: %s=%r is outside the search space (%s); the sampler chooses it",
                        origin, key, value, space.sources[key])
    return params


def enqueue_warm_starts(study, entries: Sequence[tuple[str, dict]], space: SearchSpace,
                        values_of: Callable[[Mapping[str, Any]], dict]) -> None:
    """Enqueue each entry once per study (a rerun does not add them again); `values_of`: an entry as
    override key -> value (SearchApp.warm_start_values)."""
    for origin, entry in entries:
        params = warm_start_params(values_of(entry), space, origin)
        if not params:
            log.warning("warm start %s: no value falls in the search space; skipped", origin)
            continue
        known = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(WARM_START_ATTR) == origin]
        if known:
            continue
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: origin})
        log.info("warm start %s enqueued", origin)


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def duration_s(trial) -> Optional[float]:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None
