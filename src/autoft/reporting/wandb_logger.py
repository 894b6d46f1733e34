"""Weights & Biases logging that can never stop training.

What each run type holds (README "Baselines, tables, W&B"):
- trial (group = the study): the sampled hyperparameters as flat config keys (`lr_scale`,
  `weight_decay`, `loss_weights/<term>`), `train/loss` and `train/lr` every `logger.log_every_n_steps`
  steps and `val/ood_val` every `search.eval_every` steps against `global_step`, and the objective,
  OOD-val metrics and chosen WiSE-FT alpha in the summary; a pruned trial finishes (not failed),
  tagged `pruned`;
- final (group = dataset/model/method): the same per-step curves, per-epoch `val/id_val/*` and
  `val/objective` against `epoch`, every split's metrics and `ood_mean/<metric>` in the summary, the
  WiSE-FT curve as a table with two line plots, results.json and the selected checkpoint as artifacts
  (the checkpoint by reference unless `logger.upload_checkpoint`), the console log, and
  `hparams_study`/`hparams_trial` when the hyperparameters came from a search;
- study (one per study): see `log_study`; report (one per results folder): see report.log_to_wandb.
The config and summary values come from wandb_summary.py (pure functions of the records); offline
runs are read back by wandb_offline.py.

Run ids are derived from what the run is (the study and trial number, or the run's directory), and
runs start with resume="allow": a rerun continues its run instead of adding one. Per-step values
are buffered on the host and written at epoch ends, after last.pt: a killed run's history stops at
its last checkpoint, and its resumed run continues from there, so the history has no gap and no
duplicate step.

Mode (logger.mode): `auto` uses WANDB_MODE when it is set, else `online` when an API key is configured
(WANDB_API_KEY or a `wandb login` netrc entry) and `offline` otherwise: offline runs are written
under the run's output directory and sync later with `python -m autoft.reporting.wandb_sync outputs/`.
An online start that fails within `logger.init_timeout` seconds falls back to offline (one warning,
and the process's later runs go offline at once).

Every call is guarded: a W&B error (no network, full disk, bad setting) logs one warning and turns
the run into a no-op. Under torch.distributed launchers only rank 0 logs; sequential launchers
(many trials in one process) finish the previous run before starting the next one.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import urlparse

from autoft.errors import UserError
from autoft.io import append_json_lines, read_json_lines
from autoft.records import HPARAMS_FILE, MODEL_FILE, RESULTS_FILE, read_best_hparams
from autoft.reporting.wandb_offline import held_step, wait_for_exit_record
from autoft.reporting.wandb_summary import flatten, run_config, study_summary, summary_of, typed_columns, wise_rows

log = logging.getLogger(__name__)

from autoft.names import WANDB_MODES as MODES  # noqa: E402  (the one list: autoft.names)


def api_key_configured() -> bool:
    """True when `wandb login` (netrc) or WANDB_API_KEY provides a key; never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str = "auto") -> str:
    if mode not in MODES:
        raise UserError(f"logger.mode must be one of {', '.join(MODES)}, got '{mode}'")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if api_key_configured() else "offline"


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job (torchrun sets RANK), or any process outside one."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def run_id(*parts: Any) -> str:
    """A run id that is the same whenever the same run starts again (from the study and trial number,
    or the run's directory): a rerun resumes its W&B run instead of adding a second one."""
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


class WandbRun:
    """A live W&B run behind guards; `WandbRun(None)` is the no-op used when logging is off.

    Per-step values (`record_step`, `record_ood_val`) are kept on the host, keyed by step, and
    written by `flush` (at epoch ends, and when the run finishes): no W&B call on the hot path."""

    def __init__(self, run=None, log_every: int = 1, journal: bool = False):
        self.run = run
        self.log_every = max(1, int(log_every))
        self.step = 0  # the last optimiser step seen
        self.metric: Optional[str] = None  # the objective metric (final runs' `val/objective`)
        self._rows: dict[int, dict] = {}
        # final runs: every flushed row also goes to a journal beside the run, read back on resume
        self.journal = Path(run.dir).parents[1] / f"history-{run.id}.jsonl" if run is not None and journal else None
        self._first_step = True

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def dir(self) -> Optional[Path]:
        return Path(self.run.dir).parent if self.run is not None else None

    @property
    def on_step(self):
        """The Finetuner step callback, None when logging is off (nothing then runs per step)."""
        return self.record_step if self.run is not None else None

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # W&B trouble must never stop training
            log.warning("W&B %s failed (%s: %s); W&B logging is off for the rest of this run", what,
                        type(err).__name__, err)
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1)
            except Exception:
                pass
            return None

    def record_step(self, step: int, info: Mapping[str, Any]) -> None:
        """Every `log_every` steps: the step's loss and lr (host floats already: the engine syncs once
        per step for its divergence check, so this adds no device sync)."""
        self.step = step
        if self._first_step:
            self._first_step = False
            if step > 1 and self.journal is not None:  # a resumed run
                self._guard("log", self._replay, step)
            elif self.journal is not None and self.journal.is_file():  # a fresh start: an old journal is stale
                self.journal.unlink()
        if step % self.log_every == 0:
            self._rows.setdefault(step, {"global_step": step}).update({"train/loss": info["loss"], "train/lr": info["lr"]})

    def record_ood_val(self, step: int, value: float) -> None:
        """An intermediate OOD-val objective (search.eval_every)."""
        self._rows.setdefault(step, {"global_step": step})["val/ood_val"] = value

    def flush(self, extra: Optional[Mapping[str, Any]] = None) -> None:
        """Write the buffered rows as history (explicit steps = optimiser steps), `extra` at the last."""
        rows, self._rows = self._rows, {}
        if extra:
            rows.setdefault(self.step, {"global_step": self.step}).update(flatten(extra))

        def write():
            for s in sorted(rows):
                self.run.log(rows[s], step=s)
            if self.journal is not None:
                append_json_lines(self.journal, [rows[s] for s in sorted(rows)])
        if rows:
            self._guard("log", write)

    def _replay(self, step: int) -> None:
        """A resumed run's first step: W&B writes a run's data in buffers that a killed process takes
        with it, so the rows of the checkpointed steps (< step) that no earlier part of this run holds
        are logged again from the journal; rows after the checkpoint are dropped from it."""
        rows = [r for r in read_json_lines(self.journal) if r.get("global_step", 0) < step]
        held = self._held_step()
        for r in rows:
            if r["global_step"] > held:
                self.run.log(r, step=r["global_step"])
        append_json_lines(self.journal, rows, mode="w")

    def _held_step(self) -> int:
        """The last step this run's earlier parts hold: the server's (online), else the offline
        directories' with this id (a part cut short is read as far as it goes)."""
        if not self.run.offline:
            return max(0, int(getattr(self.run, "starting_step", 0) or 0) - 1)
        return held_step(self.journal.parent, self.run.id, but=Path(self.run.dir).parent)

    def log(self, data: Mapping[str, Any], step: Optional[int] = None) -> None:
        self._guard("log", lambda: self.run.log(flatten(data), step=step))

    def summary(self, data: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(flatten(data)))

    def config(self, data: Mapping[str, Any]) -> None:
        self._guard("config", lambda: self.run.config.update(dict(data), allow_val_change=True))

    def tag(self, *tags: str) -> None:
        self._guard("tags", lambda: setattr(self.run, "tags", tuple(dict.fromkeys([*self.run.tags, *tags]))))

    def artifact(self, name: str, kind: str, paths: Iterable[str | Path], metadata: Optional[dict] = None,
                 reference: bool = False) -> None:
        """Log files as one artifact (its name made valid, _artifact_name); `reference`: record them by
        their local path, uploading nothing."""
        def upload():
            import wandb
            art = wandb.Artifact(_artifact_name(name), type=kind, metadata=metadata or {})
            for p in paths:
                if reference:  # no checksum: a ViT-L/14 checkpoint is 1.7 GB to read
                    art.add_reference(Path(p).resolve().as_uri(), name=Path(p).name, checksum=False)
                else:
                    art.add_file(str(p), name=Path(p).name)
            self.run.log_artifact(art)
        self._guard("artifact", upload)

    def images(self, paths: Iterable[str | Path]) -> None:
        def upload():
            import wandb
            self.run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths})
        self._guard("images", upload)

    def table(self, key: str, rows: list[dict], lines: Optional[Mapping[str, tuple[str, str]]] = None) -> None:
        """A wandb.Table, with a line plot per `lines` entry (key -> (x column, y column))."""
        def upload():
            import wandb
            cols = list(rows[0]) if rows else []
            table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
            plots = {k: wandb.plot.line(table, x, y, title=f"{y} vs {x}") for k, (x, y) in (lines or {}).items()}
            self.run.log({key: table, **plots})
        self._guard("table", upload)

    def log_epoch(self, epoch: int, results: Mapping[str, Any]) -> None:
        """run_final's on_epoch_end hook: the epoch's buffered steps, then its mean loss, ID-val
        metrics and objective against `epoch`."""
        last = results["epochs"][-1]
        row = {"epoch": epoch, "train": {"epoch_loss": last["loss"]}, "val": {"id_val": last["id_val"]}}
        if self.metric in last["id_val"]:
            row["val"]["objective"] = last["id_val"][self.metric]
        self.flush(row)

    def log_final(self, record: Mapping[str, Any], out_dir: Path, upload_checkpoint: bool = False) -> None:
        """A final run's end: summary, WiSE-FT curve, results.json and the selected checkpoint. Any
        error here (ours or W&B's) is one warning: the results are already on disk."""
        self._guard("final logging", self._log_final, record, out_dir, upload_checkpoint)

    def _log_final(self, record: Mapping[str, Any], out_dir: Path, upload_checkpoint: bool) -> None:
        self.summary(summary_of(record))
        rows = wise_rows(record)
        if rows:
            lines = {"wise/id_test_vs_alpha": ("alpha", "id_test")}
            if "ood_mean" in rows[0]:
                lines["wise/ood_mean_vs_alpha"] = ("alpha", "ood_mean")
            self.table("wise/curve", rows, lines=lines)
        if self.run is None:
            return
        meta = {k: record.get(k) for k in ("dataset", "model", "method", "seed", "objective_metric")}
        self.artifact(f"results-{self.run.id}", "results", [out_dir / RESULTS_FILE], metadata=meta)
        if (out_dir / MODEL_FILE).is_file():
            self.artifact(f"model-{self.run.id}", "model", [out_dir / MODEL_FILE],
                          metadata={**meta, "selected_epoch": record.get("selected_epoch")},
                          reference=not upload_checkpoint)

    @contextlib.contextmanager
    def closing(self):
        """Finish the run when the block ends; a failed block marks the run failed and re-raises.
        A pruned trial (optuna.TrialPruned) is an ordinary end: finished, tagged `pruned`."""
        try:
            yield self
        except BaseException as err:
            if type(err).__name__ == "TrialPruned":  # by name: optuna is not imported for trials outside a search
                self.summary({"pruned": True, "pruned_at_step": self.step})
                self.tag("pruned")
                self.finish()
            else:
                self.finish(exit_code=1)
            raise
        self.finish()

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run; an offline run returns once its transaction log holds the exit record.

        wandb's `Run.finish` returns when its service process has handled the exit record, but the
        service writes the run's .wandb file in buffers that it flushes when it closes the run's
        stream, on a message sent without waiting for an answer (`inform_finish`). Reading the
        run back right after `Run.finish` (the tests, or a resumed run's `_held_step`) could find
        an empty or partial file, so an offline run's finish waits for that file to be complete."""
        if self.run is not None:
            self.flush()
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
                if run.offline and not run.settings.x_skip_transaction_log:
                    wait_for_exit_record(Path(run.settings.sync_file))
            except Exception as err:
                log.warning("W&B finish failed (%s: %s)", type(err).__name__, err)


_STEP_METRICS = {"final": {"train/*": "global_step", "val/*": "epoch"},
                 "trial": {"train/*": "global_step", "val/*": "global_step"}}
_OFFLINE_FALLBACK = False  # an online start failed in this process: later runs go offline at once


def start_run(*, enabled: bool, project: str, job_type: str, name: str, config: Mapping[str, Any],
              out_dir: str | Path, group: Optional[str] = None, entity: Optional[str] = None,
              mode: str = "auto", tags: Iterable[str] = (), wandb_dir: Optional[str | Path] = None,
              run_id: Optional[str] = None, console: str = "off", init_timeout: float = 30.0,
              log_every: int = 1, journal: bool = False) -> WandbRun:
    """Start (or, with `run_id`, resume) a run, or return a no-op one (logging off, not rank 0, or
    W&B failed to start). An online start that fails falls back to offline."""
    global _OFFLINE_FALLBACK
    if not enabled or not is_main_process():
        return WandbRun(None)
    resolved = resolve_mode(mode)
    if resolved == "disabled":
        return WandbRun(None)
    if resolved == "online" and _OFFLINE_FALLBACK:
        resolved = "offline"
    root = Path(wandb_dir or os.environ.get("WANDB_DIR") or out_dir)
    try:
        import wandb

        root.mkdir(parents=True, exist_ok=True)

        def init(how: str):
            return wandb.init(project=project, entity=entity or None, group=group, job_type=job_type, name=name,
                              config=dict(config), dir=str(root), mode=how, tags=list(tags) or None,
                              id=run_id, resume="allow" if run_id else None,
                              reinit="finish_previous",  # trials run one after another in one process
                              # trials: no system-metrics sampler beside the (short) training loop
                              settings=wandb.Settings(silent=True, console=console, init_timeout=init_timeout,
                                                      x_disable_stats=job_type == "trial"))
        try:
            run = init(resolved)
        except Exception as err:
            if resolved != "online":
                raise
            log.warning("W&B could not start online within %gs (%s: %s); writing offline runs instead (upload "
                        "them later: python -m autoft.reporting.wandb_sync %s)", init_timeout, type(err).__name__,
                        " ".join(str(err).split())[:160], root)
            _OFFLINE_FALLBACK, resolved = True, "offline"
            wandb.teardown()  # the failed online run still holds its id in the W&B service
            run = init(resolved)
        for glob, step_metric in _STEP_METRICS.get(job_type, {}).items():
            run.define_metric(step_metric)
            run.define_metric(glob, step_metric=step_metric)
        log.info("W&B %s run %s (%s) in %s", resolved, run.id, job_type, root)
        return WandbRun(run, log_every, journal=journal)
    except Exception as err:  # never let W&B stop training
        log.warning("W&B could not start (%s: %s); continuing without it", type(err).__name__, err)
        return WandbRun(None)


def from_config(logger_cfg: Optional[Mapping[str, Any]], *, job_type: str, name: str, config: Mapping[str, Any],
                out_dir: str | Path, group: Optional[str] = None, tags: Iterable[str] = (),
                run_id: Optional[str] = None, console: str = "off", journal: bool = False) -> WandbRun:
    """start_run from the `logger` config group (conf/logger/*.yaml)."""
    cfg = dict(logger_cfg or {})
    return start_run(enabled=bool(cfg.get("wandb", False)), project=cfg.get("project") or "autoft",
                     entity=cfg.get("entity"), mode=cfg.get("mode") or "auto", job_type=job_type, name=name,
                     config=config, out_dir=out_dir, group=group, tags=[*(cfg.get("tags") or []), *tags],
                     wandb_dir=cfg.get("dir"), run_id=run_id, console=console, journal=journal,
                     init_timeout=float(cfg.get("init_timeout") or 30.0),
                     log_every=int(cfg.get("log_every_n_steps") or 1))


def make_tables_args(logger_cfg: Optional[Mapping[str, Any]]) -> list[str]:
    """scripts/make_tables.py's W&B options for a composed `logger` config: the tables and plots go
    to W&B whenever the runs did (logger=wandb, the default); [] when W&B is off."""
    cfg = dict(logger_cfg or {})
    if not cfg.get("wandb"):
        return []
    out = ["--wandb", "--wandb-project", str(cfg.get("project") or "autoft"), "--wandb-mode", str(cfg.get("mode") or "auto")]
    return out + (["--wandb-entity", str(cfg["entity"])] if cfg.get("entity") else [])


def for_run(cfg, hp: Mapping[str, Any], out_dir: str | Path, job_type: str,
            origin: Optional[Mapping[str, Any]] = None) -> WandbRun:
    """The W&B run of one train.py job: job_type "trial" (group = the study, id from the study and
    trial number) or "final" (group = dataset/model/method, so that W&B aggregates the seeds; id from
    the run's directory, console captured)."""
    ident = f"{cfg.dataset.name}/{cfg.model.name}"
    where = str(Path(out_dir).resolve())
    if job_type == "trial":
        from autoft.search.trial import hydra_trial_identity

        trial = hydra_trial_identity() or {}
        group = trial.get("study_name") or f"{ident}/search-{cfg.method.name}"
        number = trial.get("number")
        name = f"trial-{number}" if number is not None else f"trial-{Path(out_dir).name}"
        rid = run_id("trial", group, number) if number is not None else run_id("trial", where)
    else:
        group = f"{ident}/{cfg.method.name}"
        name = f"{cfg.method.name}-seed{int(cfg.seed)}"
        rid = run_id("final", where)
    run = from_config(cfg.get("logger"), job_type=job_type, name=name, group=group, run_id=rid,
                      config=run_config(cfg, hp, origin), out_dir=out_dir,
                      console="wrap" if job_type == "final" else "off", journal=job_type == "final")
    run.metric = cfg.dataset.metric
    return run


def log_study(logger_cfg: Optional[Mapping[str, Any]], study_dir: str | Path, study_name: str) -> WandbRun:
    """The study's own W&B run (job_type = study, group = the study, like its trials), from the files
    the sweeper wrote in `study_dir`: the best trial and its hyperparameters in the summary, the plots
    as images, trials.csv as a table, best_hparams.yaml and optimization_results.yaml as an artifact.
    Its id comes from the study name: a resumed search or a finished re-evaluation updates it."""
    import csv

    study_dir = Path(study_dir)
    best = _read_yaml(study_dir / "optimization_results.yaml")
    try:
        hp = read_best_hparams(study_dir / HPARAMS_FILE).values()
    except UserError:  # none yet (no trial completed), or not readable: the summary goes without it
        hp = {}
    csv_file = study_dir / "trials.csv"
    trials = list(csv.DictReader(csv_file.read_text().splitlines())) if csv_file.is_file() else []
    run = from_config(logger_cfg, job_type="study", name=f"study-{study_name}", group=study_name, out_dir=study_dir,
                      run_id=run_id("study", study_name),
                      config={"study_name": study_name, "direction": best.get("direction")})
    with run.closing():
        run.summary(study_summary(best, hp, trials))
        if trials:
            run.table("trials", typed_columns(trials))
        run.images(sorted((study_dir / "plots").glob("*.png")))
        files = [p for p in (study_dir / HPARAMS_FILE, study_dir / "optimization_results.yaml",
                             study_dir / "trials.csv") if p.is_file()]
        if files:
            run.artifact(f"study-{study_name}", "study", files, metadata={"best": best})
    return run


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
