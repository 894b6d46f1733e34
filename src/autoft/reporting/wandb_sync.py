"""Upload the offline W&B runs under a folder, from any shell (no globstar needed):

    python -m autoft.reporting.wandb_sync outputs/              # every offline run not yet synced
    python -m autoft.reporting.wandb_sync outputs/ --dry-run    # list them, upload nothing
    make wandb-sync                                             # the same for outputs/

It finds the offline-run-* folders at any depth and hands them to `wandb sync` in one call, so a
resumed run (one folder per start, same id) is uploaded as one run, its parts in start order. Folders
that `wandb sync` already uploaded (it leaves a .wandb.synced file) are skipped unless --include-synced.
Other options (--project, --entity, ...) pass through to `wandb sync`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from autoft.reporting.wandb_offline import offline_runs, read_offline_run


def pending(root: str | Path, include_synced: bool = False) -> list[Path]:
    """Offline run folders under root that still need uploading, oldest first. A folder whose log
    holds no run (its process was killed before W&B wrote anything; the resumed part of the run
    replays what it lost) is left out: `wandb sync` has nothing to upload from it."""
    return [p for p in offline_runs(root) if (include_synced or not any(p.glob("*.wandb.synced"))) and _holds_run(p)]


def _holds_run(folder: Path) -> bool:
    try:
        return bool(read_offline_run(folder)["run"])
    except Exception:  # noqa: BLE001 (a torn or foreign file: let wandb sync judge it)
        return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default="outputs", help="folder to search (default: outputs)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be uploaded (wandb sync --dry-run)")
    ap.add_argument("--include-synced", action="store_true", help="upload folders already synced too")
    args, extra = ap.parse_known_args(argv)
    runs = pending(args.root, args.include_synced)
    if not runs:
        print(f"no offline W&B runs to sync under {args.root}")
        return 0
    ids = {p.name.rsplit("-", 1)[-1] for p in runs}
    print(f"{len(runs)} offline run folder(s), {len(ids)} run(s), under {args.root}", flush=True)
    cmd = [sys.executable, "-m", "wandb", "sync", *(["--dry-run"] if args.dry_run else []),
           *(["--include-synced"] if args.include_synced else []), *extra, *map(str, runs)]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
