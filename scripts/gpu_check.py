#!/usr/bin/env python
"""GPU readiness check (issue 13): run every part of the CUDA path once, in one short call, and
write a Markdown and a JSON report.

    python scripts/gpu_check.py --out gpu_check_report               # on a GPU (make gpu-check)
    python scripts/gpu_check.py --device cpu --dry-run --out /tmp/r  # every section's code path on CPU, tiny

Sections (each in its own try/except with its own time budget; one failure never stops the others;
the whole run has a global budget, default 420 s, and sections left when it runs out are skipped
and say so):

  bf16_vs_fp32               bf16 autocast training, fp32 evaluation, against an fp32 run (tolerances stated)
  fused_adamw_channels_last  the optimiser search_trial builds is fused; channels-last weights and
                             inputs; the decoded pool and OOD-val subset kept on the device
  theta0_reset_determinism   trial A, trial B, trial A again: the second A is bit-identical to the first
  memory_flat                torch.cuda.max_memory_allocated per trial, 5 trials: no growth
  bench_search               scripts/bench_search.py: ours vs compute floor vs reference-style loop
                             (ViT-B/16, 224 px, batch 128, random weights), images/s, peak memory
  loader                     scripts/bench_loader.py on a tree it fabricates (iWildCam layout, 1024x768
                             JPEGs): images/s of live decoding and of the image cache, per core and
                             through the final runs' DataLoader; beside bench_search's training images/s
  search_and_final           train.py -m search=autoft (3 trials), then train.py method=autoft hparams=...
  rehearsal                  scripts/rehearsal.py: the README's real-data commands at full size (ViT-B/16 from
                             open_clip's hub layout, 182 iWildCam classes at 1024x768); per phase: seconds,
                             peak RSS, peak CUDA memory
  ddp_nccl_world1            torchrun, 1 process, NCCL: gradient all-reduce and feature all-gather
                             really run; same weights as a non-distributed run
  ddp_gloo_2proc             torchrun, 2 processes over gloo on the one GPU: identical weights on both ranks
  pytest_cuda                pytest -m cuda (tests/test_cuda.py and any other CUDA-marked test)
  compile_reuse              torch.compile'd workspace: no recompilation after the first trial

and, from the measured throughput, the GPU-hours of the paper's search budgets (ours vs the
reference-style loop). With --device cpu --dry-run every section runs at tiny scale (tiny CLIP,
32 px, few steps) and the CUDA-only assertions are reported as "skip (cpu)".
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random-weight models only: never the network
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
DEFAULT_BUDGET_S = 420.0
MIN_SECTION_S = 5.0  # a section is not started with less than this left of the global budget

# bf16 training vs fp32 training (same seed, same batches), both evaluated in fp32 on OOD-val
TOLERANCES = {
    "ood_val_accuracy_abs": 0.05,  # |accuracy(bf16 run) - accuracy(fp32 run)|
    "prediction_agreement_min": 0.90,  # share of OOD-val examples with the same predicted class
    "logit_deviation_rel": 0.10,  # ||L_bf16 - L_fp32|| / ||L_fp32 - L_0||: deviation vs what training moved
    "memory_spread_mib": 64.0,  # max - min of the per-trial peaks (or 2% of the peak, whichever is larger)
    "memory_spread_frac": 0.02,
    "memory_retained_mib": 16.0,  # growth of memory_allocated after a trial, trial 5 vs trial 1
}
STATUSES = ("pass", "fail", "skip (cpu)", "skip (time budget)", "skip")

# a representative searched objective: every term on (flyp runs the text tower, the parameter
# terms the _foreach kernels), as a trial of the AutoFT search does
ALL_TERMS = {"ce": 1.0, "hinge": 0.1, "entropy": 0.05, "dcm": 0.1, "flyp": 0.5, "l1init": 0.01, "l2init": 0.1,
             "l1zero": 1e-3, "l2zero": 1e-3}
CE_ONLY = {"ce": 1.0}


# ----------------------------------------------------------------------------------------------
# scale: the GPU run and the CPU dry run differ only in sizes


@dataclass
class Scale:
    main_overrides: list  # Hydra overrides of the main workspace (as train.py composes it)
    main_label: str
    steps: int  # inner steps of the main workspace's trials
    batch: int
    tiny_size: int  # the learnable tiny task (bf16 comparison, compile, DDP)
    tiny_n_train: int
    tiny_n_eval: int
    tiny_steps: int
    tiny_batch: int
    tiny_lr: float
    bench_overrides: list
    bench_trials: int
    loader_args: list  # scripts/bench_loader.py's options
    search_overrides: list
    pytest_args: list
    ddp_epochs: int
    ddp_batch: int


def cpu_cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(nprocs: int = 1) -> int:
    """CPU threads for each of `nprocs` processes: the cores this process may use, one left over."""
    return max(1, (cpu_cores() - 1) // nprocs)


def make_scale(device: torch.device, dry: bool) -> Scale:
    dev = str(device)
    if not dry:
        return Scale(
            main_overrides=["experiment=synthetic_vit_b16_random", f"device={dev}", "trainer.inner_steps=10",
                            "trainer.batch_size=128", "dataset.task.n_train=1280", "dataset.task.n_val=64",
                            "dataset.task.n_ood_val=512", "dataset.task.n_test=64", "trainer.eval_batch_size=256"],
            main_label="ViT-B/16 (random weights), 224 px, batch 128, 10 inner steps, 512 OOD-val images",
            steps=10, batch=128,
            tiny_size=32, tiny_n_train=1920, tiny_n_eval=512, tiny_steps=30, tiny_batch=64, tiny_lr=3e-3,
            bench_overrides=["experiment=synthetic_vit_b16_random", f"device={dev}"], bench_trials=3,
            loader_args=["--images", "128", "--workers", str(threads_per_process(1))],
            search_overrides=["experiment=synthetic_vit_b16_random", f"device={dev}", "trainer.inner_steps=5",
                              "trainer.batch_size=128", "dataset.task.n_train=640", "dataset.task.n_val=128",
                              "dataset.task.n_ood_val=256", "dataset.task.n_test=128", "trainer.epochs=1",
                              "trainer.eval_batch_size=256", "logger=local"],
            pytest_args=[],
            ddp_epochs=2, ddp_batch=32,
        )
    sys.path.insert(0, str(ROOT / "tests"))
    from sweep_helpers import TINY  # the smallest train.py search that still trains (shared with the tests)

    tiny = ["experiment=synthetic_tiny_vit", f"device={dev}", "dataset.task.image_size=32",
            "trainer.num_workers=0", "trainer.eval_batch_size=16"]
    return Scale(
        main_overrides=tiny + ["trainer.inner_steps=3", "trainer.batch_size=8", "dataset.task.n_train=24",
                               "dataset.task.n_val=16", "dataset.task.n_ood_val=16", "dataset.task.n_test=16"],
        main_label="tiny CLIP (dry run), 32 px, batch 8, 3 inner steps, 16 OOD-val images",
        steps=3, batch=8,
        tiny_size=32, tiny_n_train=192, tiny_n_eval=96, tiny_steps=12, tiny_batch=16, tiny_lr=3e-3,
        bench_overrides=tiny + ["trainer.inner_steps=3", "trainer.batch_size=8", "dataset.task.n_train=24",
                                "dataset.task.n_ood_val=16"], bench_trials=1,
        loader_args=["--images", "8", "--workers", "1", "--batch", "8"],
        search_overrides=[o for o in TINY if not o.startswith("device=")] + [f"device={dev}", "logger=local"],
        pytest_args=["tests/test_cuda.py"],
        ddp_epochs=1, ddp_batch=8,
    )


# ----------------------------------------------------------------------------------------------
# sections and the report


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section overruns its budget (a BaseException, so that no
    `except Exception` inside the code under test swallows it)."""


@dataclass
class Section:
    name: str
    title: str
    budget_s: float
    status: str = "skip"
    seconds: float = 0.0
    checks: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: Optional[str] = None
    headline: str = ""
    files: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "status": self.status, "seconds": round(self.seconds, 2),
                "budget_s": self.budget_s, "headline": self.headline, "checks": self.checks,
                "numbers": self.numbers, "notes": self.notes, "error": self.error, "files": self.files}


class Checker:
    """Records the assertions of one section. A CUDA-only assertion is not evaluated on the CPU
    (status "skip (cpu)"), unless `judge_on_cpu`: then the same code ran on the CPU (e.g. over gloo
    instead of NCCL), a failure there is a real failure, and a pass is still "skip (cpu)"."""

    def __init__(self, sec: Section, on_cuda: bool):
        self.sec, self.on_cuda = sec, on_cuda

    def __call__(self, name: str, ok: Any = None, detail: Any = "", cuda_only: bool = False,
                 judge_on_cpu: bool = False) -> bool:
        if cuda_only and not self.on_cuda and not judge_on_cpu:
            self.sec.checks.append({"name": name, "status": "skip (cpu)", "detail": "CUDA-only assertion"})
            return True
        if callable(ok):
            ok = ok()
        status = "pass" if ok else "fail"
        if cuda_only and not self.on_cuda and ok:
            status, detail = "skip (cpu)", f"ran on the CPU: {detail}"
        self.sec.checks.append({"name": name, "status": status, "detail": str(detail)})
        return bool(ok)


def _alarm(signum, frame):
    raise SectionTimeout()


class Runner:
    def __init__(self, args, device: torch.device, dry: bool, out: Path, work: Path):
        self.args, self.device, self.dry, self.out, self.work = args, device, dry, out, work
        self.on_cuda = device.type == "cuda"
        self.scale = make_scale(device, dry)
        self.budget = float(args.budget)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.budget
        self.sections: list[Section] = []
        self.env = environment(device)
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.cache: dict = {}
        (out / "logs").mkdir(parents=True, exist_ok=True)

    # -- running one section --
    def run(self, name: str, title: str, fn: Callable, budget_s: float) -> Section:
        sec = Section(name, title, budget_s)
        left = self.deadline - time.monotonic()
        if left < MIN_SECTION_S:
            sec.status = "skip (time budget)"
            sec.notes.append(f"not run: the global time budget of {self.budget:.0f} s was used up "
                             f"({time.monotonic() - self.t0:.0f} s elapsed); rerun with --sections {name}")
        else:
            limit = min(budget_s, left)
            sec.numbers["time_limit_s"] = round(limit, 1)
            print(f"[gpu_check] {name}: {title} (limit {limit:.0f} s)", flush=True)
            check = Checker(sec, self.on_cuda)
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, limit)
            t = time.monotonic()
            try:
                fn(sec, check, limit)
            except SectionTimeout:
                sec.error = (f"time budget exceeded: stopped after {limit:.0f} s "
                             f"({'section budget' if limit == budget_s else 'what was left of the global budget'})")
            except Exception:  # noqa: BLE001 - one failing section never stops the others
                sec.error = traceback.format_exc(limit=-12)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
                sec.seconds = time.monotonic() - t
            statuses = [c["status"] for c in sec.checks]
            if sec.error or "fail" in statuses:
                sec.status = "fail"
            elif statuses and all(s == "skip (cpu)" for s in statuses):
                sec.status = "skip (cpu)"
            elif not statuses:
                sec.status = "fail"
                sec.error = sec.error or "the section recorded no check"
            else:
                sec.status = "pass"
            print(f"[gpu_check] {name}: {sec.status} in {sec.seconds:.1f} s  {sec.headline}", flush=True)
            if sec.error:
                print(sec.error, file=sys.stderr, flush=True)
        self.sections.append(sec)
        free_memory()
        self.write()  # a partial report survives a killed run
        return sec

    # -- shared objects --
    def main_workspace(self):
        """The workspace train.py would build for the main configuration (cached for the process)."""
        if "main" not in self.cache:
            from hydra import compose, initialize_config_dir

            from autoft import cli

            with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=["phase=search", "logger=local", *self.scale.main_overrides])
            t = time.perf_counter()
            ws = cli.workspace(cfg)
            pool = cli.pool_indices(len(ws.task.train), self.scale.steps * self.scale.batch, 0)
            self.cache["main"] = (cfg, ws, pool)
            self.cache["main_build_s"] = time.perf_counter() - t
        return self.cache["main"]

    def release_main(self) -> None:
        from autoft import cli

        self.cache.pop("main", None)
        cli._WORKSPACES.clear()
        free_memory()

    def main_trial(self, weights: dict, seed: int, lr_scale: float = 1.0, precision: Optional[str] = None) -> dict:
        from autoft.cli import seed_everything
        from autoft.engine import FinetuneSettings
        from autoft.pipeline import search_trial

        cfg, ws, pool = self.main_workspace()
        steps = self.scale.steps
        settings = FinetuneSettings(steps=steps, lr=float(cfg.trainer.base_lr) * lr_scale,
                                    weight_decay=float(cfg.trainer.weight_decay),
                                    warmup_steps=int(round(float(cfg.trainer.warmup_fraction) * steps)),
                                    clip_grad_norm=cfg.trainer.clip_grad_norm, precision=precision or ws.precision,
                                    seed=seed)
        seed_everything(seed)
        return search_trial(ws, weights, settings, cfg.method.trainable, pool, self.scale.batch)

    # -- subprocesses --
    def sub_env(self, nprocs: int = 1) -> dict:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads_per_process(nprocs))
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("WANDB_MODE", "disabled")
        return env

    def command(self, sec: Section, label: str, cmd: list, timeout: float, cwd: Optional[Path] = None,
                nprocs: int = 1) -> tuple[int, str, float]:
        """Run `cmd` in its own process group (killed whole on timeout); its output goes to logs/."""
        log = self.out / "logs" / f"{sec.name}.{label}.log"
        sec.files.append(str(log.relative_to(self.out)))
        t = time.monotonic()
        with open(log, "w") as fh:
            fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen([str(c) for c in cmd], cwd=str(cwd or ROOT), env=self.sub_env(nprocs),
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, timeout))
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise RuntimeError(f"{label}: timed out after {timeout:.0f} s\n{tail(log)}") from None
                raise
        return rc, tail(log), time.monotonic() - t

    def remaining(self, limit: float, started: float) -> float:
        """Seconds a subprocess may still take inside this section's limit (2 s kept for the report)."""
        return limit - (time.monotonic() - started) - 2.0

    # -- the report --
    def write(self, cost: Optional[dict] = None) -> None:
        if cost is None:
            cost = self.cache.get("cost")
        counts = {s: sum(1 for x in self.sections if x.status == s) for s in STATUSES}
        report = {
            "issue": 13, "title": "GPU readiness check", "started_utc": self.started,
            "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                                 else sys.executable, *sys.argv]),
            "device": str(self.device), "dry_run": self.dry, "budget_s": self.budget,
            "wall_s": round(time.monotonic() - self.t0, 1), "environment": self.env,
            "scale": {"main": self.scale.main_label, "steps": self.scale.steps, "batch": self.scale.batch},
            "tolerances": TOLERANCES, "summary": {k: v for k, v in counts.items() if v},
            "ok": counts["fail"] == 0,
            "sections": [s.to_json() for s in self.sections], "cost_projection": cost,
        }
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=_json_default))
        (self.out / "gpu_check.md").write_text(markdown(report))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def tail(path: Path, chars: int = 3000) -> str:
    text = Path(path).read_text(errors="replace")
    return text[-chars:]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def rss_mib() -> float:
    """Current resident set size of this process (Linux), else the max RSS."""
    with contextlib.suppress(OSError, ValueError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return mib(pages * os.sysconf("SC_PAGE_SIZE"))
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "cpu_threads": torch.get_num_threads(), "cpu_cores": cpu_cores(),
           "platform": platform.platform(), "float32_matmul_precision": torch.get_float32_matmul_precision()}
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["git_dirty"] = bool(dirty)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
                    "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported()})
        with contextlib.suppress(Exception):
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        with contextlib.suppress(Exception):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
    return env


# ----------------------------------------------------------------------------------------------
# the learnable tiny task (bf16 comparison, compile, DDP): a class-dependent brightness over noise,
# which a few steps of training learn, so accuracies and logits move and can be compared


def learnable_task(n_train: int, n_eval: int, size: int, classes: int = 4):
    from autoft.data.base import Split, Task
    from autoft.data.images import TensorImageDataset

    def split(name: str, n: int, stream: int) -> Split:
        g = torch.Generator().manual_seed(1000 + stream)
        labels = torch.arange(n) % classes
        noise = torch.randint(0, 128, (n, 3, size, size), generator=g, dtype=torch.uint8)
        images = noise + (labels * (128 // classes)).view(-1, 1, 1, 1).to(torch.uint8)
        return Split(name, TensorImageDataset(images, labels.numpy()), labels.numpy().astype(np.int64))

    names = ["cat", "dog", "bird", "fish", "frog", "horse"][:classes]
    return Task(name="learnable", classnames=names, templates=["a photo of a {}.", "a {} in the wild."],
                train=split("train", n_train, 0), id_val=split("id_val", n_eval, 1),
                ood_val=split("ood_val", n_eval, 2), tests={"id_test": split("id_test", n_eval, 3)})


def tiny_clip_config() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/tiny_vit.yaml").custom)


def tiny_workspace(device: torch.device, scale: Scale, precision: Optional[str] = None, compile: bool = False,
                   n_train: Optional[int] = None):
    from autoft.cli import resolve_channels_last, resolve_precision
    from autoft.models.clip import load_clip
    from autoft.pipeline import Workspace

    torch.manual_seed(0)
    task = learnable_task(n_train or scale.tiny_n_train, scale.tiny_n_eval, scale.tiny_size)
    return Workspace.build(task, load_clip(custom=tiny_clip_config()), device, num_workers=0,
                           eval_batch_size=max(16, scale.tiny_n_eval // 2),
                           precision=precision or resolve_precision("auto", device), compile=compile,
                           channels_last=resolve_channels_last("auto", device))


def tiny_settings(scale: Scale, precision: str, seed: int = 0, lr_mult: float = 1.0, steps: Optional[int] = None):
    from autoft.engine import FinetuneSettings

    steps = steps or scale.tiny_steps
    return FinetuneSettings(steps=steps, lr=scale.tiny_lr * lr_mult, weight_decay=0.1,
                            warmup_steps=max(1, steps // 10), clip_grad_norm=1.0, precision=precision, seed=seed)


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def max_abs_diff(a: dict, b: dict) -> float:
    return max((x.float() - b[k].float()).abs().max().item() for k, x in a.items() if x.numel())


def bit_identical(a: dict, b: dict) -> bool:
    return all(torch.equal(x, b[k]) for k, x in a.items())


# ----------------------------------------------------------------------------------------------
# the sections


def sec_bf16(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    from autoft.cli import seed_everything
    from autoft.pipeline import search_trial

    device = r.device
    ws = tiny_workspace(device, r.scale, precision="bf16")
    task = ws.task
    pool = np.arange(len(task.train))
    logits0 = ws.logits(task.ood_val)
    labels = torch.as_tensor(task.ood_val.labels)
    acc0 = (logits0.argmax(1) == labels).float().mean().item()

    # what dtype the head computes in while training: bf16 under autocast (the hook sees every forward)
    dtypes: dict[str, set] = {}
    phase = {"name": ""}
    hook = ws.classifier.head.register_forward_hook(
        lambda m, i, o: dtypes.setdefault(phase["name"], set()).add(str(o.dtype).replace("torch.", "")))
    runs = {}
    try:
        for precision in ("fp32", "bf16"):
            phase["name"] = precision
            seed_everything(0)
            res = search_trial(ws, {"ce": 1.0}, tiny_settings(r.scale, precision), "all", pool, r.scale.tiny_batch)
            phase["name"] = f"eval_after_{precision}"
            logits = ws.logits(task.ood_val)  # the search's own evaluation path
            runs[precision] = (res, logits)
    finally:
        hook.remove()
    (res32, l32), (res16, l16) = runs["fp32"], runs["bf16"]
    acc32 = (l32.argmax(1) == labels).float().mean().item()
    acc16 = (l16.argmax(1) == labels).float().mean().item()
    agree = (l32.argmax(1) == l16.argmax(1)).float().mean().item()
    moved = (l32 - logits0).norm().item()
    dev_rel = (l16 - l32).norm().item() / max(moved, 1e-12)
    tol = TOLERANCES
    sec.numbers.update({
        "task": f"learnable tiny task, tiny CLIP, {r.scale.tiny_size} px, {r.scale.tiny_steps} steps of batch "
                f"{r.scale.tiny_batch}, lr {r.scale.tiny_lr:g}, {len(task.ood_val)} OOD-val images",
        "ood_val_accuracy_zero_shot": round(acc0, 4), "ood_val_accuracy_fp32": round(acc32, 4),
        "ood_val_accuracy_bf16": round(acc16, 4), "prediction_agreement": round(agree, 4),
        "logit_deviation_rel": round(dev_rel, 4), "logit_change_norm_fp32": round(moved, 3),
        "max_abs_logit_diff": round((l16 - l32).abs().max().item(), 4),
        "final_loss_fp32": res32["final_loss"], "final_loss_bf16": res16["final_loss"],
        "head_output_dtypes": {k: sorted(v) for k, v in dtypes.items()},
    })
    check("training under bf16 autocast computes in bfloat16", "bfloat16" in dtypes.get("bf16", set()),
          f"head outputs during the bf16 run: {sorted(dtypes.get('bf16', set()))}")
    check("the fp32 run computes in float32", dtypes.get("fp32") == {"float32"}, f"{sorted(dtypes.get('fp32', []))}")
    check("evaluation runs in fp32 after bf16 training", dtypes.get("eval_after_bf16") == {"float32"}
          and l16.dtype == torch.float32, f"head outputs {sorted(dtypes.get('eval_after_bf16', []))}, logits {l16.dtype}")
    check("training moved the logits", moved > 1e-3,
          f"||L_fp32 - L_0|| = {moved:.3g}, accuracy {acc0:.3f} -> {acc32:.3f}")
    check(f"|OOD-val accuracy bf16 - fp32| <= {tol['ood_val_accuracy_abs']}",
          abs(acc16 - acc32) <= tol["ood_val_accuracy_abs"], f"{acc16:.4f} vs {acc32:.4f}")
    check(f"prediction agreement >= {tol['prediction_agreement_min']}", agree >= tol["prediction_agreement_min"],
          f"{agree:.4f}")
    check(f"||L_bf16 - L_fp32|| / ||L_fp32 - L_0|| <= {tol['logit_deviation_rel']}",
          dev_rel <= tol["logit_deviation_rel"], f"{dev_rel:.4f}")
    sec.notes.append("Tolerance: the bf16-autocast run (fp32 master weights, fp32 evaluation) must agree with the "
                     f"fp32 run on OOD-val accuracy within {tol['ood_val_accuracy_abs']} absolute, predict the same "
                     f"class for >= {tol['prediction_agreement_min']:.0%} of OOD-val images, and its fp32 logits may "
                     f"deviate from the fp32 run's by at most {tol['logit_deviation_rel']:.0%} of how far training "
                     "moved them from zero-shot. Same seed, same batches.")
    if r.on_cuda:  # the benchmark model too (random weights, random images: numbers only, not judged)
        cfg, mws, pool_main = r.main_workspace()
        out = {}
        for precision in ("fp32", "bf16"):
            r.main_trial(ALL_TERMS, seed=0, precision=precision)
            out[precision] = mws.logits(mws.task.ood_val)
        mws.reset()
        base = mws.logits(mws.task.ood_val)
        sec.numbers["main_model_logit_deviation_rel"] = round(
            (out["bf16"] - out["fp32"]).norm().item() / max((out["fp32"] - base).norm().item(), 1e-12), 4)
        sec.numbers["main_model_prediction_agreement"] = round(
            (out["bf16"].argmax(1) == out["fp32"].argmax(1)).float().mean().item(), 4)
        sec.notes.append(f"main_model_*: the same comparison on {r.scale.main_label}, all nine loss terms "
                         "(random weights and images: reported, not judged).")
    sec.headline = f"acc fp32 {acc32:.3f} / bf16 {acc16:.3f}, agreement {agree:.3f}, logit dev {dev_rel:.3f}"


def sec_fused(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    from autoft import engine

    cfg, ws, pool = r.main_workspace()
    sec.numbers["workspace_build_s"] = round(r.cache.get("main_build_s", 0.0), 2)
    sec.numbers["precision"] = ws.precision
    captured = []
    original = engine.make_optimizer

    def spy(*a, **k):
        opt = original(*a, **k)
        captured.append(opt)
        return opt

    engine.make_optimizer = spy  # the optimiser the search's own Finetuner builds
    try:
        res = r.main_trial(ALL_TERMS, seed=0)
    finally:
        engine.make_optimizer = original
    check("search_trial built an optimiser", bool(captured), f"{len(captured)} built")
    opt = captured[-1]
    fused = opt.defaults.get("fused")
    check("AdamW fused=True", fused is True and all(g.get("fused") for g in opt.param_groups),
          f"defaults fused={fused}, foreach={opt.defaults.get('foreach')}")
    states = [s for s in opt.state.values() if "exp_avg" in s]
    on_dev = [s["exp_avg"].device.type == ws.device.type and torch.as_tensor(s["step"]).device.type == ws.device.type
              for s in states]
    check("optimiser state (moments and step counters) on the training device", states and all(on_dev),
          f"{sum(on_dev)}/{len(states)} parameters")
    check("precision is bf16 on CUDA (trainer.precision=auto)", ws.precision == "bf16", ws.precision, cuda_only=True)

    # channels-last: 4-D weights (the patch embedding / conv stem) and the normalised inputs
    four_d = {n: p for n, p in ws.classifier.named_parameters() if p.dim() == 4}
    cl = {n: p.is_contiguous(memory_format=torch.channels_last) for n, p in four_d.items()}
    sec.numbers["conv_weights"] = {n: f"{tuple(p.shape)} channels_last={cl[n]}" for n, p in four_d.items()}
    images, labels = ws.split_tensors(ws.task.train, pool)
    x = ws.normalizer(images[:2])
    check("channels-last conv weights after a trial (reset keeps the format)", four_d and all(cl.values()),
          f"{sum(cl.values())}/{len(cl)} 4-D weights", cuda_only=True)
    check("channels-last inputs from the normaliser", x.is_contiguous(memory_format=torch.channels_last)
          and x.dtype == torch.float32, f"stride {x.stride()}", cuda_only=True)
    # the decoded pool and OOD-val subset stay on the device between trials
    kept = {str(k[0]): str(v[0].device) for k, v in ws.tensors.items()}
    sec.numbers["decoded_tensors"] = {str(k[0]): f"{tuple(v[0].shape)} {v[0].dtype} on {v[0].device}"
                                      for k, v in ws.tensors.items()}
    check("decoded ID pool and OOD-val subset kept on the GPU", kept and all(d.startswith("cuda") for d in kept.values()),
          kept, cuda_only=True)

    # what fusing buys: AdamW step time on these parameters, fused vs foreach
    params = [p for p in ws.classifier.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    timings = {}
    for impl in ("fused", "foreach"):
        o = torch.optim.AdamW(params, lr=1e-12, **{impl: True})
        o.step()
        sync(ws.device)
        t = time.perf_counter()
        n = 5
        for _ in range(n):
            o.step()
        sync(ws.device)
        timings[impl] = (time.perf_counter() - t) / n * 1000
        del o
    for p in params:
        p.grad = None
    ws.reset()
    sec.numbers["adamw_step_ms"] = {k: round(v, 3) for k, v in timings.items()}
    sec.numbers["trainable_parameters_m"] = round(sum(p.numel() for p in params) / 1e6, 2)
    sec.numbers["trial_seconds"] = round(res["seconds"], 3)
    sec.headline = (f"fused={fused}, AdamW step fused {timings['fused']:.2f} ms vs foreach "
                    f"{timings['foreach']:.2f} ms, inputs channels_last="
                    f"{x.is_contiguous(memory_format=torch.channels_last)}")


def sec_determinism(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    cfg, ws, pool = r.main_workspace()
    theta0 = {k: v for k, v in ws.theta0.items()}

    def a_b_a():
        a1 = r.main_trial(ALL_TERMS, seed=0)
        w1 = snapshot(ws.classifier)
        b = r.main_trial(CE_ONLY, seed=1, lr_scale=3.0)
        wb_diff = max_abs_diff(snapshot(ws.classifier), w1)
        a2 = r.main_trial(ALL_TERMS, seed=0)
        w2 = snapshot(ws.classifier)
        return a1, b, a2, w1, w2, wb_diff

    a1, b, a2, w1, w2, wb_diff = a_b_a()
    identical = bit_identical(w1, w2)
    sec.numbers.update({"model": r.scale.main_label, "identical_default_flags": identical,
                        "max_abs_weight_diff": max_abs_diff(w1, w2), "objective_a1": a1["objective"],
                        "objective_a2": a2["objective"], "final_loss_a1": a1["final_loss"],
                        "final_loss_a2": a2["final_loss"], "objective_b": b["objective"],
                        "weights_moved_from_theta0": max_abs_diff(w1, theta0), "trial_b_vs_a_weight_diff": wb_diff})
    check("trial A moved the weights (the comparison is not vacuous)", max_abs_diff(w1, theta0) > 0,
          f"max |theta_A - theta0| = {max_abs_diff(w1, theta0):.3g}")
    check("trial B (other hparams, seed) ended elsewhere", wb_diff > 0, f"max |theta_B - theta_A| = {wb_diff:.3g}")
    flags_note = ""
    if not identical and r.on_cuda:
        # retry with deterministic cuDNN (and deterministic algorithms where PyTorch has them)
        old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            a1, b, a2, w1, w2, _ = a_b_a()
            identical_cudnn = bit_identical(w1, w2)
            sec.numbers["identical_with_cudnn_deterministic"] = identical_cudnn
            sec.numbers["max_abs_weight_diff_cudnn_deterministic"] = max_abs_diff(w1, w2)
            if not identical_cudnn:
                torch.use_deterministic_algorithms(True, warn_only=True)
                try:
                    a1, b, a2, w1, w2, _ = a_b_a()
                finally:
                    torch.use_deterministic_algorithms(False)
                sec.numbers["identical_with_deterministic_algorithms"] = bit_identical(w1, w2)
                sec.numbers["max_abs_weight_diff_deterministic_algorithms"] = max_abs_diff(w1, w2)
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old
        identical = bit_identical(w1, w2)
        flags_note = ("bit-identical only with torch.backends.cudnn.deterministic=True"
                      if sec.numbers.get("identical_with_cudnn_deterministic") else
                      "bit-identical only with torch.use_deterministic_algorithms(True) (and "
                      "CUBLAS_WORKSPACE_CONFIG=:4096:8)" if identical else "")
        if flags_note:
            sec.notes.append(f"Default flags give different weights: {flags_note}. Set it for exactly "
                             "reproducible trials (at some speed cost).")
    check("same seed after reset to theta0 -> bit-identical weights", identical,
          f"max |diff| {max_abs_diff(w1, w2):.3g}" + (f"; {flags_note}" if flags_note else ""))
    check("same objective and final loss", a1["objective"] == a2["objective"] and a1["final_loss"] == a2["final_loss"],
          f"objective {a1['objective']} vs {a2['objective']}, loss {a1['final_loss']} vs {a2['final_loss']}")
    sec.headline = (f"identical={sec.numbers['identical_default_flags']} (default flags)"
                    + (f"; {flags_note}" if flags_note else ""))


def sec_memory(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    cfg, ws, pool = r.main_workspace()
    dev = ws.device
    peaks, after, rss = [], [], []
    sync(dev)
    base = torch.cuda.memory_allocated(dev) if r.on_cuda else 0
    for i in range(5):
        if r.on_cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        r.main_trial(ALL_TERMS, seed=i, lr_scale=(0.5, 1.0, 2.0, 1.0, 0.7)[i])
        sync(dev)
        if r.on_cuda:
            peaks.append(mib(torch.cuda.max_memory_allocated(dev)))
            after.append(mib(torch.cuda.memory_allocated(dev)))
        rss.append(rss_mib())
    sec.numbers["process_rss_mib_per_trial"] = rss
    if not r.on_cuda:
        check("torch.cuda.max_memory_allocated flat across 5 trials", cuda_only=True)
        sec.headline = f"RSS per trial {rss} MiB (CPU: not judged)"
        return
    spread = max(peaks) - min(peaks)
    allowed = max(TOLERANCES["memory_spread_mib"], TOLERANCES["memory_spread_frac"] * max(peaks))
    grown = after[-1] - after[0]
    sec.numbers.update({"peak_mib_per_trial": peaks, "allocated_after_trial_mib": after,
                        "allocated_before_first_mib": mib(base), "peak_spread_mib": round(spread, 1),
                        "allowed_spread_mib": round(allowed, 1),
                        "reserved_mib": mib(torch.cuda.memory_reserved(dev))})
    check(f"per-trial peak flat (max - min <= {allowed:.0f} MiB)", spread <= allowed, f"peaks {peaks} MiB")
    check(f"memory freed between trials (allocated after trial 5 - after trial 1 <= "
          f"{TOLERANCES['memory_retained_mib']:.0f} MiB)", grown <= TOLERANCES["memory_retained_mib"],
          f"after each trial {after} MiB")
    sec.headline = f"peaks {peaks} MiB (spread {spread:.1f})"


def sec_compile(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    from torch._dynamo.utils import counters

    from autoft.cli import seed_everything
    from autoft.pipeline import search_trial

    backend = "inductor" if r.on_cuda else "eager"
    torch._dynamo.reset()
    ws = tiny_workspace(r.device, r.scale, compile=r.on_cuda)
    if not r.on_cuda:  # the dry run: dynamo's tracing and guards without inductor's C++ build
        ws.net = torch.compile(ws.classifier, backend="eager")
    compiled = ws.net
    pool = np.arange(len(ws.task.train))
    steps = max(3, r.scale.tiny_steps // 3)
    s1 = tiny_settings(r.scale, ws.precision, seed=0, steps=steps)
    s2 = tiny_settings(r.scale, ws.precision, seed=5, lr_mult=0.3, steps=steps)
    w1, w2 = {"ce": 1.0, "l2init": 1.0, "flyp": 0.3}, {"ce": 1.0, "hinge": 0.5}

    def counts() -> dict:
        return {"graphs": counters["stats"].get("unique_graphs", 0), "frames": counters["frames"].get("total", 0),
                "aot_compiles": counters["aot_autograd"].get("total", 0),
                "recompiles": sum(counters["recompiles"].values())}

    def trial(weights, settings):
        seed_everything(settings.seed)
        before = counts()
        sync(r.device)
        t = time.perf_counter()
        res = search_trial(ws, weights, settings, "all", pool, r.scale.tiny_batch)
        sync(r.device)
        delta = {k: v - before[k] for k, v in counts().items()}
        return res, time.perf_counter() - t, delta

    ws.net = ws.classifier  # eager reference, same workspace
    eager, eager_s, _ = trial(w1, s1)
    ws.net = compiled
    rows = [trial(w1, s1), trial(w2, s2), trial(w1, s1)]
    sec.numbers.update({
        "backend": backend, "model": f"tiny CLIP, {r.scale.tiny_size} px, batch {r.scale.tiny_batch}, {steps} steps",
        "trial_seconds": [round(x[1], 3) for x in rows], "eager_trial_seconds": round(eager_s, 3),
        "new_graphs_per_trial": [x[2]["graphs"] for x in rows], "frames_compiled_per_trial": [x[2]["frames"] for x in rows],
        "recompiles_per_trial": [x[2]["recompiles"] for x in rows],
        "aot_autograd_compiles_per_trial": [x[2]["aot_compiles"] for x in rows],
        "compile_overhead_s": round(rows[0][1] - rows[1][1], 2),
        "final_loss": {"eager": eager["final_loss"], "compiled_trial1": rows[0][0]["final_loss"],
                       "compiled_trial3": rows[2][0]["final_loss"]},
    })
    check("trial 1 compiled graphs", rows[0][2]["graphs"] > 0, f"{rows[0][2]['graphs']} graphs")
    check("no recompilation in trials 2 and 3", all(not any(x[2].values()) for x in rows[1:]),
          f"per trial: new graphs {[x[2]['graphs'] for x in rows]}, frames compiled {[x[2]['frames'] for x in rows]}, "
          f"AOT compiles {[x[2]['aot_compiles'] for x in rows]}, recompiles {[x[2]['recompiles'] for x in rows]}")
    rel = abs(rows[2][0]["final_loss"] - rows[0][0]["final_loss"]) / max(abs(rows[0][0]["final_loss"]), 1e-12)
    check("compiled trial repeated after another trial gives the same loss (reset under compile)", rel <= 1e-4,
          f"relative difference {rel:.2e}")
    tol = 2e-2 if ws.precision == "bf16" else 1e-3
    rel_e = abs(rows[0][0]["final_loss"] - eager["final_loss"]) / max(abs(eager["final_loss"]), 1e-12)
    check(f"compiled vs eager final loss within {tol:g} (relative)", rel_e <= tol, f"{rel_e:.2e}")
    if not r.on_cuda:
        sec.notes.append("Dry run: torch.compile(backend='eager') exercises dynamo's tracing and guards only; "
                         "the GPU run compiles with inductor (Workspace.build(compile=True)).")
    sec.headline = (f"{backend}: graphs per trial {[x[2]['graphs'] for x in rows]}, trial seconds "
                    f"{[round(x[1], 2) for x in rows]}")
    torch._dynamo.reset()


def torchrun_cmd(nprocs: int, args: list) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nprocs), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), "--ddp-worker", *args]


def run_ddp_workers(r: Runner, sec: Section, limit: float, nprocs: int, backend: str, wdir: Path) -> float:
    """torchrun this script's DDP worker on `nprocs` processes; their results land in `wdir`."""
    t = time.monotonic()
    args = ["--backend", backend, "--device", "cuda:0" if r.on_cuda else "cpu", "--worker-out", str(wdir)]
    if r.dry:
        args.append("--dry-run")
    rc, out, secs = r.command(sec, "torchrun", torchrun_cmd(nprocs, args), r.remaining(limit, t), nprocs=nprocs)
    sec.numbers["torchrun_seconds"] = round(secs, 1)
    if rc != 0:
        raise RuntimeError(f"torchrun exited {rc}\n{out}")
    return secs


def sec_ddp_nccl(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    backend = "nccl" if r.on_cuda else "gloo"
    wdir = r.work / "ddp_world1"
    run_ddp_workers(r, sec, limit, 1, backend, wdir)
    res = json.loads((wdir / "rank0.json").read_text())
    sec.numbers.update({k: v for k, v in res.items() if k not in ("checks",)})
    for c in res["checks"]:
        # on the CPU the same code runs over gloo: NCCL itself is not exercised there
        check(c["name"], c["ok"], c["detail"], cuda_only=True, judge_on_cpu=True)
    if not r.on_cuda:
        sec.notes.append("Dry run: the same worker ran over gloo on the CPU (NCCL needs a GPU).")
    sec.headline = (f"{backend} world 1: all-reduce ok={res.get('all_reduce_ok')}, max |dist - single| = "
                    f"{res.get('max_abs_diff_vs_single', float('nan')):.2e}")


def sec_ddp_gloo(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    wdir = r.work / "ddp_gloo2"
    secs = run_ddp_workers(r, sec, limit, 2, "gloo", wdir)
    r0 = torch.load(wdir / "rank0.pt", map_location="cpu")
    r1 = torch.load(wdir / "rank1.pt", map_location="cpu")
    info = [json.loads((wdir / f"rank{i}.json").read_text()) for i in (0, 1)]
    same = bit_identical(r0, r1)
    sec.numbers.update({"ranks_bit_identical": same, "max_abs_diff_between_ranks": max_abs_diff(r0, r1),
                        "moved_from_theta0": info[0]["moved_from_theta0"], "devices": [i["device"] for i in info],
                        "backend": info[0]["backend"], "final_run_seconds": [i["final_run_seconds"] for i in info],
                        "model_pt_written_once": info[0]["model_pt"]})
    check("both ranks end with identical weights (gradients averaged)", same,
          f"max |rank0 - rank1| = {max_abs_diff(r0, r1):.3g}")
    check("the ranks trained", info[0]["moved_from_theta0"] > 1e-5, f"{info[0]['moved_from_theta0']:.3g}")
    check("rank 0 wrote model.pt", info[0]["model_pt"], "")
    check("both processes trained on the GPU", all(i["device"].startswith("cuda") for i in info),
          [i["device"] for i in info], cuda_only=True)
    sec.headline = f"ranks identical={same}, {secs:.0f} s"


def json_report(r: Runner, sec: Section, label: str, script: str, path: Path, limit: float, args: list) -> dict:
    """Run scripts/<script>.py with `args` inside the section's limit; the JSON it wrote to `path`
    (recorded as the section's file and its time as `bench_seconds`), or an error with its output."""
    rc, out, secs = r.command(sec, label, [sys.executable, str(ROOT / f"scripts/{script}.py"), *args],
                              r.remaining(limit, time.monotonic()))
    sec.numbers["bench_seconds"] = round(secs, 1)
    if rc != 0:
        raise RuntimeError(f"{script} exited {rc}\n{out}")
    sec.files.append(path.name)
    return json.loads(path.read_text())


def sec_bench(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    path = r.out / "bench_search.json"
    b = json_report(r, sec, "bench", "bench_search", path, limit,
                    ["--trials", str(r.scale.bench_trials), "--json", str(path), *r.scale.bench_overrides])
    loops = b["loops"]
    sec.numbers.update({
        "setting": f"{b['dataset']} / {b['model']} at {b['image_size']} px, batch {b['batch_size']}, "
                   f"{b['inner_steps']} inner steps, {b['ood_val']} OOD-val images, {b['precision']} (ours), "
                   f"{b['device_name']}",
        "seconds_per_trial": {k: round(v["seconds_per_trial"], 4) for k, v in loops.items()},
        "images_per_s": {k: round(v["images_per_s"], 1) for k, v in loops.items()},
        "train_images_per_s": {k: round(v["train_images_per_s"], 1) for k, v in loops.items()},
        "eval_images_per_s": {k: round(v["eval_images_per_s"], 1) for k, v in loops.items()},
        "fixed_seconds_per_trial": {k: round(v["overhead_seconds"], 4) for k, v in loops.items()},
        "peak_memory_mib": {k: round(v["peak_memory_mb"], 1) for k, v in loops.items()},
        "overhead_ratio": round(b["overhead_ratio"], 3), "speedup_vs_reference": round(b["speedup_vs_reference"], 2),
        "data_share": round(b["data_share"], 4), "first_trial_seconds": round(b["first_trial_seconds"], 2),
        "targets": {"overhead ratio <= 1.15": b["overhead_ratio"] <= 1.15},
    })
    check("bench_search ran and wrote its JSON", all(k in loops for k in ("ours", "floor", "reference")), path.name)
    check("benchmark ran on the GPU", b["device"].startswith("cuda"), b["device"], cuda_only=True)
    check("ours trained in bf16 (trainer.precision=auto)", b["precision"] == "bf16", b["precision"], cuda_only=True)
    r.cache["bench"] = b
    if not r.dry:
        sec.notes.append(f"Target overhead ratio (ours / compute floor) <= 1.15: "
                         f"{'met' if b['overhead_ratio'] <= 1.15 else 'NOT met'} ({b['overhead_ratio']:.3f}). "
                         "Not a pass/fail criterion of this check.")
    sec.headline = (f"ours {loops['ours']['images_per_s']:.0f} img/s, floor {loops['floor']['images_per_s']:.0f}, "
                    f"reference {loops['reference']['images_per_s']:.0f}; ratio {b['overhead_ratio']:.2f}, "
                    f"{b['speedup_vs_reference']:.2f}x vs reference; peak {loops['ours']['peak_memory_mb']:.0f} MiB")


def sec_loader(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    """The final runs' input: scripts/bench_loader.py on a realistic tree it fabricates (the search's
    pool sits decoded on the device; final runs and evaluation sets stream from the loader)."""
    path = r.out / "bench_loader.json"
    b = json_report(r, sec, "bench_loader", "bench_loader", path, limit, ["--json", str(path), *r.scale.loader_args])
    keys = ("live_images_per_s_per_core", "cached_images_per_s_per_core", "live_images_per_s_workers",
            "cached_images_per_s_workers")
    sec.numbers.update({
        "setting": f"{b['dataset']} {b['split']} ({'fabricated' if b['fabricated'] else 'real'}), {b['images']} "
                   f"images at {b['image_size']} px, {b['workers']} DataLoader workers",
        **{k: round(b[k], 1) for k in keys}, "cached_over_live": round(b["cached_over_live"], 1),
        "identical": b["identical"], "cores": cpu_cores(),
        "targets": {"cache >= 20x live per core": b["cached_over_live"] >= 20},
    })
    check("bench_loader ran and measured every pipeline", all(b[k] > 0 for k in keys),
          ", ".join(f"{k} {b[k]:.1f}" for k in keys))
    check("cached images identical to live preprocessing", b["identical"] is True, f"{b['images']} images")
    r.cache["loader"] = b
    sec.notes.append("Against the training images/s of bench_search: the cost projection's input line. The 20x "
                     "goal is reported, not judged (shared cores vary).")
    sec.headline = (f"per core: live {b['live_images_per_s_per_core']:.0f}, cached "
                    f"{b['cached_images_per_s_per_core']:.0f} img/s ({b['cached_over_live']:.0f}x); "
                    f"{b['workers']} workers: cached {b['cached_images_per_s_workers']:.0f} img/s")


def input_vs_training(loader: dict, bench: dict, cores: int) -> dict:
    """Does the final runs' input keep up? Cached (and live) images/s per core x the node's cores
    against the training images/s bench_search measured (ours)."""
    train = bench["loops"]["ours"]["train_images_per_s"]
    cached = loader["cached_images_per_s_per_core"] * cores
    live = loader["live_images_per_s_per_core"] * cores
    return {"cores": cores, "cached_images_per_s": cached, "live_images_per_s": live,
            "train_images_per_s": train, "cached_over_train": cached / train, "live_over_train": live / train,
            "cached_keeps_up": cached >= train, "live_keeps_up": live >= train}


def sec_search_final(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    import yaml

    t = time.monotonic()
    cwd = r.work / "search_and_final"
    cwd.mkdir(parents=True, exist_ok=True)
    over = r.scale.search_overrides
    train = [sys.executable, str(ROOT / "train.py")]
    # search.* keys exist only under search=autoft; the bootstrap interval is cut to 200 resamples
    rc, out, secs = r.command(sec, "search", [*train, "-m", "search=autoft", "hydra.sweeper.n_trials=3",
                                              "hydra.sweeper.plots=false", "search.bootstrap=200", *over],
                              r.remaining(limit, t), cwd=cwd)
    sec.numbers["search_seconds"] = round(secs, 1)
    if rc != 0:
        raise RuntimeError(f"train.py -m search=autoft exited {rc}\n{out}")
    model = next(o.split("=", 1)[1] for o in over if o.startswith("experiment=")).removeprefix("synthetic_")
    sweep = cwd / "outputs" / "synthetic" / model / "search-autoft"
    best = sweep / "best_hparams.yaml"
    check("optuna.db and best_hparams.yaml written", (sweep / "optuna.db").is_file() and best.is_file(), str(sweep))
    csvs = list(sweep.glob("*/trials.csv"))
    check("trials.csv written", bool(csvs), [str(c.relative_to(cwd)) for c in csvs])
    if csvs:
        import csv

        rows = list(csv.DictReader(csvs[0].open()))
        states = [row.get("state") for row in rows]
        sec.numbers["trial_states"] = states
        sec.numbers["trial_seconds"] = [row.get("duration_s") for row in rows]
        reasons = [row.get("fail_reason") for row in rows if row.get("fail_reason")]
        check("3 trials COMPLETE", states.count("COMPLETE") == 3, f"{states}" + (f"; {reasons}" if reasons else ""))
        (r.out / "search_trials.csv").write_text(csvs[0].read_text())
        sec.files.append("search_trials.csv")
    if best.is_file():
        hp = yaml.safe_load(best.read_text())
        sec.numbers["best_objective"] = hp.get("objective", hp.get("value"))
        (r.out / "best_hparams.yaml").write_text(best.read_text())
        sec.files.append("best_hparams.yaml")
    rc, out, secs = r.command(sec, "final", [*train, "method=autoft", "phase=final", f"hparams={best}", *over],
                              r.remaining(limit, t), cwd=cwd)
    sec.numbers["final_seconds"] = round(secs, 1)
    if rc != 0:
        raise RuntimeError(f"train.py method=autoft exited {rc}\n{out}")
    run = cwd / "outputs" / "synthetic" / model / "autoft" / "seed0"
    results = run / "results.json"
    check("final run wrote results.json and model.pt", results.is_file() and (run / "model.pt").is_file(), str(run))
    if results.is_file():
        res = json.loads(results.read_text())
        sec.numbers["final_metrics"] = {k: round(v.get("accuracy", float("nan")), 4) for k, v in res["metrics"].items()}
        sec.numbers["final_run_seconds"] = round(res.get("seconds", 0.0), 1)
        check("final run used the searched hyperparameters", res["hparams"]["source"] == str(best),
              res["hparams"]["source"])
        (r.out / "final_results.json").write_text(results.read_text())
        sec.files.append("final_results.json")
    sec.headline = f"search {sec.numbers['search_seconds']:.0f} s, final {sec.numbers['final_seconds']:.0f} s"


def sec_rehearsal(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    """scripts/rehearsal.py at full size (the README's real-data commands, ViT-B/16 from open_clip's hub
    layout, 182 iWildCam classes at 1024x768) on the GPU: each phase's time, peak RSS and peak CUDA
    memory. The dry run runs its --tiny version (5 classes, the tiny CLIP), as tests/test_readme.py does."""
    t = time.monotonic()
    report = r.out / "rehearsal.json"
    rc, out, secs = r.command(sec, "rehearsal", [sys.executable, "scripts/rehearsal.py", "--out", r.work / "rehearsal",
                                                 "--json", report, *(["--tiny"] if r.dry else [])], r.remaining(limit, t))
    if not report.is_file():
        raise RuntimeError(f"rehearsal wrote no report (exit {rc})\n{out}")
    rep = json.loads(report.read_text())
    sec.files.append(report.name)
    for p in rep["phases"]:
        sec.numbers[f"{p['phase']}_seconds"] = p["seconds"]
        if p.get("peak_rss_bytes"):
            sec.numbers[f"{p['phase']}_peak_rss_mib"] = round(mib(p["peak_rss_bytes"]), 1)
        if p.get("cuda_peak_allocated_bytes"):
            sec.numbers[f"{p['phase']}_cuda_peak_mib"] = round(mib(p["cuda_peak_allocated_bytes"]), 1)
    check("every phase of the README's commands succeeded", rep["ok"], [p["phase"] for p in rep["phases"]
                                                                         if p["returncode"] or p.get("missing")])
    if not rep["ok"]:
        sec.error = out
    sec.headline = f"{'ok' if rep['ok'] else 'FAILED'} in {rep['seconds']:.0f} s ({len(rep['phases'])} phases)"


def sec_pytest(r: Runner, sec: Section, check: Checker, limit: float) -> None:
    t = time.monotonic()
    xml = r.out / "pytest_cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *r.scale.pytest_args]
    rc, out, secs = r.command(sec, "pytest", cmd, r.remaining(limit, t))
    sec.numbers["pytest_seconds"] = round(secs, 1)
    sec.numbers["exit_code"] = rc
    if not xml.is_file():
        raise RuntimeError(f"pytest wrote no report (exit {rc})\n{out}")
    sec.files.append(xml.name)
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [c.get("classname", "") + "::" + c.get("name", "") for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    sec.numbers.update({"passed": passed, "failed": n["failures"], "errors": n["errors"], "skipped": n["skipped"],
                        "failed_tests": failed})
    if r.on_cuda:
        check("no CUDA test failed", n["failures"] + n["errors"] == 0, failed or "")
        check("the CUDA tests ran (none skipped)", passed > 0 and n["skipped"] == 0,
              f"{passed} passed, {n['skipped']} skipped")
    elif n["failures"] + n["errors"]:
        check("no CUDA test failed", False, failed)
    else:  # what the CPU can say: the CUDA tests exist and skip themselves
        all_skipped = passed == 0 and n["skipped"] == n["tests"] > 0
        check("on the CPU every CUDA test skips itself", all_skipped, f"{n['skipped']} of {n['tests']} skipped",
              cuda_only=True, judge_on_cpu=True)
    if failed:
        sec.error = out
    sec.headline = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"


SECTIONS = [
    # name, title, function, budget on the GPU (s)
    ("bf16_vs_fp32", "bf16 training with fp32 evaluation vs an fp32 run", sec_bf16, 60),
    ("fused_adamw_channels_last", "fused AdamW, channels-last, data kept on the device", sec_fused, 60),
    ("theta0_reset_determinism", "theta0 reset: bit-identical trials for one seed", sec_determinism, 60),
    ("memory_flat", "torch.cuda.max_memory_allocated flat across 5 trials", sec_memory, 45),
    ("bench_search", "bench_search: ours vs compute floor vs reference-style loop", sec_bench, 150),
    ("loader", "bench_loader: live vs cached images/s beside training's", sec_loader, 45),
    ("search_and_final", "3-trial search + final run through train.py", sec_search_final, 150),
    ("rehearsal", "the README's real-data commands at full size (scripts/rehearsal.py)", sec_rehearsal, 180),
    ("ddp_nccl_world1", "DDP over NCCL, world size 1", sec_ddp_nccl, 60),
    ("ddp_gloo_2proc", "DDP over gloo, 2 processes on the GPU", sec_ddp_gloo, 75),
    ("pytest_cuda", "CUDA-marked tests (pytest -m cuda)", sec_pytest, 90),
    ("compile_reuse", "torch.compile reused across trials (no recompilation)", sec_compile, 120),
]
IN_PROCESS = {"bf16_vs_fp32", "fused_adamw_channels_last", "theta0_reset_determinism", "memory_flat"}


# ----------------------------------------------------------------------------------------------
# the DDP worker (run by torchrun with --ddp-worker)


def ddp_worker(args) -> None:
    import torch.distributed as dist

    from autoft.distributed import SINGLE, DistEnv, from_environment
    from autoft.pipeline import FinalSpec, run_final

    out = Path(args.worker_out)
    out.mkdir(parents=True, exist_ok=True)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    checks = []

    class Collective(DistEnv):
        """World size 1 with the collectives on (the library skips them for a single process)."""

        @property
        def enabled(self) -> bool:
            return True

    if world == 1:
        dist.init_process_group(backend=args.backend)
        env = Collective(rank, world, int(os.environ.get("LOCAL_RANK", 0)))
    else:
        env = from_environment("cuda" if args.backend == "nccl" else "cpu")  # the library's own path
    backend = dist.get_backend()
    # a bare collective first: its failure message is clearer than one from inside training
    x = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(x)
    all_reduce_ok = bool(torch.all(x == world * (world + 1) / 2).item())
    checks.append({"name": f"{backend} all_reduce on {device.type}", "ok": all_reduce_ok, "detail": x.tolist()})

    scale = make_scale(device, args.dry_run)
    ws = tiny_workspace(device, scale, n_train=scale.ddp_batch * 4)
    weights = {"ce": 1.0, "hinge": 0.2, "flyp": 0.5, "l2init": 1.0}  # flyp: the feature all-gather
    spec = FinalSpec(weights=weights, lr=3e-3, weight_decay=0.1, epochs=scale.ddp_epochs, batch_size=scale.ddp_batch,
                     wise_alphas=())
    t = time.perf_counter()
    run_final(ws, spec, out / "run", progress=False, dist_env=env)
    secs = time.perf_counter() - t
    dist_w = {k: v.detach().cpu() for k, v in ws.classifier.state_dict().items()}
    theta0 = {k: v.detach().cpu() for k, v in ws.theta0.items()}
    res = {"backend": backend, "world_size": world, "rank": rank, "device": str(next(ws.classifier.parameters()).device),
           "precision": ws.precision, "all_reduce_ok": all_reduce_ok, "final_run_seconds": round(secs, 2),
           "moved_from_theta0": max_abs_diff(dist_w, theta0), "model_pt": (out / "run" / "model.pt").is_file()}
    checks.append({"name": "final run through the distributed path trained", "ok": res["moved_from_theta0"] > 1e-5,
                   "detail": f"max |theta - theta0| = {res['moved_from_theta0']:.3g}"})
    if world == 1:
        # the same run without the collectives: an all-reduce and all-gather over one rank change nothing
        run_final(ws, spec, out / "single", progress=False, dist_env=SINGLE)
        single = {k: v.detach().cpu() for k, v in ws.classifier.state_dict().items()}
        res["max_abs_diff_vs_single"] = max_abs_diff(dist_w, single)
        res["bit_identical_vs_single"] = bit_identical(dist_w, single)
        checks.append({"name": "same weights as the run without collectives (<= 1e-4)",
                       "ok": res["max_abs_diff_vs_single"] <= 1e-4,
                       "detail": f"max |diff| {res['max_abs_diff_vs_single']:.3g}, bit-identical "
                                 f"{res['bit_identical_vs_single']}"})
    res["checks"] = checks
    torch.save(dist_w, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(res, indent=2))
    dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# cost projection


def cost_projection(bench: dict, dry: bool, loader: Optional[dict] = None) -> dict:
    """GPU-hours of the paper's search budgets from the measured per-trial throughput of each loop."""
    from omegaconf import OmegaConf

    rows = []
    for name, label in (("iwildcam", "iWildCam"), ("fmow", "FMoW"), ("imagenet", "ImageNet")):
        d = OmegaConf.load(ROOT / "conf/dataset" / f"{name}.yaml")
        e = OmegaConf.load(ROOT / "conf/budget" / f"{name}_vit_b16.yaml")  # the budgets' home
        budget = {"task": label, "trials": int(e.search.n_trials), "inner_steps": int(e.trainer.inner_steps),
                  "batch_size": int(e.trainer.batch_size), "ood_val": int(d.task.ood_val_size)}
        hours = {}
        for loop in ("ours", "floor", "reference"):
            hours[loop] = gpu_hours(bench["loops"][loop], **{k: budget[k] for k in ("trials", "inner_steps",
                                                                                    "batch_size", "ood_val")})
        budget["gpu_hours"] = hours
        budget["reference_over_ours"] = hours["reference"] / hours["ours"]
        rows.append(budget)
    inputs = {loop: {k: bench["loops"][loop][k] for k in ("train_images_per_s", "eval_images_per_s",
                                                          "overhead_seconds")}
              for loop in ("ours", "floor", "reference")}
    return {
        "formula": "GPU-hours = trials x (c + inner_steps x batch / r_train + ood_val / r_eval) / 3600",
        "symbols": "r_train: training images/s, r_eval: OOD-val images/s, c: fixed seconds per trial (reset from "
                   "theta0, or the reference's deep copies and loader set-up), each measured by bench_search",
        "measured_with": f"{bench['model']} at {bench['image_size']} px, batch {bench['batch_size']}, "
                         f"{bench['inner_steps']} inner steps, {bench['ood_val']} OOD-val images, "
                         f"{bench['device_name']}",
        "assumptions": [
            "throughput in images/s measured at the benchmark's batch holds at batch 256 and 512 (larger batches "
            "are usually at least as efficient on a GPU, so this tends to overestimate)",
            "the search's cost only: the final retrain and the evaluation of the OOD test sets are not included",
            "one trial at a time on one GPU (several workers share a study: divide by the GPU count)",
            "the reference-style loop decodes random synthetic images per step; with JPEG decoding of real data "
            "it would be slower still",
        ] + (["DRY RUN: measured on the tiny CPU model; these hours mean nothing for planning"] if dry else []),
        "inputs": inputs, "rows": rows,
        "input": input_vs_training(loader, bench, cpu_cores()) if loader else None,
    }


def gpu_hours(loop: dict, trials: int, inner_steps: int, batch_size: int, ood_val: int) -> float:
    per_trial = (loop["overhead_seconds"] + inner_steps * batch_size / loop["train_images_per_s"]
                 + ood_val / loop["eval_images_per_s"])
    return trials * per_trial / 3600


# ----------------------------------------------------------------------------------------------
# Markdown


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v).replace("|", "\\|").replace("\n", " ")


def input_line(inp: Optional[dict]) -> list:
    if not inp:
        return ["Input vs training: not measured (run the loader section with bench_search).", ""]
    verdict = "keeps up" if inp["cached_keeps_up"] else "does NOT keep up"
    return [f"**Input vs training**: the image cache feeds {inp['cached_images_per_s']:,.0f} images/s (per core x "
            f"{inp['cores']} cores; live decoding {inp['live_images_per_s']:,.0f}) against training's "
            f"{inp['train_images_per_s']:,.0f} images/s: {inp['cached_over_train']:.1f}x, the cached input "
            f"{verdict} (live: {inp['live_over_train']:.2f}x).", ""]


def markdown(rep: dict) -> str:
    env = rep["environment"]
    where = env.get("gpu") or "CPU"
    lines = [f"# GPU readiness check (issue 13){' - DRY RUN on CPU' if rep['dry_run'] else ''}", ""]
    lines += [f"- device: `{rep['device']}` ({where}); torch {env.get('torch')}, CUDA {env.get('cuda_runtime')}, "
              f"cuDNN {env.get('cudnn', '-')}, NCCL {env.get('nccl', '-')}",
              f"- commit {env.get('git_commit', '?')}{' (with local changes)' if env.get('git_dirty') else ''}; "
              f"started {rep['started_utc']}; wall time {rep['wall_s']:.0f} s of a {rep['budget_s']:.0f} s budget",
              f"- command: `{rep['command']}`",
              f"- main workspace: {rep['scale']['main']}",
              f"- result: **{'OK' if rep['ok'] else 'FAILURES'}** "
              f"({', '.join(f'{v} {k}' for k, v in rep['summary'].items())})", ""]
    if rep["dry_run"]:
        lines += ["This is the CPU dry run: every section's code path at tiny scale; CUDA-only assertions are "
                  "`skip (cpu)` and no number here says anything about a GPU.", ""]
    lines += ["| section | status | seconds | key numbers |", "|---|---|---|---|"]
    for s in rep["sections"]:
        st = f"**{s['status']}**" if s["status"] == "fail" else s["status"]
        lines.append(f"| [{s['name']}](#{s['name']}) | {st} | {s['seconds']:.1f} | {_fmt(s['headline'])} |")
    lines.append("")
    for s in rep["sections"]:
        lines += [f"## {s['name']}", "", f"{s['title']}: **{s['status']}** in {s['seconds']:.1f} s "
                  f"(budget {s['budget_s']:.0f} s)", ""]
        if s["checks"]:
            lines += ["| check | status | detail |", "|---|---|---|"]
            lines += [f"| {_fmt(c['name'])} | {c['status']} | {_fmt(c['detail'])} |" for c in s["checks"]]
            lines.append("")
        if s["numbers"]:
            lines += ["| measured | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in s["numbers"].items()]
            lines.append("")
        lines += [f"- {n}" for n in s["notes"]]
        if s["files"]:
            lines.append(f"- files: {', '.join(f'`{f}`' for f in s['files'])}")
        if s["error"]:
            lines += ["", "Error:", "", "```text", s["error"].strip()[-4000:], "```"]
        lines.append("")
    cost = rep.get("cost_projection")
    lines += ["## Cost projection (GPU-hours of the paper's search budgets)", ""]
    if not cost:
        lines += ["Not available: the bench_search section did not produce throughput numbers.", ""]
    elif "error" in cost:
        lines += ["The projection failed:", "", "```text", cost["error"], "```", ""]
    else:
        lines += [f"`{cost['formula']}`", "", f"{cost['symbols']}. Measured with {cost['measured_with']}.", "",
                  "| loop | r_train (images/s) | r_eval (images/s) | c (s/trial) |", "|---|---|---|---|"]
        for loop, v in cost["inputs"].items():
            lines.append(f"| {loop} | {v['train_images_per_s']:.1f} | {v['eval_images_per_s']:.1f} | "
                         f"{v['overhead_seconds']:.3f} |")
        lines += ["", "| task | trials x inner steps x batch + OOD-val | ours | compute floor | reference-style | "
                      "reference / ours |", "|---|---|---|---|---|---|"]
        for row in cost["rows"]:
            h = row["gpu_hours"]
            lines.append(f"| {row['task']} | {row['trials']} x {row['inner_steps']} x {row['batch_size']} + "
                         f"{row['ood_val']} | {h['ours']:.3g} | {h['floor']:.3g} | {h['reference']:.3g} | "
                         f"{row['reference_over_ours']:.2f} |")
        lines += [""] + [f"- {a}" for a in cost["assumptions"]] + [""] + input_line(cost.get("input"))
    tol = rep["tolerances"]
    lines += ["## Tolerances", "", *[f"- `{k}`: {v}" for k, v in tol.items()], ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check_report", help="report directory (gpu_check.md, gpu_check.json, logs/)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny scale (forced on the CPU)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="global time budget in seconds")
    ap.add_argument("--sections", default="", help="comma-separated subset, in the order given (default: all)")
    ap.add_argument("--work-dir", default=None, help="scratch directory for train.py and DDP runs (default: a "
                                                     "temporary directory, removed at the end)")
    # the DDP worker, started by torchrun from the ddp_* sections
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="gloo", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.ddp_worker:
        ddp_worker(args)
        return 0

    from autoft.cli import resolve_device

    device = resolve_device(args.device)
    dry = args.dry_run or device.type == "cpu"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads_per_process(1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir).resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        r = Runner(args, device, dry, out, work)
        if device.type == "cpu" and not args.dry_run:
            print("[gpu_check] no GPU: running the CPU dry run (tiny scale)", flush=True)
        wanted = [s for s in args.sections.split(",") if s] or [s[0] for s in SECTIONS]
        table = {s[0]: s for s in SECTIONS}
        unknown = [w for w in wanted if w not in table]
        if unknown:
            ap.error(f"unknown section(s) {unknown}; valid: {', '.join(table)}")
        print(f"[gpu_check] device {device} ({r.env.get('gpu', 'CPU')}), {'dry run, ' if dry else ''}"
              f"budget {r.budget:.0f} s, report in {out}", flush=True)
        for name in wanted:
            _, title, fn, budget = table[name]
            if name not in IN_PROCESS:
                r.release_main()  # free the main workspace before the subprocess sections
            r.run(name, title, lambda sec, check, limit, fn=fn: fn(r, sec, check, limit),
                  budget if not dry else max(budget, 60))
        r.release_main()
        cost = None
        if "bench" in r.cache:
            try:
                cost = cost_projection(r.cache["bench"], dry, r.cache.get("loader"))
            except Exception:  # noqa: BLE001
                cost = {"error": traceback.format_exc(limit=-5)}
        r.cache["cost"] = cost
        r.write(cost)
    n_fail = sum(1 for s in r.sections if s.status == "fail")
    print(f"[gpu_check] done in {time.monotonic() - r.t0:.0f} s: "
          + ", ".join(f"{s.name} {s.status}" for s in r.sections), flush=True)
    print(f"[gpu_check] report: {out / 'gpu_check.md'}", flush=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
