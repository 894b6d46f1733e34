"""The benchmark's statistics (autoft.reporting.benchmark) on hand-made results with known numbers,
and scripts/benchmark.py's grid, resume and collection on fabricated run directories."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from autoft.reporting.benchmark import (CellRuns, as_dict, mean_ci, metric_name, paired, paired_figure, per_split,
                                        summarize, summary_markdown)
from autoft.reporting.results import read_result
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["snow", "night"]


def _block(id_acc: float, ood: tuple[float, float], metric: str = "accuracy") -> dict:
    return {"id_val": {metric: id_acc}, "ood_val": {metric: 0.5}, "id_test": {metric: id_acc},
            TESTS[0]: {metric: ood[0]}, TESTS[1]: {metric: ood[1]}}


def write(path: Path, method: str, seed: int, id_acc: float, ood: tuple[float, float],
          wise_half: tuple[float, tuple[float, float]] | None = None, metric: str = "accuracy") -> Path:
    """A results.json whose selected model has these numbers; `wise_half`: (ID, OOD) at alpha 0.5."""
    rec = {"dataset": "shapes", "model": "m", "method": method, "seed": seed, "objective_metric": metric,
           "higher_is_better": True, "metrics": _block(id_acc, ood, metric)}
    if wise_half is not None:
        rec["wise"] = {"0.0": _block(0.6, (0.4, 0.4), metric), "0.5": _block(*wise_half, metric),
                       "1.0": _block(id_acc, ood, metric)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(rec))
    return path / "results.json"


def test_mean_ci_is_the_student_t_interval():
    # [0.1, 0.2, 0.3]: mean 0.2, s = 0.1, t_{0.975, 2} = 4.302652729911275
    e = mean_ci([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert e.mean == pytest.approx(0.2) and e.n == 3
    assert e.low == pytest.approx(0.2 - half) and e.high == pytest.approx(0.2 + half)
    assert e.text() == f"20.0 [{100 * (0.2 - half):.1f}, {100 * (0.2 + half):.1f}]" == "20.0 [-4.8, 44.8]"
    one = mean_ci([0.42])
    assert one.low is None and one.text() == "42.0"
    with pytest.raises(ValueError):
        mean_ci([])


def cells(tmp_path: Path, metric: str = "accuracy") -> list[CellRuns]:
    """Two splits x two seeds; AutoFT's OOD mean beats FT's by 0.10, 0.20, 0.30, 0.40."""
    out = []
    for k, split in enumerate(["a", "b"]):
        zs = read_result(write(tmp_path / split / "zeroshot" / "seed0", "zeroshot", 0, 0.6, (0.5, 0.5), metric=metric))
        for s in range(2):
            gain = 0.1 * (1 + 2 * k + s)
            ft = read_result(write(tmp_path / split / "ft" / f"seed{s}", "ft", s, 0.9, (0.3, 0.3),
                                   wise_half=(0.8, (0.55, 0.55)), metric=metric))
            au = read_result(write(tmp_path / split / "autoft" / f"seed{s}", "autoft", s, 0.85,
                                   (0.3 + gain, 0.3 + gain), wise_half=(0.8, (0.7, 0.6)), metric=metric))
            out.append(CellRuns("single", split, s, {"zeroshot": zs, "ft": ft, "autoft": au}))
    return out


def test_summary_paired_differences_and_per_split_rows(tmp_path):
    cs = cells(tmp_path)
    rows = {r["key"]: r for r in summarize(cs)}
    assert list(rows) == ["zeroshot", "ft", "wise-ft", "autoft", "wise-autoft"]
    assert rows["autoft"]["ood"].mean == pytest.approx(0.3 + 0.25)  # gains 0.1..0.4, mean 0.25
    assert rows["wise-ft"]["ood"].mean == pytest.approx(0.55) and rows["wise-ft"]["ood"].low == pytest.approx(0.55)
    assert rows["wise-autoft"]["ood"].mean == pytest.approx(0.65) and rows["zeroshot"]["id"].mean == pytest.approx(0.6)
    diffs = {(d["a"], d["b"]): d for d in paired(cs)}
    d = diffs[("autoft", "ft")]
    # per-cell differences 0.1, 0.2, 0.3, 0.4: mean 0.25, s = 0.1291, t_{0.975, 3} = 3.182446305284263
    half = 3.182446305284263 * 0.12909944487358058 / 2
    assert d["ood"].mean == pytest.approx(0.25) and d["ood"].low == pytest.approx(0.25 - half)
    assert d["id"].mean == pytest.approx(-0.05) and d["wins"] == 4 and d["n"] == 4
    assert diffs[("wise-autoft", "wise-ft")]["ood"].mean == pytest.approx(0.10)
    assert diffs[("autoft", "wise-ft")]["wins"] == 2  # gains 0.3 and 0.4 (0.6, 0.7 > 0.55) beat WiSE-FT
    keys, split_rows = per_split(cs)
    by = {r["split"]: r for r in split_rows}
    assert by["a"]["ood"]["autoft"] == pytest.approx(0.45) and by["b"]["ood"]["autoft"] == pytest.approx(0.65)
    assert by["a"]["seeds"] == [0, 1] and by["a"]["tests"] == TESTS


def test_the_paired_plot_draws_each_difference_its_interval_and_wins(tmp_path):
    """The forest plot of the paired table, from the estimates or from benchmark.json's copy of them:
    one row per difference in the table's order, at its mean, its bar the 95% interval; the axis names
    the dataset's metric (here macro-F1), as the summary table does."""
    cs = cells(tmp_path, metric="macro_f1")
    diffs = paired(cs)
    assert metric_name(cs) == "macro-F1" and "; macro-F1 x100, mean [95% t interval]" in summary_markdown(cs, "T")
    for rows in (diffs, as_dict(cs)["paired"]):
        ax = paired_figure(rows, "T", metric_name(cs)).axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == [d["label"] for d in diffs]
        assert [t.get_text() for t in ax.texts] == [f"{d['wins']}/{d['n']}" for d in diffs]
        assert "OOD mean macro-F1" in ax.get_xlabel()
        i = next(i for i, d in enumerate(diffs) if (d["a"], d["b"]) == ("autoft", "ft"))
        bar = ax.containers[i]
        assert bar.lines[0].get_xdata()[0] == pytest.approx(25.0) and bar.lines[0].get_ydata()[0] == i
        (x0, y0), (x1, y1) = bar.lines[2][0].get_segments()[0]
        e = diffs[i]["ood"]
        assert (x0, x1) == (pytest.approx(100 * e.low), pytest.approx(100 * e.high)) and y0 == y1 == i


def _script():
    return load_script("benchmark")


def test_grid_splits_keep_id_fixed_and_test_on_every_other_domain():
    b = _script()
    splits = b.DEFAULT.splits()
    for sp in splits:
        assert "studio" not in sp.ood_val and "studio" not in sp.tests
        assert sorted(sp.tests + list(sp.ood_val)) == sorted(b.OTHERS)  # nothing left out, nothing twice
    assert [sp.id for sp in splits[:3]] == ["garden", "mix-garden-snow-night", "snow"]
    mixtures = [sp for sp in splits if sp.family == "mixture"]
    assert mixtures and all(len(sp.ood_val) == 3 for sp in mixtures)
    with pytest.raises(SystemExit, match="single-splits=9"):
        b.splits_of("single", 9)


def test_plan_runs_only_what_is_missing_and_collect_pairs_the_cells(tmp_path):
    """A benchmark directory with every run of one cell present: planning skips those steps, and
    collecting builds the tables from that cell only, naming what is missing."""
    b = _script()
    grid = b.Grid(single=1, mixture=0, seeds=2, trials=4, alpha_searched=False)
    where = tmp_path / "single" / "garden"
    methods = ["zeroshot", *b.BASELINES, "autoft"]
    for m in methods:
        write(where / m / "seed0", m, 0, 0.8, (0.5, 0.6), None if m == "zeroshot" else (0.7, (0.6, 0.6)))
    steps = {s.name: s for s in b.plan(grid, tmp_path, [])}
    assert steps["garden/baselines-s0"].done() and steps["garden/autoft-s0"].done()
    assert not steps["garden/baselines-s1"].done() and not steps["garden/search-s0"].done()
    assert steps["garden/autoft-s0"].after == ["garden/search-s0"]
    search = steps["garden/search-s1"].cmd
    assert "seed=1" in search and "search.n_trials=4" in search
    assert "dataset.task.test_domains=[snow,night,fog,clutter,sketch,outline,texture]" in search
    path = b.collect(grid, tmp_path)
    text = path.read_text()
    assert "Complete cells: 1" in text and "| AutoFT | 80.0 | 55.0 |" in text
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(data["single"]["cells"]) == 1 and any("seed1" in m for m in data["missing"])
    assert (tmp_path / "plots" / "single.png").stat().st_size > 1000


def test_with_logger_wandb_the_collected_benchmark_is_one_wandb_run(tmp_path, monkeypatch):
    """`logger=wandb` among the overrides: the steps log to W&B, and so does the collected benchmark,
    as one run (job_type benchmark) with the tables, their means, the plots and the files; read back
    from the offline run with W&B's own record format. Without it, nothing goes to W&B."""
    from autoft.reporting import wandb_logger as W
    from autoft.reporting import wandb_offline as O

    b = _script()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert b.wandb_logger_config(["trainer.epochs=2"]) is None and b.wandb_logger_config(["logger=none"]) is None
    logger = b.wandb_logger_config(["logger=wandb", "logger.mode=offline", "logger.project=bench"])
    assert logger["wandb"] is True and logger["project"] == "bench"
    grid = b.Grid(single=1, mixture=0, seeds=1, trials=4, alpha_searched=False, baselines=("ft",))
    for m, ood in (("zeroshot", (0.5, 0.6)), ("ft", (0.3, 0.4)), ("autoft", (0.6, 0.7))):
        write(tmp_path / "single" / "garden" / m / "seed0", m, 0, 0.8, ood, None if m == "zeroshot" else (0.7, (0.6, 0.6)))
    b.collect(grid, tmp_path, logger=logger)
    (run_dir,) = O.offline_runs(tmp_path)
    logged = O.read_offline_run(run_dir)
    assert (logged["run"]["job_type"], logged["run"]["group"]) == ("benchmark", "shapes/shapes_rn10t/benchmark")
    assert logged["run"]["id"] == W.run_id("benchmark", tmp_path.resolve())  # a later --collect updates this run
    assert logged["config"]["grid"]["single"] == 1
    summary = logged["summary"]
    assert summary["single/autoft/ood"] == pytest.approx(0.65) and summary["single/ft/ood"] == pytest.approx(0.35)
    assert summary["single/autoft-ft/ood"] == pytest.approx(0.30)
    assert summary["single/summary/_type"] == summary["single/paired/_type"] == "table-file"
    assert summary["plots/single_paired/_type"] == summary["plots/single/_type"] == "image-file"
    arts = {a["name"]: a for a in logged["artifacts"]}
    assert set(arts["benchmark-shapes-shapes_rn10t"]["files"]) == {"benchmark.md", "benchmark.json", "single.png", "single_paired.png"}


def test_make_tables_refuses_a_benchmark_folder_and_names_a_split(tmp_path, capsys):
    """A benchmark's folder holds every split's runs of the same methods and seeds: make_tables refuses
    it (and its family folder) in one message naming benchmark.md and a split, writing nothing; a
    folder above it fails on the repeats and says that a benchmark is among them; one split works."""
    make_tables = load_script("make_tables")
    bench = tmp_path / "outputs" / "bench"
    for split in ("cartoon", "sketch"):
        for m in ("zeroshot", "ft"):
            write(bench / "single" / split / m / "seed0", m, 0, 0.8, (0.5, 0.6), None if m == "zeroshot" else (0.7, (0.6, 0.6)))
    (bench / "logs").mkdir()
    for root in (bench, bench / "single"):
        assert make_tables.main([str(root), "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert f"{root} is a benchmark's folder" in err and str(bench / "benchmark.md") in err
        assert f"for example {bench / 'single' / 'cartoon'}" in err
    (bench / "benchmark.json").write_text("{}")  # collected
    assert make_tables.main([str(tmp_path / "outputs"), "--no-plots"]) == 2
    assert f"results of the benchmark {bench} are among them" in capsys.readouterr().err
    assert not list(tmp_path.rglob("results_table.md"))
    assert make_tables.main([str(bench / "single" / "cartoon"), "--no-plots"]) == 0
    assert (bench / "single" / "cartoon" / "results_table.md").is_file()


def test_the_results_notebook_shows_a_benchmark_then_reviews_its_first_split(tmp_path, monkeypatch):
    """notebooks/results.ipynb pointed at a benchmark's folder: its collected tables and plots, then the
    review of one split (never a table mixing the splits' test domains), executed by a Jupyter kernel."""
    from conftest import run_results_notebook

    b = _script()
    grid = b.Grid(single=2, mixture=0, seeds=1, trials=4, alpha_searched=False, baselines=("ft",))
    for split, gain in (("garden", 0.0), ("snow", 0.1)):
        for m, ood in (("zeroshot", (0.5, 0.6)), ("ft", (0.3, 0.4)), ("autoft", (0.6 + gain, 0.7 + gain))):
            write(tmp_path / "single" / split / m / "seed0", m, 0, 0.8, ood, None if m == "zeroshot" else (0.7, (0.6, 0.6)))
    (tmp_path / "logs").mkdir()
    b.collect(grid, tmp_path)
    text, markdown, _ = run_results_notebook(tmp_path, monkeypatch)
    assert "splits: single/garden, single/snow | reviewed below: single/garden" in text
    # AutoFT - FT in OOD mean: 0.30 and 0.40, mean 0.35 +- t_{0.975, 1} * 0.0707 / sqrt(2) = 12.706 * 0.05 = 0.635
    assert "| AutoFT − FT | 0.0 [0.0, 0.0] | 35.0 [-28.5, 98.5] | 2/2 |" in markdown  # the benchmark's paired table
    assert "| AutoFT | 80.0 [80.0, 80.0] | 70.0 [6.5, 133.5] | 2 |" in markdown
    assert "NOT INCLUDED" not in text  # one split: no run repeats another
    assert (tmp_path / "single" / "garden" / "results_table.md").is_file() and not (tmp_path / "results_table.md").exists()


def test_runner_runs_side_by_side_in_dependency_order_and_resumes(tmp_path, capsys):
    """Real processes: b needs a, c fails, d needs c (skipped); a rerun runs only what is missing."""
    from autoft.runner import Step, run_steps

    def writer(name: str, extra: str = "") -> list[str]:
        code = (f"import os, pathlib, time; time.sleep(0.2); {extra}"
                f"pathlib.Path({str(tmp_path / name)!r}).write_text(os.environ['OMP_NUM_THREADS'])")
        return [sys.executable, "-c", code]

    a = Step("a", writer("a"), [tmp_path / "a"])
    b = Step("b", writer("b", f"assert pathlib.Path({str(tmp_path / 'a')!r}).is_file(); "), [tmp_path / "b"],
             after=["a"], threads=3)
    c = Step("c", [sys.executable, "-c", "raise SystemExit(3)"], [tmp_path / "c"])
    d = Step("d", writer("d"), [tmp_path / "d"], after=["c"])
    e = Step("e", [sys.executable, "-c", "pass"], [tmp_path / "e.done"], marker=True)
    failed = run_steps([a, b, c, d, e], jobs=2, logs=tmp_path / "logs", cwd=tmp_path)
    assert sorted(failed) == ["c", "d"]
    assert (tmp_path / "b").read_text() == "3" and not (tmp_path / "d").exists() and (tmp_path / "e.done").is_file()
    assert "exit 3" in capsys.readouterr().out
    assert (tmp_path / "logs" / "c.log").read_text().startswith("$ ")
    (tmp_path / "a").write_text("kept")
    assert sorted(run_steps([a, b, c, d, e], jobs=2, logs=tmp_path / "logs", cwd=tmp_path)) == ["c", "d"]
    assert (tmp_path / "a").read_text() == "kept"  # done steps are not rerun


def test_budget_study_grows_one_study_in_a_chain_and_retrains_each_choice(tmp_path):
    b = _script()
    steps = b.budget_steps(tmp_path, [16, 48], top_k=5, extra=[])
    names = [s.name for s in steps]
    assert names == ["budget/search-b16-top0", "budget/final-b16-top0", "budget/search-b16-top5", "budget/final-b16-top5",
                     "budget/search-b48-top0", "budget/final-b48-top0", "budget/search-b48-top5", "budget/final-b48-top5"]
    searches = [s for s in steps if "/search-" in s.name]
    # each search waits for the previous one (they grow the same study), each final for its search
    assert [s.after for s in searches] == [[], [names[0]], [names[2]], [names[4]]]
    assert all(s.after == [names[i - 1]] for i, s in enumerate(steps) if "/final-" in s.name)
    cmd = " ".join(searches[3].cmd)
    assert "search.n_trials=48" in cmd and "search.reevaluate_top_k=5" in cmd
    assert len({" ".join(s.cmd).split("hydra.sweep.dir=")[1].split()[0] for s in searches}) == 1  # one study dir
    assert [s.units for s in searches] == [16, 10, 32, 10]


def test_a_rerun_runs_only_the_missing_baselines(tmp_path):
    b = _script()
    grid = b.Grid(single=1, mixture=0, seeds=1, trials=4, alpha_searched=False)
    for m in ("zeroshot", "lp", "ft"):
        write(tmp_path / "single" / "garden" / m / "seed0", m, 0, 0.8, (0.5, 0.6), None if m == "zeroshot" else (0.7, (0.6, 0.6)))
    step = {s.name: s for s in b.plan(grid, tmp_path, [])}["garden/baselines-s0"]
    assert "method=lpft,l2sp,flyp" in step.cmd and not step.done() and len(step.outputs) == 6


def test_budget_table_and_curve_read_the_chosen_trials_and_their_final_runs(tmp_path):
    b = _script()
    (tmp_path / "budget").mkdir()
    for tag, trial, obj, reev, ood in (("b16-top0", 7, 0.779, None, (0.5, 0.7)), ("b16-top5", 7, 0.779, 0.7766, (0.5, 0.7)),
                                       ("b48-top0", 31, 0.801, None, (0.4, 0.7)), ("b48-top5", 12, 0.788, 0.7801, (0.6, 0.7))):
        extra = "" if reev is None else f"reevaluated_objective: {reev}\n"
        (tmp_path / "budget" / f"{tag}.yaml").write_text(
            f"loss_weights: {{ce: 1.0}}\nlr_scale: 0.1\nweight_decay: 0.1\ntrial_number: {trial}\nobjective: {obj}\n{extra}")
        write(tmp_path / "budget" / tag, "autoft", 0, 0.85, ood, (0.8, (0.6, 0.6)))
    points = b.collect_budget(tmp_path, [16, 48, 128], 5)  # 128 not run yet: left out
    rows = (tmp_path / "budget.md").read_text().splitlines()[4:8]
    assert rows == ["| 16 | none | 7 | 77.9 |  | 85.0 | 60.0 |", "| 16 | top-5 | 7 | 77.9 | 77.7 | 85.0 | 60.0 |",
                    "| 48 | none | 31 | 80.1 |  | 85.0 | 55.0 |", "| 48 | top-5 | 12 | 78.8 | 78.0 | 85.0 | 65.0 |"]
    assert [(p.trials, p.top_k) for p in points] == [(16, 0), (16, 5), (48, 0), (48, 5)]
    assert [p.ood_test for p in points] == pytest.approx([0.6, 0.6, 0.55, 0.65])
    assert (tmp_path / "plots" / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![budget](plots/budget.png)" in (tmp_path / "budget.md").read_text()


def test_quick_grid_runs_zero_shot_ft_and_autoft_only(tmp_path):
    b = _script()
    steps = {s.name: s for s in b.plan(b.QUICK, tmp_path, [])}
    assert sorted(steps) == ["garden/autoft-s0", "garden/baselines-s0", "garden/search-s0",
                             "snow/autoft-s0", "snow/baselines-s0", "snow/search-s0"]
    assert "method=zeroshot,ft" in steps["garden/baselines-s0"].cmd
    # the baselines train in the first split only; the second evaluates their weights, once they exist
    first, second = steps["garden/baselines-s0"], steps["snow/baselines-s0"]
    assert not any(a.startswith("weights_from=") for a in first.cmd) and first.after == []
    assert f"weights_from={tmp_path / 'single' / 'garden'}/${{method.name}}/seed${{seed}}" in second.cmd
    assert second.after == ["garden/baselines-s0"] and second.units < first.units
    assert b.main(["--quick", "--collect", "--out", str(tmp_path), "--baselines", "ft,sgd"]) == 2


# ----------------------------------------------------------------------------------------------
# a domain dataset (dataset=folder): the rotations planned from the composed config, then run
# ----------------------------------------------------------------------------------------------
ROLES = ["dataset.task.id_domain=photo", "dataset.task.ood_val_domain=art_painting",
         "dataset.task.test_domains=[cartoon,sketch]"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    import fabricate

    root = tmp_path_factory.mktemp("tree")
    fabricate.make_domain_tree(root)  # art_painting, cartoon, photo, sketch; 3 classes x 8 images each
    return root


def _folder(b, tree, *options):
    """The grid and domains `benchmark.py --dataset folder <options> data_root=<tree> <roles>` plans."""
    args = b.parser().parse_intermixed_args(["--dataset", "folder", *options, f"data_root={tree}", *ROLES])
    domains = b.domains_of(args.dataset, args.overrides)
    return b.make_grid(args, domains), domains, args.overrides


def test_folder_rotations_every_choice_or_the_users_list(tree, tmp_path):
    """ID stays the config's; by default each of its ood_val + test domains is OOD-val once, the
    others the tests; --rotations picks (and orders) them, `+` makes a mixture."""
    b = _script()
    grid, domains, extra = _folder(b, tree)
    assert (domains.id, domains.others, domains.model) == (("photo",), ("art_painting", "cartoon", "sketch"), "vit_b16")
    assert domains.trials == 100  # the config's search.n_trials (conf/budget/user_data.yaml)
    every = [(sp.family, sp.ood_val, sp.tests) for sp in grid.splits(domains)]
    assert every == [("single", ("art_painting",), ["cartoon", "sketch"]), ("single", ("cartoon",), ["art_painting", "sketch"]),
                     ("single", ("sketch",), ["art_painting", "cartoon"])]
    assert (grid.trials, grid.alpha_searched, grid.baselines) == (100, True, b.BASELINES)
    grid, domains, extra = _folder(b, tree, "--rotations", "sketch, art_painting+cartoon", "--trials", "3")
    splits = grid.splits(domains)
    assert [(sp.id, sp.tests) for sp in splits] == [("sketch", ["art_painting", "cartoon"]),
                                                    ("mix-art_painting-cartoon", ["sketch"])]
    steps = {s.name: s.cmd for s in b.plan(grid, tmp_path, extra, domains)}
    search = steps["mix-art_painting-cartoon/search-s0"]
    assert "dataset=folder" in search and not any(c.startswith("model=") for c in search)  # the config's own model
    # the split's roles come after the user's, so they win
    assert search.index("dataset.task.ood_val_domain=[art_painting,cartoon]") > search.index(ROLES[1])
    assert search[-1] == "dataset.task.test_domains=[sketch]" and "search.n_trials=3" in search
    quick, _, _ = _folder(b, tree, "--quick")
    assert [sp.id for sp in quick.splits(domains)] == ["art_painting", "cartoon"] and quick.baselines == ("ft",)
    # OfficeHome's domain with a space, a name Hydra would read as a number: quoted
    assert b.hydra_list(["Real World", "007", "art_painting"]) == "['Real World','007',art_painting]"


@pytest.mark.parametrize("rotations, says", [
    ("art_painting,watercolour", "unknown domain 'watercolour'"),
    ("photo", "'photo' is the ID domain"),
    ("cartoon+cartoon", "domain 'cartoon' used twice in 'cartoon+cartoon'"),
    ("cartoon+sketch,sketch+cartoon", "'sketch+cartoon' repeats the rotation 'cartoon+sketch'"),
    ("art_painting+cartoon+sketch", "leaves none to test on"),
    ("art_painting,", "an empty domain"),
])
def test_a_bad_rotation_is_refused_with_the_valid_domains(tree, tmp_path, capsys, rotations, says):
    b = _script()
    code = b.main(["--dataset", "folder", "--rotations", rotations, "--out", str(tmp_path), f"data_root={tree}", *ROLES])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
    assert "rotation domains of folder are art_painting, cartoon, sketch" in err and "ID photo stays fixed" in err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_a_dataset_without_domains_or_roles_is_refused(tree, capsys):
    b = _script()
    assert b.main(["--dataset", "iwildcam", "--collect"]) == 2
    assert "no domains to rotate" in capsys.readouterr().err
    assert b.main(["--dataset", "folder", f"data_root={tree}"]) == 2  # no roles given
    assert "dataset.task.id_domain is empty" in capsys.readouterr().err
    assert b.main(["--dataset", "folder", f"data_root={tree}", *ROLES[:2], "dataset.task.test_domains=[cartoon,skech]"]) == 2
    assert "domain 'skech' not found" in capsys.readouterr().err


def test_a_users_config_directory_is_read_or_refused_in_one_line(tree, tmp_path, capsys):
    """--config-dir: its dataset config composes as train.py --config-dir composes it, and is listed
    among the domain datasets; a directory that is not there, or a dataset in neither, is one message."""
    b = _script()
    conf = user_config_dir(tmp_path / "myconf", tree)
    domains = b.domains_of("myshift", ["dataset.task.ood_val_domain=cartoon",
                                       "dataset.task.test_domains=[art_painting,sketch]"], conf)
    assert (domains.name, domains.id, domains.others) == ("myshift", ("photo",), ("cartoon", "art_painting", "sketch"))
    assert domains.select == (f"hydra.searchpath=[file://{conf.resolve()}]", "dataset=myshift")  # on every step
    assert "myshift" in b.domain_datasets(conf) and "pacs" in b.domain_datasets(conf)
    for argv, says in ((["--config-dir", str(tmp_path / "nowhere"), "--dataset", "myshift"], "not a directory"),
                       (["--config-dir", str(conf), "--dataset", "myshfit"], "myshfit")):
        assert b.main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # a misspelt key in the user's file (dataset.task has no schema for Hydra to check): named by the
    # benchmark and by the data check alike, before any work
    (conf / "dataset" / "typo.yaml").write_text((conf / "dataset" / "myshift.yaml").read_text()
                                                .replace("id_domain", "id_domian"))
    assert b.main(["--config-dir", str(conf), "--dataset", "typo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dataset.task: unknown key id_domian for autoft.data.folders.folder_task" in err and "Traceback" not in err
    from conftest import run_script

    check = run_script("prepare_data", ["--config-dir", conf, "--dataset", "typo"], tmp_path)
    assert check.returncode == 2 and "unknown key id_domian" in check.stdout and "Traceback" not in check.stdout
    assert not (tmp_path / "out").exists()


def test_the_ood_val_choice_changes_nothing_training_reads(tree, tmp_path):
    """Why the benchmark trains each baseline in its first split only (weights_from in the others): two
    rotations give the same ID train, ID val and ID test data, classes and templates, on a folder
    tree and on the embedded world; a final run selects its epoch on ID val, so its weights are the same."""
    import torch

    from autoft.data.folders import folder_task
    from autoft.data.shapes import shapes_task

    def id_data(task):
        splits = (task.train, task.id_val, task.tests["id_test"])
        images = [s.dataset.images if hasattr(s.dataset, "images") else s.dataset.example_ids() for s in splits]
        return [s.labels for s in splits], images, task.classnames, task.templates

    sizes = dict(n_train=40, n_val=20, n_test=20, ood_val_size=20, cache_dir=str(tmp_path))
    for a, b in ((folder_task(tree, id_domain="photo", ood_val_domain="art_painting", test_domains=["cartoon", "sketch"]),
                  folder_task(tree, id_domain="photo", ood_val_domain="cartoon", test_domains=["art_painting", "sketch"])),
                 (shapes_task(**sizes, ood_val_domain="garden", test_domains=["snow", "night"]),
                  shapes_task(**sizes, ood_val_domain=["snow", "night"], test_domains=["garden"]))):
        assert a.ood_val.name != b.ood_val.name and set(a.tests) != set(b.tests)
        (la, ia, ca, ta), (lb, ib, cb, tb) = id_data(a), id_data(b)
        assert all((x == y).all() for x, y in zip(la, lb)) and (ca, ta) == (cb, tb) and len(la[0]) > 0
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else (x == y).all() for x, y in zip(ia, ib))


def user_config_dir(where: Path, tree: Path) -> Path:
    """A researcher's config directory outside the repository, holding one file: the shift as a
    dataset config built on conf/dataset/folder.yaml (docs/own_data.md, "One YAML")."""
    (where / "dataset").mkdir(parents=True)
    (where / "dataset" / "myshift.yaml").write_text(
        "defaults: [folder, _self_]\nname: myshift\n"
        f"task: {{root: {tree}, id_domain: photo, ood_val_domain: art_painting, test_domains: [cartoon, sketch]}}\n")
    return where


def test_folder_benchmark_end_to_end(tree, tmp_path):
    """The whole command on a fabricated PACS-like tree described by one YAML in the user's own config
    directory, with the tiny random CLIP: two rotations, one seed, zero-shot / FT / AutoFT (2 trials);
    each cell's tests are the domains it leaves, and the collected tables pair AutoFT with every
    baseline, with intervals over the two cells."""
    from conftest import run_script

    out, conf = tmp_path / "bench", user_config_dir(tmp_path / "myconf", tree)
    budgets = ["model=tiny_vit", "device=cpu", "trainer.num_workers=0", "trainer.eval_batch_size=16",
               "trainer.batch_size=4", "trainer.inner_steps=2", "trainer.epochs=1", f"cache_dir={tmp_path / 'cache'}"]
    done = run_script("benchmark", ["--config-dir", conf, "--dataset", "myshift", "--quick", "--rotations",
                                    "cartoon,art_painting", "--trials", "2", "--out", out, *budgets],
                      tmp_path)  # its runs: processes
    assert done.returncode == 0, done.stdout[-8000:]
    for split, tests in (("cartoon", ["art_painting", "sketch"]), ("art_painting", ["cartoon", "sketch"])):
        cell = out / "single" / split
        assert (cell / "search-s0" / "best_hparams.yaml").is_file()
        for m in ("zeroshot", "ft", "autoft"):
            r = read_result(cell / m / "seed0" / "results.json")
            assert r.ood_splits == tests, (split, m, r.ood_splits)
    # FT trained once, in the first split; the second evaluated those weights on its own domains: the
    # numbers of what both evaluate (ID test, sketch, every WiSE-FT mixture) are the same to the bit
    trained, reused = (read_result(out / "single" / sp / "ft" / "seed0" / "results.json").data
                       for sp in ("cartoon", "art_painting"))
    assert "weights_from" not in trained["hparams"] and not (out / "single" / "art_painting" / "ft" / "seed0" / "model.pt").exists()
    assert reused["hparams"] == {**trained["hparams"], "weights_from": str(out / "single" / "cartoon" / "ft" / "seed0")}
    assert reused["epochs"] == trained["epochs"] and reused["selected_epoch"] == trained["selected_epoch"] == 1
    for split in ("id_val", "id_test", "sketch"):
        assert reused["metrics"][split] == trained["metrics"][split], split
        assert all(reused["wise"][a][split] == trained["wise"][a][split] for a in trained["wise"]), split
    assert "cartoon" in reused["metrics"] and "cartoon" not in trained["metrics"]
    log = (out / "logs" / "art_painting__baselines-s0.log").read_text()
    assert "weights_from=" in log and "may have trained on other ID data" not in log  # only the OOD roles changed
    text = (out / "benchmark.md").read_text()
    assert text.startswith("# Benchmark on myshift") and "Model: tiny_vit. ID: photo" in text
    assert "cartoon -> art_painting, sketch; art_painting -> cartoon, sketch" in text
    for row in ("Zero-shot", "FT", "AutoFT", "WiSE-FT (α=0.5)", "AutoFT + WiSE-FT (α=0.5)"):
        assert text.count(f"\n| {row} | ") == 1, row  # one row per method
    data = json.loads((out / "benchmark.json").read_text())
    assert data["dataset"]["rotation_domains"] == ["art_painting", "cartoon", "sketch"] and not data["missing"]
    assert [c["split"] for c in data["single"]["cells"]] == ["cartoon", "art_painting"]
    diffs = {(d["a"], d["b"]): d for d in data["single"]["paired"]}
    for pair in (("autoft", "ft"), ("autoft", "zeroshot"), ("autoft", "wise-ft"), ("wise-autoft", "wise-ft")):
        d = diffs[pair]
        assert d["n"] == 2 and d["ood"]["low"] <= d["ood"]["mean"] <= d["ood"]["high"], pair  # an interval over 2 cells
    assert "| AutoFT − FT | " in text and (out / "plots" / "single.png").is_file()
    assert "(plots/single_paired.png)" in text and (out / "plots" / "single_paired.png").stat().st_size > 1000
