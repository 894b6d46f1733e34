"""scripts/demo.py's plan: what `make demo` runs, in which order, and what makes a step done."""
from __future__ import annotations

from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _demo():
    return load_script("demo")


def test_demo_plan_installs_the_foundation_then_searches_then_runs_every_final(tmp_path):
    demo = _demo()
    steps = {s.name: s for s in demo.demo_steps("shapes", "shapes_rn10t", [0, 1], [], tmp_path, jobs=2)}
    assert list(steps) == ["foundation", "search", "zeroshot+ft-seed0", "autoft-seed0", "ft-seed1", "autoft-seed1"]
    assert steps["foundation"].outputs[0].name.startswith("shapes_rn10t-")
    assert steps["search"].after == ["foundation"] and steps["search"].marker
    assert "hydra/launcher=joblib" in steps["search"].cmd and "hydra.sweeper.n_jobs=2" in steps["search"].cmd
    assert all(steps[n].after == ["search"] for n in steps if n not in ("foundation", "search"))
    assert [p.relative_to(tmp_path).as_posix() for p in steps["zeroshot+ft-seed0"].outputs] == \
        ["zeroshot/seed0/results.json", "ft/seed0/results.json"]
    # another command (here: one job) is another search marker, so a changed demo never skips its search
    one = {s.name: s for s in demo.demo_steps("shapes", "shapes_rn10t", [0], [], tmp_path, jobs=1)}
    assert "hydra/launcher=joblib" not in one["search"].cmd
    assert one["search"].outputs != steps["search"].outputs
