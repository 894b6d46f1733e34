"""Shared by the sweeper tests: run the toy Hydra app or train.py, as real processes (`run_app`,
`train`) where the process is what a test is about (killed workers, several workers, exit status on a
signal, thread budgets of a fresh process), else in the test's process (`run_app_here`, conftest.run_train)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "apps" / "toy_app.py"
SWEEP = Path("outputs/toy/toy/search-autoft")
# the toy app is not autoft: it has no use for autoft's pre-flight check (conf/search/autoft.yaml)
FAST = ["hydra.sweeper.plots=false", "hydra.sweeper.poll_interval=0.2", "hydra.sweeper.preflight=null"]
# the smallest train.py search that still trains: synthetic images, the tiny CLIP, CPU
TINY = ["experiment=synthetic_tiny_vit", "device=cpu", "trainer.inner_steps=2", "trainer.batch_size=8",
        "trainer.epochs=1", "dataset.task.n_train=48", "dataset.task.n_val=16", "dataset.task.n_ood_val=16",
        "dataset.task.n_test=16", "dataset.task.image_size=32", "trainer.num_workers=0", "trainer.eval_batch_size=16"]


def app_argv(*args) -> list:
    """`python tests/apps/toy_app.py <this>`: a search with the FAST settings, then `args`."""
    return ["-m", "search=autoft", *FAST, *args]


def run_app(cwd, *args, check=True, timeout=180):
    """The toy app's search as a subprocess (stdout and stderr apart)."""
    done = subprocess.run([sys.executable, str(APP), *app_argv(*args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def run_app_here(cwd, *args, check=True):
    """The toy app's search in this process (conftest.run_python: no interpreter start; stderr is
    merged into stdout, `.stderr` is empty), for tests about what a search does, not its process."""
    from conftest import run_python

    done = run_python(APP, app_argv(*args), cwd)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}")
    return done


def train(cwd, *args):
    """train.py as a subprocess; conftest.run_train runs it in this process."""
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done
