"""What the search asks of the app it sweeps, in one place: `hydra.sweeper.app`.

Hydra's own Optuna sweeper reads no key of the app's config, and neither does autoft.search: what a
search needs to know about its app (the study's name and default direction, which params stay
searched, a pruner, a re-evaluation step, inline warm starts, files of its own beside the study)
is answered by one object, a `SearchApp`. Its answers read no key at all, so a plain Hydra app gets
hydra-optuna-sweeper's behaviour: direction minimize, studies named `study-<fingerprint>`, every
params key searched, no pruner, no re-evaluation, only the sweeper's own files. An app that wants
more names a subclass, or a factory `fn(cfg)` returning one, as `hydra.sweeper.app` (train.py:
autoft.search_app.AutoftApp, set by conf/search/autoft.yaml).

`load_callable` loads every dotpath the sweeper's settings name (app, preflight, custom_search_space).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from autoft.errors import UserError
from autoft.search import reevaluation as rv


def load_callable(path: str, what: str) -> Callable:
    """A function from a dotpath. `fn`, `__main__.fn` or `.<script stem>.fn` name one in the app's
    own script (hydra-optuna-sweeper's examples write `.custom-search-space-objective.configure`)."""
    module_name, _, name = str(path).lstrip(".").rpartition(".")
    main = sys.modules.get("__main__")
    stem = Path(getattr(main, "__file__", "") or "").stem
    try:
        if not module_name or module_name in ("__main__", stem):
            module = main
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"hydra.sweeper.{what} '{path}' cannot be imported: {err}") from None
    if not callable(fn):
        raise UserError(f"hydra.sweeper.{what} '{path}' is not a function")
    return fn


class SearchApp:
    """Every question the search asks of the app it sweeps, answered for a plain Hydra app.

    `config`: the composed sweep config. A subclass answers for its own app from it; the search
    never reads a key of it except through these methods."""

    # the keys that make a mapping one warm-start entry (hydra.sweeper.warm_start files): `params`,
    # override key -> value; an app may add its own hyperparameter keys (warm_start_values maps them)
    warm_start_keys: tuple = ("params",)

    def __init__(self, config):
        self.config = config

    def label(self) -> str:
        """The stem of a derived study name: <label>-<fingerprint>."""
        return "study"

    def direction(self) -> Any:
        """The direction when hydra.sweeper.direction is null (hydra-optuna-sweeper's default)."""
        return "minimize"

    def space_filter(self) -> Optional[Callable[[str], bool]]:
        """Which keys of hydra.sweeper.params stay searched (None: all); a UserError for a bad choice."""
        return None

    def pruner(self) -> Any:
        """The pruner (a name or a {_target_} mapping, autoft.search.study.make_pruner), checked;
        None: no pruning."""
        return None

    def fingerprint_exclude(self) -> list[str]:
        """Keys that never change a trial's objective (hydra.sweeper.fingerprint_exclude's default)."""
        return ["hydra"]

    def neutral_defaults(self) -> dict[str, Any]:
        """Keys added after studies were made -> the value those studies were searched with: left out
        of the fingerprint at that value, so such a study keeps its name and resumes."""
        return {}

    def study_attrs(self) -> dict[str, Any]:
        """User attributes a new study is created with (for readers of the storage)."""
        return {}

    def warm_starts(self) -> dict[str, Any]:
        """Warm starts written in the app's config: origin -> a warm-start mapping (as in a file)."""
        return {}

    def warm_start_values(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """One warm-start entry as override key -> value."""
        return dict(entry.get("params") or {})

    def reevaluation(self, space, direction: Any, max_retries: int) -> rv.Plan:
        """The top-k re-evaluation step once the study is complete (autoft.search.reevaluation);
        checked before any trial. Off by default."""
        return rv.Plan(direction=direction, max_retries=max_retries)

    def reevaluation_overrides(self, seeds: list[int], number: int) -> list[str]:
        """What a re-evaluation run of trial `number` adds to its hyperparameters: its fresh seeds;
        each key set here replaces the trial's own."""
        return []

    def run_scores(self, run_dir: Path, seeds: list[int]) -> dict:
        """A finished re-evaluation run's per-seed scores and interval ({per_seed, ci}; {}: none), for
        the seeds it was given (the record read back must be that run's, not an earlier plan's)."""
        return {}

    def write_outputs(self, study, place, selection, reevaluations, final: bool) -> None:
        """The app's own files beside a study once it has a chosen trial (`selection.winner`); called
        after every trial and at the end (`final`). `place`: autoft.search.outputs.StudyPlace."""

    def summary_files(self, place) -> dict[str, Path]:
        """Files of the app's the search's summary names: what -> path."""
        return {}


def load_app(path: Optional[str], config) -> SearchApp:
    """hydra.sweeper.app: a SearchApp subclass or a factory fn(cfg); null: SearchApp itself."""
    if not path:
        return SearchApp(config)
    app = load_callable(path, "app")(config)
    if not isinstance(app, SearchApp):
        raise UserError(f"hydra.sweeper.app '{path}' gave a {type(app).__name__}, not an "
                        "autoft.search.app.SearchApp")
    return app
