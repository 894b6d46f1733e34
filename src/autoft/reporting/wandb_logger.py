"""Weights & Biases logging that can never stop training.

One W&B run per search trial (group = the study, job_type = "trial") and per final run
(job_type = "final"); config = the run's hyperparameters, summary = every metric (flattened as
`split/metric`, `wise/<a>/split/metric`). `make_tables` logs the tables and plots as an artifact
(job_type = "report").

Mode (logger.mode): `auto` uses WANDB_MODE when it is set, else `online` when an API key is configured
(WANDB_API_KEY or a `wandb login` netrc entry) and `offline` otherwise: offline runs are written
under the run's output directory and sync later with `wandb sync <dir>/wandb/offline-run-*`.

Every call is guarded: a W&B error (no network, full disk, bad setting) logs one warning and turns
the run into a no-op. Under torch.distributed launchers only rank 0 logs; sequential launchers
(many trials in one process) finish the previous run before starting the next one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import netrc
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


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
        from autoft.errors import UserError
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


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """{'id_test': {'accuracy': 0.5}} -> {'id_test/accuracy': 0.5}; lists and non-numbers kept as leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric of a final run's results record, flattened (per-epoch history excluded)."""
    out = flatten(record.get("metrics", {}))
    out.update(flatten(record.get("wise", {}), "wise"))
    for k in ("selected_epoch", "seconds"):
        if k in record:
            out[k] = record[k]
    return out


class WandbRun:
    """A live W&B run behind guards; `WandbRun(None)` is the no-op used when logging is off."""

    def __init__(self, run=None):
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def dir(self) -> Optional[Path]:
        return Path(self.run.dir).parent if self.run is not None else None

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
                run.finish(exit_code=1, quiet=True)
            except Exception:
                pass
            return None

    def log(self, data: Mapping[str, Any], step: Optional[int] = None) -> None:
        self._guard("log", lambda: self.run.log(flatten(data), step=step))

    def summary(self, data: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(flatten(data)))

    def config(self, data: Mapping[str, Any]) -> None:
        self._guard("config", lambda: self.run.config.update(dict(data), allow_val_change=True))

    def artifact(self, name: str, kind: str, paths: Iterable[str | Path], metadata: Optional[dict] = None) -> None:
        def upload():
            import wandb
            art = wandb.Artifact(name, type=kind, metadata=metadata or {})
            for p in paths:
                art.add_file(str(p), name=Path(p).name)
            self.run.log_artifact(art)
        self._guard("artifact", upload)

    def images(self, paths: Iterable[str | Path]) -> None:
        def upload():
            import wandb
            self.run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths})
        self._guard("images", upload)

    def table(self, key: str, rows: list[dict]) -> None:
        def upload():
            import wandb
            cols = list(rows[0]) if rows else []
            self.run.log({key: wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})
        self._guard("table", upload)

    def log_epoch(self, epoch: int, results: Mapping[str, Any]) -> None:
        """run_final's on_epoch_end hook: the epoch's training loss and ID-val metrics, under train/
        (the summary's id_val/* are those of the selected epoch's model, logged at the end)."""
        last = results["epochs"][-1]
        self.log({"epoch": epoch, "train": {"loss": last["loss"], "id_val": last["id_val"]}})

    @contextlib.contextmanager
    def closing(self):
        """Finish the run when the block ends; a failed block marks the run failed and re-raises."""
        try:
            yield self
        except BaseException:
            self.finish(exit_code=1)
            raise
        self.finish()

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as err:
                log.warning("W&B finish failed (%s: %s)", type(err).__name__, err)


def start_run(*, enabled: bool, project: str, job_type: str, name: str, config: Mapping[str, Any],
              out_dir: str | Path, group: Optional[str] = None, entity: Optional[str] = None,
              mode: str = "auto", tags: Iterable[str] = (), wandb_dir: Optional[str | Path] = None,
              init_timeout: float = 90.0) -> WandbRun:
    """Start a run, or return a no-op one (logging off, not rank 0, or W&B failed to start)."""
    if not enabled or not is_main_process():
        return WandbRun(None)
    resolved = resolve_mode(mode)
    if resolved == "disabled":
        return WandbRun(None)
    root = Path(wandb_dir or os.environ.get("WANDB_DIR") or out_dir)
    try:
        import wandb

        root.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, entity=entity or None, group=group, job_type=job_type, name=name,
                         config=dict(config), dir=str(root), mode=resolved, tags=list(tags) or None,
                         reinit="finish_previous",  # trials run one after another in one process
                         settings=wandb.Settings(silent=True, console="off", init_timeout=init_timeout))
        log.info("W&B %s run %s (%s) in %s", resolved, run.id, job_type, root)
        return WandbRun(run)
    except Exception as err:  # never let W&B stop training
        log.warning("W&B could not start (%s: %s); continuing without it", type(err).__name__, err)
        return WandbRun(None)


def from_config(logger_cfg: Optional[Mapping[str, Any]], *, job_type: str, name: str, config: Mapping[str, Any],
                out_dir: str | Path, group: Optional[str] = None, tags: Iterable[str] = ()) -> WandbRun:
    """start_run from the `logger` config group (conf/logger/*.yaml)."""
    cfg = dict(logger_cfg or {})
    return start_run(enabled=bool(cfg.get("wandb", False)), project=cfg.get("project") or "autoft",
                     entity=cfg.get("entity"), mode=cfg.get("mode") or "auto", job_type=job_type, name=name,
                     config=config, out_dir=out_dir, group=group, tags=[*(cfg.get("tags") or []), *tags],
                     wandb_dir=cfg.get("dir"))


def run_config(cfg, hp: Mapping[str, Any]) -> dict[str, Any]:
    """W&B config of a train.py run: its hyperparameters plus what identifies it."""
    t = cfg.trainer
    budget = {"epochs": int(t.epochs)} if cfg.phase == "final" else {"inner_steps": int(t.inner_steps)}
    return {"phase": cfg.phase, "dataset": cfg.dataset.name, "model": cfg.model.name, "method": cfg.method.name,
            "seed": int(cfg.seed), "batch_size": int(t.batch_size), **budget,
            **{k: v for k, v in hp.items() if k != "source"}, "hparams_source": hp.get("source")}


def for_run(cfg, hp: Mapping[str, Any], out_dir: str | Path, job_type: str) -> WandbRun:
    """The W&B run of one train.py job: job_type "trial" (group = the study) or "final" (group =
    dataset/model/method, so that W&B aggregates the seeds)."""
    ident = f"{cfg.dataset.name}/{cfg.model.name}"
    if job_type == "trial":
        search = cfg.get("search") or {}
        group = search.get("study_name") or f"{ident}/search-{cfg.method.name}"
        number = search.get("trial_number")
        name = f"trial-{number}" if number is not None else f"trial-{Path(out_dir).name}"
    else:
        group = f"{ident}/{cfg.method.name}"
        name = f"{cfg.method.name}-seed{int(cfg.seed)}"
    return from_config(cfg.get("logger"), job_type=job_type, name=name, group=group,
                       config=run_config(cfg, hp), out_dir=out_dir)


def trial_summary(trial_file: str | Path, objective: float) -> dict[str, Any]:
    """Every metric of a search trial: the objective, per-seed scores, OOD-val metrics, CI."""
    out: dict[str, Any] = {"objective": objective}
    try:
        rec = json.loads(Path(trial_file).read_text())
    except (OSError, ValueError):
        return out
    for k in ("per_seed", "ci"):
        if k in rec:
            out[k] = rec[k]
    runs = rec.get("runs") or ([rec] if "ood_val" in rec else [])
    if runs:
        out["ood_val"] = runs[0].get("ood_val", {})
        for k in ("final_loss", "peak_lr", "seconds"):
            if k in runs[0]:
                out[k] = runs[0][k]
    return out


# ------------------------------------------------------------------------------------------------
# reading offline runs back (tests, and checking what a run will sync)

_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    """Payloads of a .wandb transaction log (LevelDB-style log: 32 KiB blocks of 7-byte-header chunks)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    out, parts, pos = [], [], _HEADER
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        payload = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(payload)
        elif kind == _FIRST:
            parts = [payload]
        elif kind == _MIDDLE:
            parts.append(payload)
        elif kind == _LAST:
            out.append(b"".join(parts + [payload]))
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, summary, history and artifacts of an offline run directory (offline-run-*)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": [], "run": {}}
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                          "name": r.display_name, "tags": list(r.tags)}
            for item in r.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type,
                                     "files": [e.path for e in a.manifest.contents]})
    out["config"].pop("_wandb", None)
    return out


def offline_runs(root: str | Path) -> list[Path]:
    """offline-run-* directories under root (any depth), oldest first."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
