#!/usr/bin/env python
"""Images per second of the live loader and of the image cache, in one run (issue 21's goal: the
cache at least 20x the live pipeline per core).

    python scripts/bench_loader.py --json loader.json                        # a fabricated iWildCam tree
    python scripts/bench_loader.py --root /data --dataset iwildcam --json loader.json [overrides]
    python scripts/bench_loader.py --config-dir ~/myshift-conf --dataset myshift --split sketch   # your shift's YAML

Without --root or --config-dir it fabricates a realistic tree (iWildCam v2.0 layout, 1024x768 JPEGs of about 200 KB,
tests/fabricate.py) in a temporary folder. On the split (--split, default train; its first --images
examples) it measures, in this order and in this one process:

- live per core: decode + OpenAI's preprocessing (autoft.data.loading.UInt8View), one process, one thread;
- the cache build: every core (autoft.data.image_cache.build), seconds and images/s;
- cached per core: shuffled batches of --batch read from the cache (each image checked against its
  crc32), one process, pages warm (the cache of a split is read every epoch);
- both again through a DataLoader with --workers worker processes (the final run's loader);
- identical: every cached image equal to the live one, byte for byte.

`--json FILE` writes every number (keys live_images_per_s_per_core, cached_images_per_s_per_core,
cached_over_live, identical, ...); main(argv) returns the same dict. Shared cores vary about 2x between
runs: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def time_live(view, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        view[i]
    return per_second(n, time.perf_counter() - t0)


def time_cached(view, batch: int, passes: int = 3) -> float:
    """Shuffled batches, as a training epoch reads them; the first pass warms the pages."""
    order = np.random.default_rng(0).permutation(len(view))
    view.batch(order[:batch])
    t0 = time.perf_counter()
    for _ in range(passes):
        for a in range(0, len(order), batch):
            view.batch(order[a: a + batch])
    return per_second(passes * len(order), time.perf_counter() - t0)


def time_loader(split, size: int, view, batch: int, workers: int, images: int) -> float:
    """Images/s through the runs' own loader (autoft.data.loading.loader: shuffled, `workers` persistent
    processes), over epochs until `images` were seen after the first batch (worker start-up excluded)."""
    from autoft.data.loading import loader

    batches = loader(split, size, batch, shuffle=True, num_workers=workers, view=view)
    seen, t0 = 0, None
    while seen < images:
        for x, _ in batches:
            if t0 is None:
                t0 = time.perf_counter()
                continue
            seen += len(x)
    return per_second(seen, time.perf_counter() - t0)


def fabricated_root(folder: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import fabricate

    fabricate.make_iwildcam(folder, n_classes=10, image_size=(1024, 768), per_class=1, sizes={"train": n})
    return folder


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="a dataset folder (data_root); default: fabricate a realistic iWildCam tree")
    ap.add_argument("--dataset", default="iwildcam", help="the dataset config (with --root or --config-dir)")
    ap.add_argument("--config-dir", help="a config directory of yours (train.py --config-dir): --dataset may name its "
                    "dataset/<name>.yaml, which says where the images are")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=96, help="examples of the split to time (its first ones)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, help="default: the model's input size")
    ap.add_argument("--json", dest="out", help="write the numbers as JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides as for train.py")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # per core: one decoding thread

    from prepare_data import model_image_size

    from autoft import cli
    from autoft.config_checks import compose_config
    from autoft.data.image_cache import CachedImages, build, open_cache, spec_for
    from autoft.data.loading import UInt8View

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = bool(args.root or args.config_dir)
        root = Path(args.root) if args.root else None if real else fabricated_root(tmp / "data", args.images)
        dataset = args.dataset if real else "iwildcam"
        cfg = compose_config([f"dataset={dataset}", *([f"data_root={root}"] if root else []), *args.overrides],
                             args.config_dir)
        task = cli.build_task(cfg)
        size = args.image_size or model_image_size(cfg.model)
        splits = {"train": task.train, "id_val": task.id_val, "ood_val": task.ood_val, **task.tests}
        split = splits[args.split]
        indices = np.arange(min(args.images, len(split)))
        subset = split.dataset.select(indices) if len(indices) < len(split) else split.dataset
        live = UInt8View(split, size, indices)
        n = len(live)

        live_rate = time_live(live, n)
        spec = spec_for(subset, dataset, f"{split.name}-bench", size)
        t0 = time.perf_counter()
        build(live, spec, tmp / "caches", progress=False)
        build_s = time.perf_counter() - t0
        view = CachedImages(open_cache(tmp / "caches" / spec.name), np.arange(n), split.labels[indices])
        cached_rate = time_cached(view, args.batch)
        identical = all(torch.equal(view[i][0], live[i][0]) and view[i][1] == live[i][1] for i in range(n))
        live_workers = time_loader(split, size, live, 8, args.workers, n) if args.workers else 0.0
        cached_workers = time_loader(split, size, view, args.batch, args.workers, 30 * n) if args.workers else 0.0
        image_bytes = os.path.getsize(subset.path(0)) if hasattr(subset, "path") else None

    out = {"dataset": dataset, "split": split.name, "fabricated": not real, "images": n, "image_size": size,
           "source_bytes_per_image": image_bytes, "cache_bytes_per_image": 3 * size * size, "cores": os.cpu_count(),
           "live_images_per_s_per_core": live_rate, "cached_images_per_s_per_core": cached_rate,
           "cached_over_live": cached_rate / live_rate, "identical": bool(identical),
           "build_seconds": build_s, "build_images_per_s": per_second(n, build_s),
           "workers": args.workers, "live_images_per_s_workers": live_workers,
           "cached_images_per_s_workers": cached_workers}
    print(f"{dataset} {split.name}: {n} images at {size}px, {os.cpu_count()} cores")
    print(f"  live   {live_rate:9.1f} images/s per core   {live_workers:9.1f} with {args.workers} DataLoader workers")
    print(f"  cached {cached_rate:9.1f} images/s per core   {cached_workers:9.1f} with {args.workers} DataLoader workers")
    print(f"  cached / live per core: {out['cached_over_live']:.1f}x (goal >= 20x); identical: {identical}")
    print(f"  build: {build_s:.1f} s on every core ({out['build_images_per_s']:.1f} images/s)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    from autoft.errors import UserError

    try:
        main()
    except UserError as err:  # a bad option or override: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
