"""Run independent commands side by side on one machine: dependencies, resume, logs, progress + ETA.

The demo and the benchmark are graphs of ordinary `train.py` commands. On a 2-core machine two
one-thread processes finish small CPU runs sooner than one two-thread process (the model is too
small to keep two threads busy), so `run_steps` runs up to `jobs` steps at once, each with
cores // jobs threads unless the step asks for more (the foundation build, which runs alone).

A step is done when its outputs exist (a results.json must also be complete); steps already done
are skipped, so rerunning a killed graph continues it. A step whose command is resumable by itself
(a search: its study knows its trials) names a `marker` file instead, written when it exits 0.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from autoft.records import RESULTS_FILE


@dataclass
class Step:
    name: str
    cmd: list[str]
    outputs: list[Path]           # done when every one exists (and a results.json is complete)
    units: float = 1.0            # relative cost, for the ETA before measured rates exist
    after: list[str] = field(default_factory=list)  # steps that must have succeeded first
    threads: Optional[int] = None  # CPU threads (default: cores // jobs)
    marker: bool = False          # outputs[0] is a marker written here when the command exits 0

    def done(self) -> bool:
        return all(complete(p) for p in self.outputs)


def complete(path: Path) -> bool:
    """The file exists (and, for a results.json, is complete and readable)."""
    if path.name == RESULTS_FILE:
        from autoft.reporting.results import ResultsError, read_result

        try:
            read_result(path)
            return True
        except ResultsError:
            return False
    return path.is_file()


def fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _start(step: Step, jobs: int, logs: Path, cwd: Path) -> tuple[subprocess.Popen, Path]:
    threads = step.threads or max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log = logs / (step.name.replace("/", "__") + ".log")
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(shlex.quote(c) for c in step.cmd) + "\n\n")
        fh.flush()
        # a session of its own: an interrupt stops the step's whole process group
        proc = subprocess.Popen(step.cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return proc, log


def run_steps(steps: list[Step], jobs: int, logs: Path, cwd: Path, label: str = "steps") -> list[str]:
    """Run the steps not yet done, `jobs` at a time, each after the steps it needs; returns the
    names of the steps that failed (or could not run because a step they need failed)."""
    logs.mkdir(parents=True, exist_ok=True)
    todo = [s for s in steps if not s.done()]
    finished = {s.name for s in steps if s.name not in {t.name for t in todo}}
    print(f"{label}: {len(steps)} steps, {len(finished)} already done, {len(todo)} to run, {jobs} at a time", flush=True)
    running: dict[str, tuple[subprocess.Popen, float, Step, Path]] = {}
    failed: list[str] = []
    spent_units = spent_seconds = 0.0
    t0, total_units, n_run = time.time(), sum(s.units for s in todo) or 1.0, 0
    try:
        while todo or running:
            for step in list(todo):
                if any(a in failed for a in step.after):
                    todo.remove(step)
                    failed.append(step.name)
                    print(f"  skip {step.name}: a step it needs failed", flush=True)
                elif len(running) < jobs and all(a in finished for a in step.after):
                    todo.remove(step)
                    proc, log = _start(step, jobs, logs, cwd)
                    running[step.name] = (proc, time.time(), step, log)
                    print(f"  start {step.name}  (log: {log})", flush=True)
            if not running and todo:  # what is left waits on steps that are neither done nor running
                failed += [s.name for s in todo]
                print(f"  cannot run {', '.join(s.name for s in todo)}: they need steps that are not in this run",
                      flush=True)
                break
            time.sleep(1)
            for name, (proc, started, step, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                took = time.time() - started
                if proc.returncode == 0 and step.marker:
                    step.outputs[0].parent.mkdir(parents=True, exist_ok=True)
                    step.outputs[0].write_text(f"finished {time.strftime('%Y-%m-%d %H:%M:%S')} in {took:.0f}s\n")
                n_run += 1
                if proc.returncode == 0 and step.done():
                    finished.add(name)
                    spent_units += step.units
                    spent_seconds += took
                    status = "done"
                else:
                    failed.append(name)
                    status = f"FAILED (exit {proc.returncode}; log: {log})"
                left = sum(s.units for s in todo) + sum(r[2].units for r in running.values())
                eta = f", ETA {fmt_seconds(left * spent_seconds / spent_units / jobs)}" if spent_units else ""
                print(f"[{n_run}/{n_run + len(todo) + len(running)}] {name} {status} in {fmt_seconds(took)}; "
                      f"elapsed {fmt_seconds(time.time() - t0)}{eta} ({100 * (1 - left / total_units):.0f}% of the work)",
                      flush=True)
    except KeyboardInterrupt:
        for proc, *_ in running.values():
            os.killpg(proc.pid, signal.SIGTERM)
        print(f"{label}: interrupted; rerun the same command to continue", flush=True)
        raise SystemExit(130)
    return failed
