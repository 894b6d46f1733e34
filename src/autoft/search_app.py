"""What autoft's search needs to know about train.py: its `hydra.sweeper.app` (conf/search/autoft.yaml).

autoft.search reads no key of the app it sweeps (autoft.search.app); every key of train.py's config
a search depends on is read here, in one place:

    study name          <dataset.name>-<model.name>-<method.name>-<fingerprint>
    direction           dataset.higher_is_better (when hydra.sweeper.direction is null)
    searched losses     search.losses, else method.search_losses: the loss weights searched
    pruner              search.pruner, which needs search.eval_every
    re-evaluation       search.reevaluate_top_k/_seeds/_seed_offset from seed and search.seeds_per_trial;
                        a run gets ++seed, ++search.seeds_per_trial and ++search.reevaluation_of, and
                        its trial.json holds its per-seed scores
    warm starts         search.warm_start (inline), best_hparams.yaml entries (lr / trainer.base_lr)
    fingerprint         the keys that never change a trial's objective
    outputs             best_hparams.yaml (best_hparams: the chosen trial as Hyperparameters) and,
                        at the end, the study's W&B run (autoft.reporting.wandb_logger.log_study)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from omegaconf import OmegaConf

from autoft.errors import UserError
from autoft.hparams import HPARAMS_FIELDS, Hyperparameters, search_params
from autoft.names import LOSS_PREFIX, SEARCHED_LOSSES, SEED_KEY
from autoft.records import HPARAMS_FILE, TRIAL_FILE, read_trial, write_best_hparams
from autoft.search import reevaluation as rv
from autoft.search import study as su
from autoft.search.app import SearchApp
from autoft.values import finite, must, plain

log = logging.getLogger(__name__)

# keys that never change a trial's objective: changing them must resume the same study
FINGERPRINT_EXCLUDE = ["hydra", "device", "data_root", "cache_dir", "logger", "hparams", "weights_from", "budget",
                       "search.n_trials",
                       "dataset.passes_per_epoch", "trainer.epochs", "trainer.num_workers",
                       "trainer.eval_batch_size", "trainer.compile", "trainer.channels_last", "trainer.image_cache",
                       "trainer.image_cache_dir", "search.warm_start", "search.bootstrap",
                       # re-evaluation happens after the search: changing it must resume the same study
                       "search.reevaluate_top_k", "search.reevaluate_seeds", "search.reevaluate_seed_offset",
                       "search.reevaluation_of"]
# keys added after studies were made, at the value those studies were searched with: left out of the
# fingerprint at that value, so such a study keeps its name and resumes; any other value is another study
NEUTRAL_DEFAULTS = {"search.regenerate_head": False}
WARM_START_KEYS = (*HPARAMS_FIELDS, "params")


def loss_filter(losses: Optional[Iterable[str]]) -> Optional[Callable[[str], bool]]:
    """search.losses: the loss weights searched (None: all); the others keep the method's weight."""
    if losses is None:
        return None
    keep = list(losses)
    unknown = sorted(set(keep) - set(SEARCHED_LOSSES))
    if unknown:
        raise UserError(f"search.losses: unknown or unsearchable loss term(s) {unknown}; valid: "
                        f"{', '.join(SEARCHED_LOSSES)} (ce is fixed to 1)")
    return lambda key: not key.startswith(LOSS_PREFIX) or key[len(LOSS_PREFIX):] in keep


def warm_start_values(entry: Mapping[str, Any], base_lr: Optional[float]) -> dict[str, Any]:
    """A best_hparams.yaml mapping (or a warm-start entry) as override keys; lr / base_lr -> lr_scale."""
    return {**search_params(entry, base_lr), **(entry.get("params") or {})}


def _select(config, key: str, default=None):
    if config is None:
        return default
    try:
        return OmegaConf.select(config, key, default=default)
    except Exception:
        return default


class AutoftApp(SearchApp):
    """train.py as the search sees it (see the module's docstring)."""

    warm_start_keys = WARM_START_KEYS

    def _get(self, key: str, default=None):
        return _select(self.config, key, default)

    @property
    def _search(self) -> Mapping:
        return self._get("search") or {}

    def label(self) -> str:
        parts = [str(self._get(k, "") or "") for k in ("dataset.name", "model.name", "method.name")]
        return "-".join(p for p in parts if p) or "study"

    def direction(self) -> Any:
        hib = self._get("dataset.higher_is_better")
        return "minimize" if hib is None else ("maximize" if bool(hib) else "minimize")

    def space_filter(self) -> Optional[Callable[[str], bool]]:
        losses = self._search.get("losses")
        if losses is None:
            losses = self._get("method.search_losses")
        return loss_filter(plain(losses) if losses is not None else None)

    def pruner(self) -> Any:
        search = self._search
        spec = plain(search.get("pruner"))
        su.make_pruner(spec, key="search.pruner")  # validate before any trial
        if spec not in (None, "none") and search and not int(search.get("eval_every", 0) or 0):
            raise UserError(f"search.pruner={spec} needs intermediate reports: set search.eval_every "
                            "to the number of inner steps between OOD-val evaluations (e.g. search.eval_every=10)")
        return spec

    def fingerprint_exclude(self) -> list[str]:
        return list(FINGERPRINT_EXCLUDE)

    def neutral_defaults(self) -> dict[str, Any]:
        return dict(NEUTRAL_DEFAULTS)

    def study_attrs(self) -> dict[str, Any]:
        return {"metric": self._get("dataset.metric"), "dataset": self._get("dataset.name"),
                "model": self._get("model.name"), "method": self._get("method.name")}

    def warm_starts(self) -> dict[str, Any]:
        return {"search.warm_start": self._search.get("warm_start")}

    def warm_start_values(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return warm_start_values(entry, self._get("trainer.base_lr"))

    def reevaluation(self, space, direction: Any, max_retries: int) -> rv.Plan:
        """`search.reevaluate_top_k`, `_seeds`, `_seed_offset`, checked; the fresh seeds must be new to
        the search (else it re-runs a lucky seed)."""
        search = self._search
        values = {}
        for key, attr, low, default in (("reevaluate_top_k", "top_k", 0, 0), ("reevaluate_seeds", "n_seeds", 1, 2),
                                        ("reevaluate_seed_offset", "seed_offset", 1, 1000)):
            v = search.get(key, default)
            v = default if v is None else v
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError("invalid config: " + must(f"search.{key}", v, f"an integer >= {low}"))
            values[attr] = v
        fixed = {k.lstrip("+"): v for k, v in space.fixed.items()}
        try:
            base = int(fixed.get(SEED_KEY, self._get("seed", 0) or 0))
            k = int(fixed.get("search.seeds_per_trial", search.get("seeds_per_trial", 1)) or 1)
        except (TypeError, ValueError):
            base, k = 0, 1  # not integers: train.py itself reports that
        p = rv.Plan(**values, base_seed=base, direction=direction, max_retries=max_retries)
        if p.enabled:
            clash = sorted(set(p.seeds) & rv.search_seeds(base, k, space.distributions.get(SEED_KEY)))
            if clash:
                raise UserError(f"re-evaluation seeds {p.seeds} include seeds the search used ({clash}); raise "
                                "search.reevaluate_seed_offset above the largest searched seed")
            if isinstance(direction, list):
                raise UserError(f"search.reevaluate_top_k needs a single objective; this study has directions "
                                f"{direction}")
        return p

    def reevaluation_overrides(self, seeds: list[int], number: int) -> list[str]:
        return [f"++{SEED_KEY}={seeds[0]}", f"++search.seeds_per_trial={len(seeds)}",
                f"++search.reevaluation_of={number}"]

    def run_scores(self, run_dir: Path, seeds: list[int]) -> dict:
        """The re-evaluated run's trial.json (per_seed, ci) when it names this re-evaluation's seeds;
        {} when the run wrote none, or the file is another plan's (a run before the seeds changed)."""
        record = read_trial(Path(run_dir) / TRIAL_FILE) or {}
        return record if list(record.get("seeds") or []) == list(seeds) else {}

    def write_outputs(self, study, place, selection, reevaluations, final: bool) -> None:
        """best_hparams.yaml beside the study and in the sweep dir; at the end, the study's W&B run
        (per the config's `logger`), from the files written."""
        from optuna.trial import TrialState

        n_complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        hp = best_hparams(self.config, selection.winner, study_name=place.study_name, storage=place.storage,
                          direction=place.direction, n_complete=n_complete,
                          selection=selection if reevaluations is not None else None)
        write_best_hparams(place.study_dir / HPARAMS_FILE, hp)
        # the study last run in this sweep dir: what `hparams=<sweep dir>/best_hparams.yaml` reads
        write_best_hparams(place.sweep_dir / HPARAMS_FILE, hp)
        if final:
            from autoft.reporting.wandb_logger import log_study

            log_study(self._get("logger"), place.study_dir, place.study_name)

    def summary_files(self, place) -> dict[str, Path]:
        return {"best hyperparameters": place.study_dir / HPARAMS_FILE}


def best_hparams(config, trial, *, study_name: str, storage: str, direction: str, n_complete: int,
                 selection=None) -> Hyperparameters:
    """The chosen trial as the hyperparameters of a final run, with where they came from as records.

    Unsearched values come from the composed config, so the file is complete on its own: all nine
    loss weights (ce 1.0), the lr's scale and the absolute lr (Hyperparameters.values), weight_decay, seed when it
    was searched, and the WiSE-FT alpha the trial chose (search.wise_alphas; else 1). `objective` is
    the trial's search score; its bootstrap interval and per-seed scores follow when the trial
    recorded them. With a re-evaluation `selection` (autoft.search.reevaluation.Selection), the
    re-evaluated score and every candidate's two scores are added, and `selected_by` says which
    score chose the trial.
    """
    params = dict(trial.params)
    records: dict[str, Any] = {
        "objective": float(trial.value), "metric": _select(config, "dataset.metric"), "direction": direction,
        "trial_number": int(trial.number), "study_name": study_name, "storage": storage,
        "n_complete": int(n_complete), "params": params, "dataset": _select(config, "dataset.name"),
        "model": _select(config, "model.name")}
    attrs = trial.user_attrs
    if finite(attrs.get("ci_low")) and finite(attrs.get("ci_high")):
        records["search_ci"] = [float(attrs["ci_low"]), float(attrs["ci_high"])]
    if isinstance(attrs.get("per_seed"), list):
        records["search_per_seed"] = [float(x) for x in attrs["per_seed"]]
    if isinstance(attrs.get("seeds"), list):
        records["search_seeds"] = [int(x) for x in attrs["seeds"]]
    if selection is not None:
        records["selected_by"] = selection.selected_by
        records["search_best_trial"] = int(selection.search_best.number)
        rec = selection.winner_record
        if rec is not None and rec.get("state") == "complete":
            records["reevaluated_objective"] = float(rec["value"])
            records["reevaluated_seeds"] = [int(x) for x in rec["seeds"]]
            if rec.get("per_seed") is not None:
                records["reevaluated_per_seed"] = [float(x) for x in rec["per_seed"]]
            if "ci_low" in rec:
                records["reevaluated_ci"] = [float(rec["ci_low"]), float(rec["ci_high"])]
        records["reevaluation"] = selection.summary()
    defaults = Hyperparameters.from_config(config) if config is not None else None
    return Hyperparameters.from_trial(params, attrs, defaults, records=records)


def best_hparams_from_study(storage: str, study_name: Optional[str] = None,
                            defaults: Optional[Hyperparameters] = None) -> Hyperparameters:
    """The chosen trial of an Optuna study (a finished top-k re-evaluation's winner, else the best
    trial) as the hyperparameters `train.py hparams=<file>` reads. Values the study did not search
    come from `defaults` (the config's, Hyperparameters.from_config); records name the study, the
    trial, its objective, what selected it and the storage (its password masked, as in every output)."""
    import optuna

    from autoft.search.storage import mask_url, normalize_url

    shown = mask_url(storage)  # what messages and the records name: never the URL's password
    try:
        names = [s.study_name for s in optuna.study.get_all_study_summaries(normalize_url(storage),
                                                                            include_best_trial=False)]
    except Exception as err:
        raise UserError(f"cannot open the study storage {shown} ({type(err).__name__}: {err})") from None
    if study_name is None:
        if len(names) != 1:
            raise UserError(f"{shown} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                            "name one with --study-name")
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"study '{study_name}' not in {shown}; it holds: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=normalize_url(storage))
    chosen = rv.chosen_trial_number(study)  # a finished top-k re-evaluation outranks the search score
    try:
        best = study.trials[chosen] if chosen is not None else study.best_trial
    except ValueError:
        raise UserError(f"study '{study_name}' has no completed trial yet") from None
    records = {"study_name": study_name, "trial_number": best.number, "objective": best.value,
               "selected_by": "reevaluation" if chosen is not None else "search", "storage": shown}
    return Hyperparameters.from_trial(best.params, best.user_attrs, defaults, records=records)
