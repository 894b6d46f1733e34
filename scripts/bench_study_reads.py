#!/usr/bin/env python
"""Benchmark of the study reads behind a search's bookkeeping: one whole-study read (what counting
toward n_trials, the stale-trial check, the sampler and the outputs each do, several times per trial)
through the search's storage (autoft.search.storage.open_storage: Optuna's trial cache, so a finished
trial is read from the database once) against the same outage wrapper around a bare RDBStorage (every
read fetches every trial), on one SQLite study per size, in one run.

    python scripts/bench_study_reads.py                      # 20, 200 and 1000 finished trials
    python scripts/bench_study_reads.py --trials 50,500 --storage postgresql://postgres@127.0.0.1/test
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def per_read(storage, name: str, reads: int) -> float:
    """Seconds per `study.get_trials()` on a warm study handle."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    study.get_trials(deepcopy=False)
    t0 = time.perf_counter()
    for _ in range(reads):
        study.get_trials(deepcopy=False)
    return (time.perf_counter() - t0) / reads


def measure(url: str, n: int, reads: int) -> dict:
    import optuna

    from autoft.search import outage, storage

    name = f"bench-reads-{n}-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=storage.open_storage(url), direction="maximize")
    for i in range(n):  # trials as the search leaves them: two parameters, a worker tag, a value
        trial = study.ask()
        trial.suggest_float("lr_scale", 0.1, 10, log=True)
        trial.suggest_float("weight_decay", 0.0, 1.0)
        trial.set_user_attr("worker", "host:1")
        study.tell(trial, float(i))
    url = storage.normalize_url(url)
    cached = per_read(storage.open_storage(url), name, reads)
    bare = per_read(storage.resilient_storage(lambda: optuna.storages.RDBStorage(url), outage.Outage(url)), name, reads)
    optuna.delete_study(study_name=name, storage=url)
    return {"trials": n, "cached_ms": 1e3 * cached, "bare_ms": 1e3 * bare, "ratio": bare / cached}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", default="20,200,1000", help="study sizes, comma-separated")
    ap.add_argument("--reads", type=int, default=20, help="reads timed per size")
    ap.add_argument("--storage", default=None, help="a storage URL (default: a SQLite file in a temporary folder)")
    args = ap.parse_args(argv)
    from autoft.search.storage import quiet_optuna

    quiet_optuna()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        rows = [measure(url, int(n), args.reads) for n in args.trials.split(",") if n.strip()]
    print("| finished trials | one study read, cached (ms) | bare RDBStorage (ms) | bare / cached |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['trials']} | {r['cached_ms']:.2f} | {r['bare_ms']:.2f} | {r['ratio']:.1f}x |")
    return rows


if __name__ == "__main__":
    main()
