#!/usr/bin/env python
"""Download what is public, check what is on disk, and print the exact manual steps for the rest.

    python scripts/prepare_data.py --dataset iwildcam --root /data            # check only
    python scripts/prepare_data.py --dataset iwildcam --root /data --check    # the same, said explicitly
    python scripts/prepare_data.py --dataset iwildcam --root /data --download # fetch, then check
    python scripts/prepare_data.py --dataset imagenet --root /data --verify-images

Checks: expected counts per split, class sets (the class masks of ImageNet-R/A and ObjectNet),
every image file present (and decodable with --verify-images; each missing or corrupt file is
named). WILDS folders are also opened with the wilds package's own dataset class (download=False):
any difference from our reader in split sizes, labels, FMoW regions or sampled images is named
(split and first differing position). Exit status 0 when the dataset is complete and both readers
agree, 1 otherwise.

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
import tempfile
import urllib.request
from pathlib import Path

from autoft.data import cifar, imagenet, wilds_tasks
from autoft.errors import UserError

DATASETS = ("iwildcam", "fmow", "imagenet", "cifar10")


def fetch(url: str, dest_dir: Path) -> Path:
    """Download `url` into dest_dir (atomically: .part file, then rename); skip if present."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    print(f"downloading {url}", flush=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 22)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="the data root (data_root in the config)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check what is on disk (the default)")
    mode.add_argument("--download", action="store_true", help="download the public parts first")
    parser.add_argument("--verify-images", action="store_true", help="decode every image (slow) to find corrupt files")
    parser.add_argument("--expect", metavar="JSON", help="iwildcam/fmow: the split sizes and class count to expect instead of "
                        "the release's, as {\"counts\": {split: n}, \"classes\": n} (a subset, or a fabricated tree)")
    parser.add_argument("--sort-val", metavar="LOC_val_solution.csv",
                        help="imagenet: sort flat ILSVRC-2012 val images into <wnid>/ folders using this file")
    args = parser.parse_args(argv)
    root = Path(args.root)
    expect = {}
    if args.expect:
        if args.dataset not in ("iwildcam", "fmow"):
            raise UserError(f"--expect applies to iwildcam and fmow, not {args.dataset}")
        try:
            expect = json.loads(Path(args.expect).read_text())
            expect = {"expected": dict(expect["counts"]), "n_classes": int(expect["classes"])}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"--expect {args.expect}: not a JSON file with 'counts' and 'classes' ({err})") from None

    if args.dataset in ("iwildcam", "fmow"):
        if args.download:
            wilds_tasks.download(args.dataset, root)
        report = wilds_tasks.check(args.dataset, root, verify_images=args.verify_images, **expect)
    elif args.dataset == "imagenet":
        if args.sort_val:
            n = imagenet.sort_val(root / imagenet.DEFAULT_PATHS["val"], args.sort_val)
            print(f"moved {n} val images into class folders")
        if args.download:
            download_archives(root, imagenet.DOWNLOADS, imagenet.DOWNLOADS)
        report = imagenet.check(root, verify_images=args.verify_images)
    else:
        if args.download:
            download_archives(root, cifar.DOWNLOADS, cifar.DOWNLOADS)
        report = cifar.check(root)
    print(report.render())
    return 0 if report.complete else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
