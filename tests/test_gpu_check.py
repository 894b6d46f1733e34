"""scripts/gpu_check.py (make gpu-check) on the CPU: real, small runs of its parts. Without CUDA the
CUDA tests are reported as skipped and the cost table comes from what bench_search measured; a
failing pytest selection, a part stopped at its budget and a part the total budget left no time for
are each reported as such, and the report is still written."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config, offline_env

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def gpu_check(out, *args, timeout=300):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          env=offline_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)
    return done, json.loads((out / "gpu_check.json").read_text())


# slow: the reporter's outcomes and its report stay in the default suite (the next test); CI runs this
@pytest.mark.slow
def test_dry_run_reports_the_skipped_cuda_tests_and_projects_the_paper_budgets(tmp_path):
    out = tmp_path / "report"
    done, rep = gpu_check(out, "--parts", "pytest,bench_search", "--pytest-args", "-m cuda tests/test_cuda.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert rep["dry_run"] is True and rep["ok"] is True and list(rep["parts"]) == ["pytest", "bench_search"]

    tests = rep["parts"]["pytest"]
    assert tests["status"] == "skipped" and "needs a CUDA GPU" in tests["reason"]
    cases = {t["test"].split("::")[1]: t["outcome"] for t in tests["numbers"]["tests"]}
    assert len(cases) >= 10 and set(cases.values()) == {"skipped"}
    assert "test_compiled_workspace_is_reused_across_trials" in cases and tests["numbers"]["counts"]["passed"] == 0

    # the cost table: bench_search's measured numbers x the budgets train.py composes for each paper task
    assert rep["parts"]["bench_search"]["status"] == "pass"
    bench = json.loads((out / "bench_search.json").read_text())["loops"]
    cost = rep["cost_projection"]
    rows = {row["task"]: row for row in cost["rows"]}
    assert [(r["trials"], r["inner_steps"], r["batch_size"], r["ood_val"]) for r in rows.values()] == [
        (100, 10, 256, 100), (500, 100, 256, 620), (100, 5, 512, 1000), (500, 100, 256, 1000)]  # the paper's
    cfg = compose_config("experiment=iwildcam_vit_b16", "search=autoft")
    assert rows["iwildcam_vit_b16"]["trials"] == cfg.search.n_trials
    md = (out / "gpu_check.md").read_text()
    for task, loop in (("iwildcam_vit_b16", "ours"), ("imagenet_vit_b16", "reference")):
        row, m = rows[task], bench[loop]
        per_trial = (m["overhead_seconds"] + row["inner_steps"] * row["batch_size"] / m["train_images_per_s"]
                     + row["ood_val"] / m["eval_images_per_s"])
        hours = row["trials"] * per_trial / 3600
        assert row["gpu_hours"][loop] == pytest.approx(hours, rel=1e-12)
        assert f"{hours:.3g}" in md
    assert "DRY RUN" in md and "| pytest | skipped |" in md and "| bench_search | pass |" in md


def test_failed_stopped_and_unstarted_parts_are_reported_and_the_report_still_written(tmp_path):
    selection = tmp_path / "test_selection.py"
    selection.write_text("def test_passes():\n    assert 2 + 2 == 4\n\n\ndef test_fails():\n    assert 2 + 2 == 5\n")
    out = tmp_path / "report"
    # rehearsal --tiny takes about a minute: it gets what is left of 12 s, is stopped, and leaves no
    # time for bench_loader
    done, rep = gpu_check(out, "--budget", "12", "--parts", "pytest,rehearsal,bench_loader",
                          "--pytest-args", str(selection))
    assert done.returncode == 1
    parts = rep["parts"]
    assert [p["status"] for p in parts.values()] == ["fail", "timeout", "not run (time budget)"], parts
    assert rep["ok"] is False and rep["cost_projection"] is None
    outcomes = {t["test"].split("::")[1]: t["outcome"] for t in parts["pytest"]["numbers"]["tests"]}
    assert outcomes == {"test_passes": "passed", "test_fails": "failed"}
    assert parts["pytest"]["exit_code"] == 1
    stopped = parts["rehearsal"]
    assert stopped["exit_code"] != 0 and stopped["seconds"] <= stopped["budget_s"] + 12  # SIGINT, then SIGKILL
    assert stopped["budget_s"] < 12 and "--parts bench_loader" in parts["bench_loader"]["reason"]
    md = (out / "gpu_check.md").read_text()
    assert "| rehearsal | timeout |" in md and "NOT OK" in md and "Not available: bench_search" in md


def test_an_unknown_part_is_refused_by_name(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--parts", "pytest,bench", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown part(s) ['bench']" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_the_whole_dry_run_passes_and_sets_the_input_beside_training(tmp_path):
    out = tmp_path / "report"
    done, rep = gpu_check(out, "--part-budget", "rehearsal=300", timeout=600)  # shared CPU cores: room to spare
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {k: p["status"] for k, p in rep["parts"].items()} == {
        "pytest": "skipped", "bench_search": "pass", "bench_loader": "pass", "rehearsal": "pass"}
    assert set(rep["parts"]["rehearsal"]["numbers"]["phases"]) == {"data", "check", "search", "final"}
    loader = json.loads((out / "bench_loader.json").read_text())
    train = json.loads((out / "bench_search.json").read_text())["loops"]["ours"]["train_images_per_s"]
    inp = rep["cost_projection"]["input"]
    assert loader["identical"] is True and inp["train_images_per_s"] == train
    assert inp["cached_over_train"] == pytest.approx(loader["cached_images_per_s_per_core"] * inp["cores"] / train)
