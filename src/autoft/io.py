"""Files that outlive a kill: atomic writes never leave a half-written file behind (results, caches,
checkpoints, study outputs, downloads), and a JSON-lines journal keeps every line appended before it
(a line the kill cut is where reading stops)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """`write(tmp)` fills a temporary file beside `path` (`.<name>.<random><suffix>`), which then
    replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_file(path: Path, suffix: str) -> str:
    """A new empty file beside `path`, made as open() makes one (mode 0o666 less the umask), so that
    the other users of a shared folder read what a plain write would let them (mkstemp's 0o600 would
    hide results from them)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:  # another writer's name: draw again
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically (torch is imported here only: io.py stays importable without it)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(x):
    """What json cannot write itself: a tensor or numpy value as its number or (nested) list (tolist:
    item() refuses more than one element), anything else as text."""
    return x.tolist() if hasattr(x, "tolist") else str(x)


def append_json_lines(path: str | Path, rows: list[dict], mode: str = "a") -> None:
    """JSON lines, flushed to disk before returning (a journal must outlive a kill); mode "w" rewrites."""
    with open(path, mode) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())


def read_json_lines(path: str | Path) -> list[dict]:
    """The lines of a JSON-lines journal up to the first one a kill cut ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            break
    return out
