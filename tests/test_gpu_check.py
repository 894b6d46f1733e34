"""scripts/gpu_check.py (make gpu-check) proves itself on the CPU before it meets a GPU: the dry run
executes every section's code path at tiny scale, reports CUDA-only assertions as "skip (cpu)", never
"fail", and computes the cost table from the throughput it measured."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
ALL_SECTIONS = ["bf16_vs_fp32", "fused_adamw_channels_last", "theta0_reset_determinism", "memory_flat",
                "bench_search", "loader", "search_and_final", "rehearsal", "ddp_nccl_world1", "ddp_gloo_2proc",
                "pytest_cuda", "compile_reuse"]
# the default suite leaves out the three slowest sections on the CPU (about 100 s together); their code
# paths also have tests of their own (test_sweeper_train.py, test_readme.py, test_distributed.py) and
# the slow test below runs the whole dry run
LIGHT = [s for s in ALL_SECTIONS if s not in ("search_and_final", "rehearsal", "ddp_gloo_2proc")]
# what a CPU can and cannot judge
CPU_SKIPPED = {"memory_flat", "ddp_nccl_world1", "pytest_cuda"}


def dry_run(out: Path, *extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--dry-run", "--out", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text())


def check_report(rep: dict, out: Path, names: list) -> None:
    assert rep["dry_run"] is True and rep["device"] == "cpu" and rep["ok"] is True
    assert [s["name"] for s in rep["sections"]] == names
    for s in rep["sections"]:
        assert s["error"] is None, (s["name"], s["error"])
        expected = "skip (cpu)" if s["name"] in CPU_SKIPPED else "pass"
        assert s["status"] == expected, (s["name"], s["status"], s["checks"])
        assert s["checks"] and all(c["status"] in ("pass", "skip (cpu)") for c in s["checks"]), s["checks"]
        assert s["numbers"] and s["seconds"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and all(f"## {name}" in md for name in names)
    assert "Cost projection" in md and "GPU-hours = trials x" in md

    # the cost table comes from the numbers bench_search measured in this run
    bench = json.loads((out / "bench_search.json").read_text())
    cost = rep["cost_projection"]
    for loop in ("ours", "floor", "reference"):
        for key in ("train_images_per_s", "eval_images_per_s", "overhead_seconds"):
            assert cost["inputs"][loop][key] == bench["loops"][loop][key]
    rows = {row["task"]: row for row in cost["rows"]}
    assert [(r["trials"], r["inner_steps"], r["batch_size"], r["ood_val"]) for r in rows.values()] == [
        (500, 100, 256, 1000), (500, 100, 256, 620), (100, 5, 512, 1000)]  # the paper's budgets
    for task, loop in (("iWildCam", "ours"), ("ImageNet", "reference")):
        row, m = rows[task], bench["loops"][loop]
        hours = row["trials"] * (m["overhead_seconds"] + row["inner_steps"] * row["batch_size"] / m["train_images_per_s"]
                                 + row["ood_val"] / m["eval_images_per_s"]) / 3600
        assert row["gpu_hours"][loop] == pytest.approx(hours, rel=1e-12)
        assert f"{hours:.3g}" in md
    assert rows["iWildCam"]["reference_over_ours"] == pytest.approx(
        rows["iWildCam"]["gpu_hours"]["reference"] / rows["iWildCam"]["gpu_hours"]["ours"])

    # the input line: bench_loader's cached images/s per core x the cores, against bench_search's training images/s
    loader = json.loads((out / "bench_loader.json").read_text())
    assert loader["identical"] is True
    inp, cores = cost["input"], len(os.sched_getaffinity(0))
    assert inp["cached_images_per_s"] == pytest.approx(loader["cached_images_per_s_per_core"] * cores)
    assert inp["train_images_per_s"] == bench["loops"]["ours"]["train_images_per_s"]
    assert inp["cached_over_train"] == pytest.approx(inp["cached_images_per_s"] / inp["train_images_per_s"])
    assert f"{inp['cached_over_train']:.1f}x, the cached input" in md

    # a few numbers the GPU run will be read for
    sec = {s["name"]: s for s in rep["sections"]}
    assert sec["fused_adamw_channels_last"]["checks"][1] == {"name": "AdamW fused=True", "status": "pass",
                                                             "detail": "defaults fused=True, foreach=None"}
    assert sec["theta0_reset_determinism"]["numbers"]["identical_default_flags"] is True
    assert sec["compile_reuse"]["numbers"]["new_graphs_per_trial"][1:] == [0, 0]
    assert sec["bf16_vs_fp32"]["numbers"]["logit_deviation_rel"] <= rep["tolerances"]["logit_deviation_rel"]
    for loop in ("ours", "floor", "reference"):
        assert bench["loops"][loop]["images_per_s"] > 0 and bench["loops"][loop]["peak_memory_mb"] > 0


def test_dry_run_on_cpu(tmp_path):
    rep = dry_run(tmp_path / "report", "--sections", ",".join(LIGHT))
    check_report(rep, tmp_path / "report", LIGHT)


@pytest.mark.slow
def test_full_dry_run_on_cpu(tmp_path):
    rep = dry_run(tmp_path / "report")
    check_report(rep, tmp_path / "report", ALL_SECTIONS)
    sec = {s["name"]: s for s in rep["sections"]}
    assert sec["search_and_final"]["numbers"]["trial_states"] == ["COMPLETE"] * 3
    assert sec["ddp_gloo_2proc"]["numbers"]["ranks_bit_identical"] is True
    assert (tmp_path / "report" / "best_hparams.yaml").is_file()


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_one_failing_or_overrunning_section_never_stops_the_others(tmp_path):
    g = load_gpu_check()
    r = g.Runner(SimpleNamespace(budget=60.0), torch.device("cpu"), True, tmp_path / "out", tmp_path / "work")

    def broken(sec, check, limit):
        check("ran", True)
        raise ValueError("broken on purpose")

    def overruns(sec, check, limit):
        check("ran", True)
        time.sleep(30)

    def fine(sec, check, limit):
        check("plain", True)
        check("on the GPU only", cuda_only=True)
        sec.numbers["n"] = 1

    def cpu_path_broken(sec, check, limit):
        check("same code over gloo", False, "wrong", cuda_only=True, judge_on_cpu=True)

    a = r.run("broken", "raises", broken, 10)
    t = time.monotonic()
    b = r.run("overruns", "sleeps past its budget", overruns, 1)
    assert time.monotonic() - t < 10
    c = r.run("fine", "after the others", fine, 10)
    d = r.run("cpu_path", "a CUDA-only check whose CPU run failed", cpu_path_broken, 10)
    r.deadline = time.monotonic()  # the global budget is spent
    e = r.run("late", "too late", fine, 10)
    assert a.status == "fail" and "broken on purpose" in a.error
    assert b.status == "fail" and "time budget exceeded" in b.error
    assert c.status == "pass" and [x["status"] for x in c.checks] == ["pass", "skip (cpu)"]
    assert d.status == "fail"
    assert e.status == "skip (time budget)" and "global time budget" in e.notes[0]
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())  # written after every section
    assert [s["status"] for s in rep["sections"]] == ["fail", "fail", "pass", "fail", "skip (time budget)"]
    assert rep["ok"] is False and rep["summary"] == {"pass": 1, "fail": 3, "skip (time budget)": 1}
    assert "broken on purpose" in (tmp_path / "out" / "gpu_check.md").read_text()
