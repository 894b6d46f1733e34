"""Reading W&B offline runs back from their files, without W&B's servers: what a run will upload
when synced (autoft.reporting.wandb_sync), what a resumed run already holds (held_step), whether a
finished run's log is complete (wait_for_exit_record, for wandb_logger.WandbRun.finish), and what
the tests check.

An offline run directory (offline-run-<time>-<id>) holds its transaction log, run-<id>.wandb: W&B's
records (protobuf, wandb.proto.wandb_internal_pb2.Record) in a LevelDB-style log of 32 KiB blocks,
each record one chunk or split over several (first, middle, last), every chunk behind a 7-byte header
(crc32, length, kind). A resumed run writes one directory per start, all with the run's id; a start
within the same second as the last one gets W&B's suffix (offline-run-<time>-<id>-1), so a run's parts
are found by their log's name, run-<id>.wandb, not by the directory's.
"""
from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

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
        if pos + 7 + length > len(data):  # a chunk still being written, or cut by a kill
            break
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


def has_exit_record(path: str | Path) -> bool:
    """True once a .wandb transaction log holds its run's exit record (the last record written)."""
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        raws = _records(Path(path))
        rec = pb.Record()
        rec.ParseFromString(raws[-1])
    except Exception:  # noqa: BLE001 (not there yet, no record yet, or a torn last record)
        return False
    return rec.WhichOneof("record_type") == "exit"


def wait_for_exit_record(path: Path, timeout: float = 60.0) -> None:
    """Wait until wandb's service has written a finished run's transaction log (see WandbRun.finish);
    a log still without its exit record after `timeout` seconds is one warning."""
    deadline = time.monotonic() + timeout
    while not has_exit_record(path):
        if time.monotonic() > deadline:
            log.warning("W&B: %s has no exit record %gs after the run finished; reading it back may "
                        "find it incomplete", path, timeout)
            return
        time.sleep(0.02)


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, summary, history and artifacts of an offline run directory (offline-run-*)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": [], "run": {}, "metrics": {},
                           "output": ""}
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            fields = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                      "name": r.display_name, "tags": list(r.tags)}
            out["run"].update({k: v for k, v in fields.items() if v or k not in out["run"]})  # later: updates
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
                                     "files": [e.path for e in a.manifest.contents],
                                     "refs": [e.ref for e in a.manifest.contents if e.ref]})
        elif kind == "exit":
            out["run"]["exit_code"] = rec.exit.exit_code
        elif kind == "metric":  # define_metric: the x-axis of a key or glob
            m = rec.metric
            if m.step_metric:
                out["metrics"][m.name or m.glob_name] = m.step_metric
        elif kind in ("output", "output_raw"):  # console capture
            out["output"] += getattr(rec, kind).line
    out["config"].pop("_wandb", None)
    return out


def read_run(root: str | Path, run_id: str) -> dict[str, Any]:
    """One W&B run as the server will hold it once every offline directory with its id is synced
    (a resumed run writes one directory per start; `wandb sync` uploads them in start order): config
    and summary updated in that order, history and artifacts concatenated, `parts` the count."""
    parts = [read_offline_run(p) for p in parts_of(root, run_id)]
    if not parts:
        raise FileNotFoundError(f"{root}: no offline run with id {run_id}")
    out = {**parts[0], "config": {}, "summary": {}, "history": [], "artifacts": [], "output": "", "parts": len(parts)}
    for part in parts:
        for k in ("config", "summary", "metrics"):
            out[k] = {**out.get(k, {}), **part[k]}
        out["history"] += part["history"]
        out["artifacts"] += part["artifacts"]
        out["output"] += part["output"]
    return out


def held_step(root: str | Path, run_id: str, but: Optional[Path] = None) -> int:
    """The last step the offline directories of run `run_id` under root hold (0: none), leaving out
    `but` (the part being written now); a part cut short is read as far as it goes."""
    held = 0
    for part in parts_of(root, run_id):
        if part != but:
            try:
                held = max([held, *(h.get("_step", 0) for h in read_offline_run(part)["history"])])
            except Exception:  # noqa: BLE001 (a torn file holds nothing usable)
                pass
    return held


def offline_runs(root: str | Path) -> list[Path]:
    """offline-run-* directories under root (any depth), oldest first."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def parts_of(root: str | Path, run_id: str) -> list[Path]:
    """The offline directories of run `run_id` under root, in start order: those holding run-<id>.wandb."""
    return [p for p in offline_runs(root) if (p / f"run-{run_id}.wandb").is_file()]

