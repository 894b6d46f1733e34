import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "disabled")
# The suite runs more processes than cores (make test: cores + 1, plus the runs they start). A waiting
# OpenMP thread spins by default, and on oversubscribed cores that spinning takes the CPU the other
# processes need: about a sixth of the suite's CPU, measured. Passive threads sleep instead. Set before
# torch is imported (its OpenMP runtime reads it once); the runs the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _session_dir(var: str, prefix: str) -> None:
    """$var: a fresh private directory removed when the session ends (its subprocesses inherit it)."""
    import atexit
    import shutil
    import tempfile

    os.environ[var] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[var], True)


if "AUTOFT_IMAGE_CACHE_DIR" not in os.environ:  # image caches of test runs (and their subprocesses) die with the session
    _session_dir("AUTOFT_IMAGE_CACHE_DIR", "autoft-test-image-cache-")
if os.environ.get("PYTEST_XDIST_WORKER") and "AUTOFT_WORKERS_DIR" not in os.environ:
    # under pytest -n, each test process counts only its own searches' workers toward the thread
    # budget (tests assert the budget they see; another test's search is not their machine's load)
    _session_dir("AUTOFT_WORKERS_DIR", "autoft-test-workers-")

import numpy as np
import pytest

# torch, open_clip and the library are imported where they are used: pytest-xdist's controller loads
# this file too, and never runs a test (importing them there cost about 5 s of CPU per session)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1},
}


def random_split(name, n, classes, seed, size=16):
    import torch

    from autoft.data.base import Split
    from autoft.data.images import TensorImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    # a class-dependent colour shift so that a few steps of training can learn something
    images = (images // 2 + (labels * 40).view(-1, 1, 1, 1).to(torch.uint8)).to(torch.uint8)
    return Split(name, TensorImageDataset(images, labels.numpy()), labels.numpy().astype(np.int64))


@pytest.fixture
def tiny_bundle():
    import torch

    from autoft.models.clip import load_clip

    torch.manual_seed(0)
    return load_clip(custom=TINY_CLIP)


@pytest.fixture
def tiny_task():
    return tiny_task_value()


def tiny_task_value():
    from autoft.data.base import Task

    classes = ["cat", "dog", "bird"]
    return Task(name="tiny", classnames=classes, templates=["a photo of a {}.", "a {} in the wild."],
                train=random_split("train", 48, 3, 0), id_val=random_split("id_val", 12, 3, 1),
                ood_val=random_split("ood_val", 12, 3, 2), tests={"id_test": random_split("id_test", 12, 3, 3)})


# ------------------------------------------------------------------------------------------------
# shared helpers for tests that compose the config or run train.py / the scripts as subprocesses

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TEST_CONF = ROOT / "tests" / "conf"


def offline_env(**extra) -> dict:
    """The environment of a subprocess under test: no hub downloads, W&B off, no API key; then
    `extra`, where a value of None removes the variable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def compose_config(*overrides, return_hydra_config: bool = False):
    """conf/config.yaml composed as train.py does (the test conf dir, tests/conf, is on the search path
    unless the overrides name their own hydra.searchpath)."""
    from hydra import compose, initialize_config_dir

    own = any(o.startswith("hydra.searchpath=") for o in overrides)
    searchpath = [] if own else [f"hydra.searchpath=[file://{TEST_CONF}]"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*searchpath, *overrides], return_hydra_config=return_hydra_config)


# `make test` peaked at 0.3 GiB in its temporary folder (sampled every 5 s); the slow tests write
# full-size ViT-B/16 files and 1024x768 images there
MIN_FREE_GIB = float(os.environ.get("AUTOFT_TEST_MIN_FREE_GIB", 2))


def pytest_sessionstart(session):
    """A disk too full for the suite stops it in one line, before any test: otherwise every test that
    writes fails at its setup, and the reason is lost among hundreds of errors."""
    import shutil
    import tempfile

    if hasattr(session.config, "workerinput"):  # checked once, in pytest-xdist's controller
        return
    where = tempfile.gettempdir()
    free = shutil.disk_usage(where).free / 2 ** 30
    if free < MIN_FREE_GIB:
        pytest.exit(f"only {free:.1f} GiB free in {where}; the tests need {MIN_FREE_GIB:g} GiB there: free some "
                    "space, or point TMPDIR at a disk that has it", returncode=4)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` (pytest -m cuda; make gpu-check) skip themselves, saying why, without a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on one with pytest -m cuda or make gpu-check)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------------------------------
# `python <script> <argv>` in this process (no interpreter start, torch already imported), its output
# as a subprocess's would be: what it prints or logs and what the processes it launches write to fds 1, 2

def run_python(path, argv: list, cwd=None, *, separate_stderr=False, **env):
    """Run `path` as __main__ with sys.argv = [path, *argv], under offline_env(**env) and in `cwd`;
    a CompletedProcess (returncode from SystemExit, else 0; stderr merged into stdout, or apart in
    `.stderr` with separate_stderr=True, for a test that tells a log line on stdout from an error
    report on stderr). Warnings the run shows are printed to its stderr, as a process's would be (not
    recorded by pytest). What a run changes in this process is put back: environment, cwd, Hydra's
    global state and run config, the root logger's handlers and level, torch's thread count, the
    warning filters, the search's storage and outage caches (empty during the run, as in a fresh
    process)."""
    import contextlib
    import io
    import logging
    import runpy
    import subprocess
    import sys
    import tempfile
    import warnings

    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from autoft.search import outage, storage

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    argv = [str(a) for a in argv]
    out = io.StringIO()
    err = io.StringIO() if separate_stderr else out
    root, threads = logging.getLogger(), torch.get_num_threads()
    handlers, level = list(root.handlers), root.level
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(), tempfile.TemporaryFile() as fd_out, \
            tempfile.TemporaryFile() as fd_err:
        # the search's per-process caches keyed by storage URL start empty, as in a fresh process, and
        # Hydra's run config is unset again afterwards (else library code in later tests thinks it runs
        # under this Hydra run and writes beside its output directory)
        mp.setattr(outage, "_OUTAGES", {})
        mp.setattr(storage, "_REPORT_STORAGES", {})
        mp.setattr(HydraConfig.instance(), "cfg", None)
        for key in set(os.environ) - set(offline_env(**env)):
            mp.delenv(key)
        for key, value in offline_env(**env).items():
            mp.setenv(key, value)
        if cwd is not None:
            mp.chdir(cwd)
        mp.setattr(sys, "argv", [str(path), *argv])
        warnings.showwarning = show
        # the same filters plus a catch-all with the default action (a no-op): the filters changed, so
        # each run shows its warnings afresh, as a fresh process would, not once per test
        warnings.simplefilter("default", append=True)
        GlobalHydra.instance().clear()
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fd_out.fileno(), 1), os.dup2((fd_err if separate_stderr else fd_out).fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    runpy.run_path(str(path), run_name="__main__")
                    code = 0
                except SystemExit as stop:
                    code = stop.code
                    if not (isinstance(code, int) or code is None):  # sys.exit("message"): as a process does
                        print(code, file=sys.stderr)
                        code = 1
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            GlobalHydra.instance().clear()
            for handler in set(root.handlers) - set(handlers):  # Hydra's console and train.log handlers
                handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
            torch.set_num_threads(threads)
        children = [f.seek(0) or f.read().decode(errors="replace") for f in (fd_out, fd_err)]
    stderr = err.getvalue() + children[1] if separate_stderr else ""  # else fd 2 and sys.stderr went to stdout
    return subprocess.CompletedProcess([str(path), *argv], code or 0, out.getvalue() + children[0], stderr)


def run_script(name: str, argv: list, cwd=None, **env):
    """`python scripts/<name>.py <argv>` in this process (run_python)."""
    return run_python(ROOT / "scripts" / f"{name}.py", argv, cwd, **env)


def load_script(script):
    """A script imported as a fresh module, to call its functions: `script` names one in scripts/, or
    is a path. Registered in sys.modules (as `<stem>_script`): dataclasses look their module up while a
    class is built."""
    import importlib.util
    import sys

    path = ROOT / "scripts" / f"{script}.py" if isinstance(script, str) else script
    spec = importlib.util.spec_from_file_location(f"{path.stem}_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_train(argv: list, cwd=None, **env):
    """`python train.py <argv>` in this process (run_python): for tests about what a run writes, not
    about the process (exit status on a signal, several workers, thread budgets of a fresh process)."""
    return run_python(ROOT / "train.py", argv, cwd, **env)


def run_results_notebook(results_dir, monkeypatch, timeout: int = 300):
    """notebooks/results.ipynb executed by a Jupyter kernel on `results_dir` (AUTOFT_RESULTS, no W&B
    project), asserting that no cell raised; its stream text, its Markdown and its PNG outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    monkeypatch.setenv("AUTOFT_RESULTS", str(results_dir))
    monkeypatch.delenv("AUTOFT_WANDB_PROJECT", raising=False)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    markdown = "\n".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    return text, markdown, [o for o in outputs if "data" in o and "image/png" in o["data"]]
