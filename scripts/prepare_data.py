#!/usr/bin/env python
"""Download what is public, check what is on disk, and print the exact manual steps for the rest.

    python scripts/prepare_data.py --dataset iwildcam --root /data            # check only
    python scripts/prepare_data.py --dataset iwildcam --root /data --check    # the same, said explicitly
    python scripts/prepare_data.py --dataset iwildcam --root /data --download # fetch, then check
    python scripts/prepare_data.py --dataset imagenet --root /data --verify-images
    python scripts/prepare_data.py --dataset iwildcam --root /data --cache [--splits id_val,ood_val,pool] [overrides]

Checks: expected counts per split, class sets (the class masks of ImageNet-R/A and ObjectNet),
every image file present (and decodable with --verify-images; each missing or corrupt file is
named). WILDS folders are also opened with the wilds package's own dataset class (download=False):
any difference from our reader in split sizes, labels, FMoW regions or sampled images is named
(split and first differing position). Exit status 0 when the dataset is complete and both readers
agree, 1 otherwise.

--cache builds the preprocessed image cache (autoft.data.image_cache; docs/image_cache.md) of every
split of the task that `train.py dataset=<dataset> data_root=<root> <overrides>` runs (or of --splits;
`pool` = the search's ID pool, cached on its own), at the model's input size, on every core, with a
progress bar; a killed build resumes; caches already up to date are only checked. Where the caches go:
trainer.image_cache_dir (default <cache_dir>/images). A disk without room is an error (exit 2).

Downloads: WILDS through the wilds package's own downloader; CIFAR-10, CIFAR-10.1, CIFAR-10.2,
CIFAR-10-C, ImageNet-V2, -R, -A and -C from their public archives. ILSVRC-2012, ImageNet-Sketch
and ObjectNet need a licence or a login: the script prints what to do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import urllib.request
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from autoft.config_checks import check_config_dir, compose_config, config_names, problems
from autoft.data import cifar, imagenet, wilds_tasks
from autoft.errors import UserError
from autoft.io import atomic_write

DATASETS = ("iwildcam", "fmow", "camelyon17", "imagenet", "cifar10")
ROOT = Path(__file__).resolve().parents[1]


def fetch(url: str, dest_dir: Path) -> Path:
    """Download `url` into dest_dir (atomically: .part file, then rename); skip if present."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    print(f"downloading {url}", flush=True)

    def download(tmp: str) -> None:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 22)
    atomic_write(dest, download, suffix=".part")
    return dest


def extract(archive: Path, into: Path) -> None:
    print(f"extracting {archive.name} into {into}", flush=True)
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")  # refuses paths that escape `into`
        else:
            tar.extractall(into)


def download_archives(root: Path, table: dict, parts) -> list[str]:
    """Fetch (and extract .tar/.tar.gz) each public part; returns the parts that failed."""
    failed = []
    for part in parts:
        for url, subdir in table[part]:
            target = root / subdir if subdir else root
            try:
                path = fetch(url, root / "downloads" if url.endswith((".tar", ".tar.gz")) else target)
                if path.name.endswith((".tar", ".tar.gz")):
                    extract(path, target)
            except Exception as e:  # report and go on: the check below names what is still missing
                print(f"  failed: {url}: {e}", file=sys.stderr)
                failed.append(part)
    return failed


def model_image_size(model) -> int:
    """The model's input resolution without loading its weights: open_clip's config of model.arch,
    or model.custom's vision_cfg (a checkpoint's needs --image-size)."""
    if model.get("custom"):
        return int(model.custom.vision_cfg.get("image_size", 224))
    if model.get("arch"):
        import open_clip

        return int(open_clip.get_model_config(model.arch)["vision_cfg"]["image_size"])
    raise UserError(f"model={model.get('name')} is a checkpoint: give its input size with --image-size")


def cache_splits(dataset: str, root: Path, names, image_size, workers: int, overrides, config_dir=None) -> int:
    """Build (or check) the image cache of each named split; prints one line per split."""
    from autoft import cli
    from autoft.data.loading import UInt8View, split_spec
    from autoft.pipeline import pool_indices
    from autoft.data.image_cache import _bytes, build, inspect

    cfg = compose_config([f"dataset={dataset}", f"data_root={root}", *overrides], config_dir)
    task = cli.build_task(cfg)
    policy = replace(cli.image_cache_policy(cfg), mode="auto")
    size = image_size or model_image_size(cfg.model)
    splits = {"train": (task.train, None), "id_val": (task.id_val, None), "ood_val": (task.ood_val, None),
              **{k: (s, None) for k, s in task.tests.items()}}
    trial = cli.run_spec(cfg, cli.hyperparameters(cfg))  # the search's pool, as run_trial draws it
    splits["pool"] = (task.train, pool_indices(len(task.train), trial.steps * trial.batch_size, trial.pool_seed))
    names = names or [k for k in splits if k != "pool"]
    unknown = [n for n in names if n not in splits]
    if unknown:
        raise UserError(f"--splits: unknown split(s) {unknown}; valid: {', '.join(splits)}")
    print(f"image caches of {dataset} at {size}px under {policy.directory}")
    total = 0
    for name in names:
        split, indices = splits[name]
        spec = split_spec(split, size, policy.dataset, indices)
        if spec is None:
            print(f"  {name:16s} held in memory as tensors: nothing to cache")
            continue
        whole = split_spec(split, size, policy.dataset) if indices is not None else None
        if whole is not None and (Path(policy.directory) / whole.name).is_dir() and \
                inspect(Path(policy.directory) / whole.name, whole) is None:
            print(f"  {name:16s} {spec.n:8d} images  read from the cache of {split.name}")
            continue
        folder = Path(policy.directory) / spec.name
        problem = inspect(folder, spec) if folder.is_dir() else "not built"
        t0 = time.perf_counter()
        cache = build(UInt8View(split, size, indices), spec, policy.directory, workers)
        seconds = time.perf_counter() - t0
        nbytes = os.path.getsize(cache.folder / "images.npy")
        total += nbytes
        state = "up to date (checked)" if problem is None else f"built in {seconds:.1f} s ({spec.n / seconds:.1f} images/s; was: {problem})"
        print(f"  {name:16s} {spec.n:8d} images  {_bytes(nbytes):>9s}  {state}  {cache.folder}", flush=True)
    print(f"  total {_bytes(total)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, metavar="CONFIG",
                        help=f"{', '.join(DATASETS)}, or any dataset config (conf/dataset/<name>.yaml: folder, pacs, ...)")
    parser.add_argument("--root", help="the data root (data_root in the config); needed for "
                        f"{', '.join(DATASETS)}; a dataset config takes data_root=... among its overrides too")
    parser.add_argument("--config-dir", help="a config directory of yours (train.py --config-dir): --dataset may name "
                        "its dataset/<name>.yaml")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check what is on disk (the default)")
    mode.add_argument("--download", action="store_true", help="download the public parts first")
    parser.add_argument("--verify-images", action="store_true", help="decode every image (slow) to find corrupt files")
    parser.add_argument("--expect", metavar="JSON", help="iwildcam/fmow: the split sizes and class count to expect instead of "
                        "the release's, as {\"counts\": {split: n}, \"classes\": n} (a subset, or a fabricated tree)")
    parser.add_argument("--sort-val", metavar="LOC_val_solution.csv",
                        help="imagenet: sort flat ILSVRC-2012 val images into <wnid>/ folders using this file")
    parser.add_argument("--cache", action="store_true", help="build the preprocessed image cache of the splits "
                        "(after --download / --sort-val; instead of the check)")
    parser.add_argument("--splits", help="--cache: comma-separated splits (train, id_val, ood_val, the tests, pool); "
                        "default every split but pool")
    parser.add_argument("--image-size", type=int, help="--cache: the model's input size (default: the model's config)")
    parser.add_argument("--workers", type=int, default=0, help="--cache: decoding processes (default every core)")
    parser.add_argument("overrides", nargs="*", help="--cache: config overrides as for train.py "
                        "(trainer.image_cache_dir=..., model=..., dataset.task.ood_val_size=...)")
    args = parser.parse_args(argv)
    check_config_dir(args.config_dir)
    if args.dataset not in DATASETS:
        return check_config(args)
    if not args.root:
        raise UserError(f"--dataset {args.dataset} needs --root (the folder that holds the data)")
    root = Path(args.root)
    if args.overrides and not args.cache:
        raise UserError(f"config overrides {args.overrides} only apply with --cache")
    expect = {}
    if args.expect:
        if args.dataset not in wilds_tasks.WILDS_DATASETS:
            raise UserError(f"--expect applies to {', '.join(wilds_tasks.WILDS_DATASETS)}, not {args.dataset}")
        try:
            expect = json.loads(Path(args.expect).read_text())
            expect = {"expected": dict(expect["counts"]), "n_classes": int(expect["classes"])}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"--expect {args.expect}: not a JSON file with 'counts' and 'classes' ({err})") from None

    if args.dataset in wilds_tasks.WILDS_DATASETS:
        if args.download:
            wilds_tasks.download(args.dataset, root)
        if args.cache:
            return cache_splits(args.dataset, root, _names(args.splits), args.image_size, args.workers, args.overrides,
                                args.config_dir)
        report = wilds_tasks.check(args.dataset, root, verify_images=args.verify_images, **expect)
    elif args.dataset == "imagenet":
        if args.sort_val:
            n = imagenet.sort_val(root / imagenet.DEFAULT_PATHS["val"], args.sort_val)
            print(f"moved {n} val images into class folders")
        if args.download:
            download_archives(root, imagenet.DOWNLOADS, imagenet.DOWNLOADS)
        if args.cache:
            return cache_splits(args.dataset, root, _names(args.splits), args.image_size, args.workers, args.overrides,
                                args.config_dir)
        report = imagenet.check(root, verify_images=args.verify_images)
    else:
        if args.download:
            download_archives(root, cifar.DOWNLOADS, cifar.DOWNLOADS)
        if args.cache:
            return cache_splits(args.dataset, root, _names(args.splits), args.image_size, args.workers, args.overrides,
                                args.config_dir)
        report = cifar.check(root)
    print(report.render())
    return 0 if report.complete else 1


def check_config(args) -> int:
    """--dataset <config>: a folder dataset (dataset=folder and its presets) is listed, compared across
    domains and decoded; its task is built with the overrides' settings. --cache works as for the
    paper's datasets."""
    from autoft.names import FOLDER_TARGET

    names = config_names("dataset", args.config_dir)
    if args.dataset not in names:
        where = " nor in " + str(Path(args.config_dir) / "dataset") if args.config_dir else ""
        raise UserError(f"--dataset {args.dataset}: no conf/dataset/{args.dataset}.yaml{where}; available: {', '.join(names)}")
    overrides = ([f"data_root={args.root}"] if args.root else []) + list(args.overrides)
    if args.cache:
        return cache_splits(args.dataset, Path(args.root or "data"), _names(args.splits), args.image_size,
                            args.workers, overrides, args.config_dir)
    cfg = compose_config([f"dataset={args.dataset}", *overrides], args.config_dir)
    task = OmegaConf.to_container(cfg.dataset.task, resolve=True)
    if task.get("_target_") != FOLDER_TARGET:
        raise UserError(f"--dataset {args.dataset}: its data is not read from disk by a folder reader "
                        f"({task.get('_target_')}); --check applies to {', '.join(DATASETS)} and folder datasets")
    found = [p for p in problems(cfg) if p.startswith("dataset.")]  # the data's keys; the run's are train.py's
    if found:
        raise UserError("invalid config:\n  - " + "\n  - ".join(found))
    from autoft.data import folders

    report = folders.check(task, cfg.dataset.name, verify_images=True, progress=sys.stderr.isatty())
    print(report.render())
    return 0 if report.complete else 1


def _names(splits) -> list[str]:
    return [s.strip() for s in splits.split(",") if s.strip()] if splits else []


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
