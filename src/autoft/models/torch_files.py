"""Reading torch.save files someone may have handed over (checkpoints, last.pt, weights, caches).

A torch.save file is a pickle: read in full (weights_only=False) it can run any code it names. Every
read here is weights-only: tensors and plain containers (dict, list, tuple, str, numbers, None),
which is all our own payloads hold (save_checkpoint's, run_final's last.pt), so nothing is
allow-listed. A file that names anything else is refused before any of it runs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch


def read_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """torch.load(weights_only=True) onto the CPU; mmap: storages mapped, not read (zip files only)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def why_unreadable(err: Exception) -> str:
    """One line saying why reading a weights or torch file failed: the global a weights-only load
    refused (a pickle that would build objects or run code), else the reader's own error, shortened."""
    text = " ".join(str(err).split())
    refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)  # torch <2.6 / 2.6+ wording
    if refused:
        return (f"it holds Python objects, not only tensors and plain values ({refused.group(1)}); refused unread, "
                f"as loading it could run code")
    return f"truncated or corrupt, or not this format: {type(err).__name__}: {text[:160]}"
