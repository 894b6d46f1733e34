"""optuna-dashboard reads a study our sweeper wrote: a real toy search on SQLite, then the dashboard
on loopback (an ephemeral port), its HTTP API read back within a time bound, then stopped.

    optuna-dashboard sqlite:///outputs/<dataset>/<model>/search-autoft/optuna.db
"""
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from sweep_helpers import SWEEP, run_app_here

# found, not imported: importing it (scikit-learn, scipy) would cost every test process's collection
pytestmark = pytest.mark.skipif(importlib.util.find_spec("optuna_dashboard") is None,
                                reason="optuna-dashboard is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read().decode())


def test_dashboard_serves_the_trials_of_a_search(tmp_path):
    run_app_here(tmp_path, "search.n_trials=3")
    url = f"sqlite:///{tmp_path / SWEEP / 'optuna.db'}"
    [name] = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    port = free_port()
    proc = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                status, listing = get(f"{base}/api/studies", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.time() < deadline, "optuna-dashboard did not answer within 60 s"
                time.sleep(0.3)
        assert status == 200
        [summary] = listing["study_summaries"]
        assert summary["study_name"] == name
        status, detail = get(f"{base}/api/studies/{summary['study_id']}")
        assert status == 200 and detail["name"] == name and detail["directions"] == ["maximize"]
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == [0, 1, 2]
        for t in study.trials:
            served = trials[t.number]
            assert served["state"].lower() == "complete" and served["values"] == [pytest.approx(t.value)]
            assert {p["name"] for p in served["params"]} == set(t.params)
        # the sweeper's per-trial records are visible there too
        assert any(a["key"] == "worker" for a in trials[0]["user_attrs"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
