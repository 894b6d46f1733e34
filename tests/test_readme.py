"""The README's real-data commands are commands that work: scripts/rehearsal.py reads them from the
README as written and runs them on a fabricated iWildCam tree with small budgets appended (the check,
the search, the final retrain with its tables). The default suite runs the 5-class version with the
tiny random CLIP; the full-size rehearsal (ViT-B/16 in open_clip's hub layout, 182 classes, 1024x768
JPEGs: `make rehearsal`) is a `slow` test."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, load_script, offline_env
from test_paper_benchmarks import BENCHMARKS

rehearsal = load_script("rehearsal")


def test_the_readme_leads_its_real_data_section_with_the_missions_command():
    section = (ROOT / "README.md").read_text().split(rehearsal.README_SECTION, 1)[1]
    assert section.lstrip().startswith("`python train.py -m search=autoft dataset=iwildcam`")
    commands = rehearsal.readme_commands()
    assert [c.split()[1] for c in commands] == ["scripts/prepare_data.py", "train.py", "scripts/final_retrain.py"]
    assert "python train.py -m search=autoft dataset=iwildcam data_root=/data" in commands
    # every command is rehearsed: its /data replaced, its budgets appended, nothing else changed
    argv = rehearsal.with_small_budgets(commands[1], Path("/tmp/tree"), rehearsal.SMALL)
    assert argv == ["python", "train.py", "-m", "search=autoft", "dataset=iwildcam", "data_root=/tmp/tree",
                    *rehearsal.SEARCH]


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # '#' lines in code blocks are comments
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_readme_is_short_and_its_links_and_the_docs_links_resolve():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < 300  # the detail lives in docs/ (issue 22)
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in heading_anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken
    assert {"sweeper.md", "speed.md", "benchmark.md", "design.md"} <= {p.name for p in pages}


def run_rehearsal(out: Path, *flags: str, timeout: int) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "rehearsal.py"), "--out", str(out), *flags],
                          capture_output=True, text=True, env=offline_env(), timeout=timeout)
    report_file = out / "rehearsal.json"
    assert report_file.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert done.returncode == 0 and report["ok"], done.stdout[-6000:] + done.stderr[-3000:]
    return report


def check_outputs(out: Path, model: str, n_classes: int) -> None:
    results = out / "work" / "outputs" / "iwildcam" / model
    best = yaml.safe_load((results / "search-autoft" / "best_hparams.yaml").read_text())
    assert best["n_complete"] == 2 and best["dataset"] == "iwildcam"  # the search ran its 2 trials to the end
    auto = json.loads((results / "autoft" / "seed0" / "results.json").read_text())
    zero = json.loads((results / "zeroshot" / "seed0" / "results.json").read_text())
    assert (auto["dataset"], auto["model"], zero["method"]) == ("iwildcam", model, "zeroshot")
    assert auto["hparams"]["source"].endswith("best_hparams.yaml")
    assert auto["hparams"]["lr"] == pytest.approx(best["lr_scale"] * 1e-5) == pytest.approx(best["lr"])  # iwildcam's base_lr
    assert auto["epochs"] and len(auto["wise"]) == 11 and auto["resources"]["device"] == "cpu"
    for res in (auto, zero):  # macro-F1 of 182 (or 5) classes, from the wilds evaluator, on every split
        assert set(res["metrics"]) == {"id_val", "ood_val", "id_test", "ood_test"}
        assert all(0.0 <= m["macro_f1"] <= 1.0 for m in res["metrics"].values())
    table = json.loads((results / "results_table.json").read_text())  # iWildCam's paper table (tiny or full)
    want = BENCHMARKS["iwildcam"][2]
    assert [r["label"] for r in table["rows"]] == ["Zero-shot", "AutoFT", "AutoFT + WiSE-FT (α=0.5)"]
    assert (table["metric"], table["id_test"], table["columns"]) == (want["metric"], want["id_test"], want["columns"])
    assert [table["headers"][c] for c in table["columns"]] == want["headers"]
    assert table["rows"][1]["cells"]["id"]["mean"] == pytest.approx(auto["metrics"]["id_test"]["macro_f1"])
    classes = (out / "data" / "iwildcam_v2.0" / "categories.csv").read_text().splitlines()
    assert len(classes) - 3 == n_classes  # header and the two categories absent from the release


def test_the_readme_commands_run_on_a_fabricated_tree(tmp_path):
    report = run_rehearsal(tmp_path, "--tiny", timeout=900)
    assert [p["phase"] for p in report["phases"]] == ["data", "check", "search", "final"]
    assert all(p["peak_rss_bytes"] > 0 for p in report["phases"][1:])
    check_outputs(tmp_path, "tiny_vit", 5)


@pytest.mark.slow
@pytest.mark.timeout(3300)  # above its run's own limit, which reports what the run printed
def test_the_full_size_rehearsal(tmp_path):
    """ViT-B/16 (random weights where open_clip's hub download looks), all 182 iWildCam classes at
    1024x768: the README's commands as a user with a GPU node would run them (about 15 min on 2 cores)."""
    report = run_rehearsal(tmp_path, timeout=3000)
    assert [p["phase"] for p in report["phases"]] == ["weights", "data", "check", "search", "final"]
    weights = Path(report["phases"][0]["files"][0])
    assert weights.name == "open_clip_model.safetensors" and "models--timm--vit_base_patch16_clip_224.openai" in str(weights)
    check_outputs(tmp_path, "vit_b16", 182)


def test_a_disk_too_full_for_the_suite_stops_it_in_one_line(tmp_path):
    """conftest's pytest_sessionstart: with less free space than the suite needs in its temporary
    folder, pytest stops before any test with one line naming the folder, and exit status 4 (here the
    need is raised above what any disk has, through AUTOFT_TEST_MIN_FREE_GIB)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_losses.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=offline_env(AUTOFT_TEST_MIN_FREE_GIB="1000000", TMPDIR=str(tmp_path)))
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert re.search(rf"only [\d.]+ GiB free in {re.escape(str(tmp_path))}; the tests need 1e\+06 GiB there", said), said
    assert "passed" not in said and "error" not in said.lower()
