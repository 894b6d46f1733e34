#!/usr/bin/env python
"""GPU check (make gpu-check): the CUDA tests and the benchmarks in one call that fits in 8 minutes,
then a report, gpu_check.md and gpu_check.json in --out: each part's outcome and seconds, what it
measured, and the GPU-hours of the paper's search budgets projected from the measured throughput.

    python scripts/gpu_check.py --out gpu_check_report     # on a GPU
    python scripts/gpu_check.py --dry-run --out /tmp/gc    # on a CPU: tiny benchmarks, CUDA tests skip

Parts, each a subprocess with its own time budget (seconds), run in this order:
  pytest        165  pytest -m cuda tests (outcome and seconds of each test, read from --junitxml)
  bench_search  120  scripts/bench_search.py: ours vs the compute floor vs the reference-style loop
  bench_loader   45  scripts/bench_loader.py: live decoding vs the image cache, images/s per core
  rehearsal      90  scripts/rehearsal.py --tiny: the README's real-data commands
A part passes when its command exits 0 (pytest: and at least one test passed; without CUDA, where
every test skips, it is "skipped"), fails otherwise; one still running at its budget is stopped
(SIGINT, then SIGKILL) and is a "timeout"; one that cannot start within the total budget (--budget,
420 s) is "not run (time budget)". The report is rewritten after every part, so a killed check
still leaves one; the exit status is 0 when every part passed (or skipped for want of CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"pytest": 165.0, "bench_search": 120.0, "bench_loader": 45.0, "rehearsal": 90.0}  # 420 s in all
MIN_START_S = 5.0  # a part is not started with less than this left of the total budget
GRACE_S = 10.0  # after SIGINT (pytest still writes its junit XML), before SIGKILL
RESULTS = {"pytest": "pytest.xml", "bench_search": "bench_search.json", "bench_loader": "bench_loader.json",
           "rehearsal": "rehearsal.json"}  # what each part writes into --out
LOOPS = ("ours", "floor", "reference")
TINY_BENCH = ["experiment=synthetic_tiny_vit", "device=cpu", "dataset.task.image_size=32", "trainer.num_workers=0",
              "trainer.eval_batch_size=16", "trainer.inner_steps=3", "trainer.batch_size=8",
              "dataset.task.n_train=24", "dataset.task.n_ood_val=16"]


def commands(out: Path, dry: bool, pytest_args: list) -> dict:
    """Each part's command line; the dry run shrinks the benchmarks to the tiny CLIP on the CPU."""
    py, cores = sys.executable, len(os.sched_getaffinity(0))
    bench = ["--trials", "1", *TINY_BENCH] if dry else ["--trials", "3", "experiment=synthetic_vit_b16_random",
                                                       "device=cuda"]
    loader = ["--images", "8", "--workers", "1", "--batch", "8"] if dry else ["--images", "128", "--workers",
                                                                              str(max(1, cores - 1))]
    return {"pytest": [py, "-m", "pytest", *pytest_args, "-q", "-p", "no:cacheprovider",
                       f"--junitxml={out / RESULTS['pytest']}"],
            "bench_search": [py, "scripts/bench_search.py", "--json", str(out / RESULTS["bench_search"]), *bench],
            "bench_loader": [py, "scripts/bench_loader.py", "--json", str(out / RESULTS["bench_loader"]), *loader],
            "rehearsal": [py, "scripts/rehearsal.py", "--tiny", "--out", str(out / "rehearsal"),
                          "--json", str(out / RESULTS["rehearsal"])]}


def run_part(name: str, cmd: list, limit: float, out: Path) -> dict:
    """Run one part in its own process group, its output in logs/<name>.log, stopped at `limit` s."""
    log = out / "logs" / f"{name}.log"
    (out / RESULTS[name]).unlink(missing_ok=True)  # never read a previous check's results
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    t = time.monotonic()
    with open(log, "w") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            rc, timed_out = stop(proc, GRACE_S), True
        except BaseException:  # the reporter itself interrupted: the part goes with it
            stop(proc, 0)
            raise
    status = "timeout" if timed_out else "pass" if rc == 0 else "fail"
    return {"status": status, "exit_code": rc, "seconds": round(time.monotonic() - t, 1), "budget_s": round(limit, 1),
            "command": shlex.join(cmd), "log": str(log.relative_to(out)),
            "log_tail": None if status == "pass" else log.read_text(errors="replace")[-3000:]}


def stop(proc: subprocess.Popen, grace: float) -> int:
    """SIGINT to the part's process group (pytest still writes its XML), then SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def read_junit(path: Path) -> dict:
    """Each test's outcome and seconds from pytest's junit XML, and the counts."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.get("name") is None:  # the test a SIGINT interrupted
            continue
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            if (el := case.find(tag)) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = el.get("message", "")
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time", 0)), 2), "message": message[:300]})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def measured(name: str, out: Path) -> tuple[dict, str]:
    """What a finished part measured (from the file it wrote) and a one-line headline."""
    if name == "pytest":
        j = read_junit(out / RESULTS[name])
        return j, ", ".join(f"{v} {k}" for k, v in j["counts"].items() if v) or "no tests"
    b = json.loads((out / RESULTS[name]).read_text())
    if name == "bench_search":
        loops = {k: {m: b["loops"][k][m] for m in ("seconds_per_trial", "images_per_s", "train_images_per_s",
                                                  "eval_images_per_s", "overhead_seconds", "peak_memory_mb")}
                 for k in LOOPS}
        nums = {"setting": f"{b['model']} at {b['image_size']} px, batch {b['batch_size']}, {b['inner_steps']} "
                           f"inner steps, {b['ood_val']} OOD-val images, {b['precision']}, {b['device_name']}",
                "loops": loops, "overhead_ratio": b["overhead_ratio"],
                "speedup_vs_reference": b["speedup_vs_reference"]}
        rates = ", ".join(f"{k} {v['images_per_s']:.0f}" for k, v in loops.items())
        return nums, (f"images/s {rates}; ours/floor {b['overhead_ratio']:.2f}; "
                      f"peak {loops['ours']['peak_memory_mb']:.0f} MiB")
    if name == "bench_loader":
        keys = ("live_images_per_s_per_core", "cached_images_per_s_per_core", "cached_over_live", "identical")
        return {k: b[k] for k in keys}, (f"per core: live {b[keys[0]]:.0f}, cached {b[keys[1]]:.0f} images/s "
                                         f"({b['cached_over_live']:.0f}x), identical={b['identical']}")
    phases = {p["phase"]: {"seconds": p["seconds"], "cuda_peak_allocated_bytes": p.get("cuda_peak_allocated_bytes")}
              for p in b["phases"]}
    return {"ok": b["ok"], "phases": phases}, ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in phases.items())


def paper_budgets() -> list:
    """The paper tasks' search budgets, composed as train.py composes experiment=<task>_vit_b16."""
    from autoft.config_checks import compose_config

    rows = []
    for path in sorted((ROOT / "conf/budget").glob("*_vit_b16.yaml")):
        cfg = compose_config([f"experiment={path.stem}", "search=autoft"])
        rows.append({"task": path.stem, "trials": int(cfg.search.n_trials),
                     "inner_steps": int(cfg.trainer.inner_steps), "batch_size": int(cfg.trainer.batch_size),
                     "ood_val": int(cfg.dataset.task.ood_val_size)})
    return rows


def cost_projection(bench: dict, loader: dict | None, dry: bool) -> dict:
    """GPU-hours = trials x (c + inner_steps x batch / r_train + ood_val / r_eval) / 3600 per loop, with
    r_train, r_eval and c (fixed seconds per trial) as bench_search measured them."""
    rows = paper_budgets()
    for row in rows:
        row["gpu_hours"] = {k: row["trials"] * (bench["loops"][k]["overhead_seconds"] + row["inner_steps"]
                                                * row["batch_size"] / bench["loops"][k]["train_images_per_s"]
                                                + row["ood_val"] / bench["loops"][k]["eval_images_per_s"]) / 3600
                            for k in LOOPS}
        row["reference_over_ours"] = row["gpu_hours"]["reference"] / row["gpu_hours"]["ours"]
    cost = {"formula": "GPU-hours = trials x (c + inner_steps x batch / r_train + ood_val / r_eval) / 3600",
            "measured_with": bench["setting"], "rows": rows,
            "inputs": {k: {m: bench["loops"][k][m] for m in ("train_images_per_s", "eval_images_per_s",
                                                             "overhead_seconds")} for k in LOOPS},
            "assumptions": ["images/s measured at the benchmark's batch hold at the budgets' batch 256 and 512",
                            "the search only: no final retrain, no OOD test sets",
                            "one trial at a time on one GPU (workers sharing a study divide it)"]
            + (["DRY RUN on the CPU with the tiny CLIP: these hours mean nothing for planning"] if dry else [])}
    if loader:  # does the final runs' input keep up with training? cached images/s per core x the cores
        cores = len(os.sched_getaffinity(0))
        cached = loader["cached_images_per_s_per_core"] * cores
        train = bench["loops"]["ours"]["train_images_per_s"]
        cost["input"] = {"cores": cores, "cached_images_per_s": cached, "train_images_per_s": train,
                         "cached_over_train": cached / train}
    return cost


def markdown(rep: dict) -> str:
    lines = [f"# GPU check{' (DRY RUN on the CPU)' if rep['dry_run'] else ''}", "",
             f"- {rep['device']}; torch {rep['torch']}; commit {rep['commit']}; {rep['wall_s']:.0f} s of a "
             f"{rep['budget_s']:.0f} s budget; result: **{'OK' if rep['ok'] else 'NOT OK'}**", "",
             "| part | status | seconds (budget) | measured |", "|---|---|---|---|"]
    for name, p in rep["parts"].items():
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', 0):.0f} ({p['budget_s']:.0f}) | "
                     f"{p.get('headline', p.get('reason', ''))} |")
    tests = rep["parts"].get("pytest", {}).get("numbers", {}).get("tests", [])
    if tests:
        lines += ["", "## pytest", "", "| test | outcome | seconds |", "|---|---|---|"]
        lines += [f"| {t['test']} | {t['outcome']}{': ' + t['message'] if t['message'] else ''} | {t['seconds']} |"
                  for t in tests]
    for name, p in rep["parts"].items():
        if p.get("log_tail"):
            lines += ["", f"## {name}: {p['status']} (exit {p['exit_code']}; {p['log']})", "", "```text",
                      p["log_tail"].strip(), "```"]
    cost = rep["cost_projection"]
    lines += ["", "## Cost projection (GPU-hours of the paper's search budgets)", ""]
    if not cost or "error" in cost:
        lines.append(f"Not available: {cost['error'] if cost else 'bench_search did not finish'}.")
    else:
        lines += [f"`{cost['formula']}`, measured with {cost['measured_with']}.", "",
                  "| task | trials x inner steps x batch + OOD-val | ours | compute floor | reference-style | "
                  "reference / ours |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['trials']} x {r['inner_steps']} x {r['batch_size']} + {r['ood_val']} | "
                  + " | ".join(f"{r['gpu_hours'][k]:.3g}" for k in LOOPS) + f" | {r['reference_over_ours']:.2f} |"
                  for r in cost["rows"]]
        lines += ["", "- measured r_train, r_eval (images/s), c (s): " + "; ".join(
            f"{k} {v['train_images_per_s']:.1f}, {v['eval_images_per_s']:.1f}, {v['overhead_seconds']:.3f}"
            for k, v in cost["inputs"].items())] + [f"- {a}" for a in cost["assumptions"]]
        if inp := cost.get("input"):
            lines.append(f"- input: the image cache feeds {inp['cached_images_per_s']:,.0f} images/s ({inp['cores']} "
                         f"cores) against training's {inp['train_images_per_s']:,.0f}: {inp['cached_over_train']:.1f}x")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check_report", help="report folder (gpu_check.md, gpu_check.json, logs/)")
    ap.add_argument("--dry-run", action="store_true", help="tiny benchmarks on the CPU (the default without CUDA)")
    ap.add_argument("--budget", type=float, default=420.0, help="total time budget in seconds")
    ap.add_argument("--parts", default=",".join(BUDGETS), help=f"comma-separated subset of {', '.join(BUDGETS)}")
    ap.add_argument("--part-budget", action="append", default=[], metavar="PART=SECONDS", help="one part's budget")
    ap.add_argument("--pytest-args", default="-m cuda tests", help="what pytest runs (default: %(default)s)")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    budgets = dict(BUDGETS, **{k: float(v) for k, v in (pb.split("=", 1) for pb in args.part_budget)})
    if unknown := sorted(set(parts) - set(BUDGETS)) or sorted(set(budgets) - set(BUDGETS)):
        ap.error(f"unknown part(s) {unknown}; the parts are {', '.join(BUDGETS)}")
    import torch  # after the arguments are checked: a typo is answered at once
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cmds = commands(out, dry, shlex.split(args.pytest_args))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    rep = {"dry_run": dry, "device": torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA)",
           "torch": torch.__version__, "commit": commit.strip(), "budget_s": args.budget, "wall_s": 0.0,
           "ok": True, "parts": {}, "cost_projection": None}
    t0 = time.monotonic()
    for name in parts:
        left = args.budget - (time.monotonic() - t0)
        if left < MIN_START_S:
            part = {"status": "not run (time budget)", "budget_s": budgets[name],
                    "reason": f"the total budget of {args.budget:.0f} s was spent; rerun with --parts {name}"}
        else:
            print(f"[gpu_check] {name} (limit {min(budgets[name], left):.0f} s)", flush=True)
            part = run_part(name, cmds[name], min(budgets[name], left), out)
            print(f"[gpu_check] {name}: {part['status']} in {part['seconds']:.0f} s", flush=True)
        rep["parts"][name] = part
        report(rep, out, cuda, dry, time.monotonic() - t0)
    print(f"[gpu_check] {'OK' if rep['ok'] else 'NOT OK'} in {rep['wall_s']:.0f} s: {out / 'gpu_check.md'}", flush=True)
    return 0 if rep["ok"] else 1


def report(rep: dict, out: Path, cuda: bool, dry: bool, wall_s: float) -> None:
    """Read what the parts measured, project the cost, and (re)write gpu_check.json and gpu_check.md."""
    for name, part in rep["parts"].items():
        if "numbers" in part or "exit_code" not in part:
            continue
        if part["status"] == "timeout" and name != "pytest":  # pytest writes its XML on SIGINT; the others don't
            part["numbers"], part["headline"] = {}, f"stopped at its budget of {part['budget_s']:.0f} s"
            continue
        try:  # a failed or stopped pytest still has its junit XML: which tests failed or finished
            part["numbers"], part["headline"] = measured(name, out)
        except (OSError, KeyError, ValueError, ET.ParseError) as exc:
            part["numbers"], part["headline"] = {}, f"no readable results: {exc!r}"
            if part["status"] == "pass":
                part["status"] = "fail"
        if name == "pytest" and part["status"] == "pass" and not part["numbers"]["counts"]["passed"]:
            part["status"] = "fail" if cuda else "skipped"  # on a GPU, every CUDA test skipping is a failure
            part["reason"] = "; ".join(sorted({t["message"] for t in part["numbers"]["tests"]}))
    bench, loader = (rep["parts"].get(k, {}) for k in ("bench_search", "bench_loader"))
    if bench.get("status") == "pass":
        try:
            rep["cost_projection"] = cost_projection(bench["numbers"], loader.get("numbers") if loader.get(
                "status") == "pass" else None, dry)
        except Exception as exc:  # noqa: BLE001 - the report is still written
            rep["cost_projection"], rep["ok"] = {"error": repr(exc)}, False
    rep["wall_s"] = round(wall_s, 1)
    rep["ok"] = all(p["status"] in ("pass", "skipped") for p in rep["parts"].values())
    (out / "gpu_check.json").write_text(json.dumps(rep, indent=2))
    (out / "gpu_check.md").write_text(markdown(rep))


if __name__ == "__main__":
    sys.exit(main())
