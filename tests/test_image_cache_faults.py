"""A cache build killed by SIGKILL at each of its steps, readers beside a partial build, builders racing
for one cache (autoft.data.image_cache): the next run resumes or finishes the build, the result is
byte-identical to an uninterrupted build, and no reader ever uses a partial cache.

Builders are real processes building a real cache of fabricated JPEGs. They are forked from the test
(a fresh interpreter spends 3 s importing torch), and each pauses at a named step of the build
(`image_cache._reached`) until the test SIGKILLs it or lets it go."""
import fcntl
import multiprocessing
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import fabricate
from autoft.data import loading
from autoft.data import image_cache
from autoft.data.base import Split
from autoft.data.loading import image_view
from autoft.data.image_cache import CachePolicy
from autoft.data.images import ImageFiles

pytestmark = pytest.mark.timeout(120)  # a lock that is never released fails here instead of hanging the suite

SIZE = 224
N = 12  # images; the builders checkpoint every 4 rows, so a build has three checkpoints


def make_split(root: Path, n: int, size=(96, 72)) -> Split:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:04d}.jpg" for i in range(n)]
    for name in names:
        fabricate._photo(rng, size).save(root / name, format="JPEG", quality=85)
    labels = np.arange(n) % 3
    return Split("train", ImageFiles(root, names, labels, dataset="faults"), labels)


def policy(directory, mode="auto", workers=0) -> CachePolicy:
    return CachePolicy(mode, str(directory), "faults", build_workers=workers)


def contents(directory: Path) -> dict:
    """Every entry of a cache directory but the lock files: name -> {file: bytes} for folders."""
    return {d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir())} if d.is_dir() else d.read_bytes()
            for d in sorted(directory.iterdir()) if not d.name.endswith(".lock")}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("faults") / "images", N)


@pytest.fixture(scope="module")
def reference(split, tmp_path_factory):
    """What an uninterrupted build leaves: {cache folder: {file: bytes}}."""
    directory = tmp_path_factory.mktemp("reference")
    assert image_view(split, SIZE, None, policy(directory), progress=False)[1] == "cache"
    return contents(directory)


@pytest.fixture(autouse=True)
def no_orphans():
    """A failed test leaves no paused builder behind (it would hold a lock and keep pytest from exiting)."""
    yield
    while Builder.started:
        process = Builder.started.pop()
        if process.exitcode is None:
            process.kill()
            process.join()


@pytest.fixture
def decoded(monkeypatch):
    """The rows this process decodes (a build in the test process itself)."""
    rows = []
    live = loading.UInt8View.__getitem__
    monkeypatch.setattr(loading.UInt8View, "__getitem__", lambda self, i: rows.append(i) or live(self, i))
    return rows


def _child(split, directory, signals, pause, workers, size):
    """A builder process: marks every step it reaches (a file in `signals`), pauses at `pause`
    ('step' or 'step:nth') until `signals/go` exists, and reports what it read and decoded."""
    torch.set_num_threads(1)  # forked: no OpenMP pool of the parent's
    step, _, nth = (pause or "").partition(":")
    seen, rows = Counter(), []

    def reached(point):
        seen[point] += 1
        (signals / point).touch()
        if point == step and seen[point] == int(nth or 1):
            (signals / "paused").touch()
            while not (signals / "go").exists():
                time.sleep(0.01)

    image_cache._reached = reached
    image_cache.FLUSH_ROWS = 4
    live = loading.UInt8View.__getitem__
    loading.UInt8View.__getitem__ = lambda self, i: rows.append(i) or live(self, i)
    source = image_view(split, size, None, policy(directory, workers=workers), progress=False)[1]
    (signals / "result").write_text(f"{source} {len(rows)}")


class Builder:
    """A forked process building `split`'s cache in `directory` (trainer.image_cache=auto); not a
    daemon, since a build forks decoding processes. The `no_orphans` fixture kills what a test left."""
    started: list = []

    def __init__(self, split, directory, signals: Path, pause=None, workers=0, size=SIZE):
        self.signals = signals
        signals.mkdir(parents=True)
        self.process = multiprocessing.get_context("fork").Process(
            target=_child, args=(split, directory, signals, pause, workers, size))
        self.process.start()
        Builder.started.append(self.process)

    def wait_for(self, point: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not (self.signals / point).exists():
            assert self.process.exitcode is None, f"the builder exited with {self.process.exitcode} before '{point}'"
            assert time.monotonic() < deadline, f"the builder did not reach '{point}' in {timeout} s"
            time.sleep(0.01)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()
        assert self.process.exitcode == -signal.SIGKILL

    def finish(self) -> tuple[str, int]:
        """Let a paused builder go on; (where its images came from, how many it decoded)."""
        (self.signals / "go").touch()
        self.process.join(60)
        assert self.process.exitcode == 0
        source, n = (self.signals / "result").read_text().split()
        return source, int(n)


def lock_free(directory: Path, timeout: float = 5) -> bool:
    """Whether every lock in `directory` can be taken within `timeout` s (a dead builder's is released)."""
    deadline = time.monotonic() + timeout
    for path in directory.glob("*.lock"):
        with open(path, "a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.02)
    return True


# where the builder is killed -> the rows the next run decodes again (12 rows, a checkpoint every 4)
KILLS = {
    "locking": N,        # before it holds the lock
    "locked": N,         # holding the lock, nothing written
    "allocating": N,     # the partial folder allocated, its spec not yet written
    "rows:2": N - 4,     # mid-checkpoint: rows 4-7 written, only rows 0-3 marked done
    "filled": 0,         # every row written and marked, no manifest
    "manifest-tmp": 0,   # inside the manifest's atomic write: its temporary file is there
    "manifest": 0,       # the partial folder complete, not yet renamed
    "renaming": 0,       # the stale cache it replaces moved aside, the new one not yet in place
}


@pytest.mark.parametrize("step", KILLS)
def test_a_build_killed_at_any_step_is_finished_by_the_next_run_identically(split, reference, decoded, tmp_path, step):
    directory = tmp_path / "caches"
    if step == "renaming":  # a rebuild: the cache in place is stale (a broken manifest)
        image_view(split, SIZE, None, policy(directory), progress=False)
        (directory / next(iter(reference)) / "manifest.json").write_text("{")
        decoded.clear()
    builder = Builder(split, directory, tmp_path / "signals", pause=step)
    builder.wait_for("paused")
    builder.kill()
    assert lock_free(directory)
    assert image_view(split, SIZE, None, policy(directory, "read"), progress=False)[1] == "live"  # no partial read
    assert image_view(split, SIZE, None, policy(directory), progress=False)[1] == "cache"
    assert decoded == list(range(N - KILLS[step], N))  # resumed: the rows checked done are not decoded again
    assert contents(directory) == reference  # byte-identical, and no partial, stale or temporary files left


def test_a_reader_never_uses_a_partial_cache_and_a_waiting_builder_takes_over_a_killed_one(split, reference, tmp_path):
    directory = tmp_path / "caches"
    first = Builder(split, directory, tmp_path / "first", pause="rows:2")
    first.wait_for("paused")  # holds the lock; rows 0-3 done, 4-7 written, none of it a cache yet
    assert image_view(split, SIZE, None, policy(directory, "read"), progress=False)[1] == "live"
    second = Builder(split, directory, tmp_path / "second")  # auto: waits for the first, reads nothing partial
    second.wait_for("locking")
    time.sleep(0.3)
    assert not (second.signals / "locked").exists() and second.process.exitcode is None
    first.kill()
    assert second.finish() == ("cache", N - 4)  # took the lock and resumed the killed build
    assert contents(directory) == reference


def test_two_builders_at_once_make_one_cache_without_error(split, reference, tmp_path):
    """Deterministically (the second arrives while the first builds), then freely (three at once)."""
    directory = tmp_path / "caches"
    first = Builder(split, directory, tmp_path / "first", pause="rows:1")
    first.wait_for("paused")
    second = Builder(split, directory, tmp_path / "second")
    second.wait_for("locking")
    time.sleep(0.3)
    assert first.finish() == ("cache", N) and second.finish() == ("cache", 0)  # the second read the first's cache
    assert contents(directory) == reference
    directory = tmp_path / "race"
    builders = [Builder(split, directory, tmp_path / f"race{i}") for i in range(3)]
    results = [b.finish() for b in builders]
    assert [r[0] for r in results] == ["cache"] * 3 and sorted(r[1] for r in results) == [0, 0, N]
    assert contents(directory) == reference


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_builder_takes_its_decoding_processes_and_its_lock_with_it(tmp_path):
    """From 256 rows a build decodes on worker processes. Forked while the lock is held, they would
    outlive a SIGKILLed builder and hold the lock forever: torch's worker, its batches (4 rows of
    128 px here, 196 KB) too big for the pipe to a dead reader, waits forever to flush its queue."""
    split = make_split(tmp_path / "images", 256, size=(48, 36))
    directory = tmp_path / "caches"
    builder = Builder(split, directory, tmp_path / "signals", pause="rows:2", workers=2, size=128)
    builder.wait_for("paused")
    workers = _children(builder.process.pid)
    assert len(workers) == 2
    try:
        builder.kill()
        assert lock_free(directory)
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(_alive, workers))
    finally:  # a regression must fail, not leave orphans holding the lock and pytest's output open
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
    assert image_view(split, 128, None, policy(directory), progress=False)[1] == "cache"
    reference = tmp_path / "reference"
    image_view(split, 128, None, policy(reference), progress=False)
    assert contents(directory) == contents(reference)
