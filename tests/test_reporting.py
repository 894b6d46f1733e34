"""Results files -> tables, plots and error reports (fabricated results in the real on-disk layout)."""
import json
import zlib
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import optuna
import pytest

from autoft.errors import UserError
from autoft.reporting.report import make_report
from autoft.reporting.results import ResultsError, load_results
from autoft.search_app import best_hparams_from_study
from autoft.search.study import load_studies, load_studies_under
from autoft.reporting.tables import build_table, latex_escape, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]
OOD = ["snow", "night", "fog"]
ALPHAS = [f"{0.1 * i:.1f}" for i in range(11)]


def split_metrics(rng, base):
    return {"accuracy": float(np.clip(base + rng.normal(0, 0.03), 0, 1)), "macro_f1": float(rng.uniform(0, 1))}


def block(rng, base_id, base_ood):
    out = {"id_val": split_metrics(rng, base_id), "ood_val": split_metrics(rng, base_ood),
           "id_test": split_metrics(rng, base_id)}
    out.update({s: split_metrics(rng, base_ood) for s in OOD})
    return out


def write_run(root, method, seed, trained=True, base_id=0.7, base_ood=0.5, dataset="shapes", model="rn"):
    rng = np.random.default_rng(zlib.crc32(f"{method}:{seed}".encode()))  # stable across processes
    rec = {"dataset": dataset, "model": model, "method": method, "seed": seed, "objective_metric": "accuracy",
           "higher_is_better": True, "hparams": {"lr": 1e-3}, "selected_epoch": 1, "epochs": [],
           "metrics": block(rng, base_id, base_ood), "seconds": 1.0}
    if trained:
        rec["wise"] = {a: block(rng, base_id - 0.1 * (1 - float(a)), base_ood + 0.05) for a in ALPHAS}
    path = Path(root) / dataset / model / method / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return rec


@pytest.fixture
def results(tmp_path):
    recs = {"zeroshot": [write_run(tmp_path, "zeroshot", 0, trained=False, base_id=0.6, base_ood=0.55)]}
    for m, (i, o) in {"ft": (0.9, 0.4), "autoft": (0.85, 0.6), "lp": (0.8, 0.5)}.items():
        recs[m] = [write_run(tmp_path, m, s, base_id=i, base_ood=o) for s in (0, 1, 2)]
    return tmp_path / "shapes" / "rn", recs


def cell_text(values):
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def md_rows(md):
    rows = {}
    for line in md.splitlines()[2:]:
        parts = [p.strip().strip("*") for p in line.strip("|").split("|")]
        rows[parts[0]] = parts[1:]
    return rows


def test_cells_are_mean_and_std_over_seed_files(results):
    root, recs = results
    runs, problems = load_results(root)
    assert problems == [] and len(runs) == 10
    table = build_table(runs, wise_of=["ft"], wise_alpha=0.5)
    assert table.columns == ["id", *OOD, "ood_mean"]
    rows = md_rows(to_markdown(table))
    assert list(rows) == ["Zero-shot", "LP", "FT", "WiSE-FT (α=0.5)", "AutoFT"]
    for label, key in (("FT", "ft"), ("AutoFT", "autoft"), ("LP", "lp"), ("Zero-shot", "zeroshot")):
        ms = [r["metrics"] for r in recs[key]]
        expect = [cell_text([m["id_test"]["accuracy"] for m in ms])]
        expect += [cell_text([m[s]["accuracy"] for m in ms]) for s in OOD]
        expect += [cell_text([np.mean([m[s]["accuracy"] for s in OOD]) for m in ms])]  # per-seed OOD mean
        assert rows[label][:5] == expect, label
        assert rows[label][5] == str(len(ms))
    wise = [r["wise"]["0.5"] for r in recs["ft"]]
    assert rows["WiSE-FT (α=0.5)"][0] == cell_text([w["id_test"]["accuracy"] for w in wise])
    # the machine-readable table holds the exact numbers
    cells = {r["key"]: r["cells"] for r in table.as_dict()["rows"]}
    fog = [r["metrics"]["fog"]["accuracy"] for r in recs["autoft"]]
    assert cells["autoft"]["fog"]["values"] == fog
    assert cells["autoft"]["fog"]["mean"] == pytest.approx(np.mean(fog))
    assert cells["autoft"]["fog"]["std"] == pytest.approx(np.std(fog, ddof=1))
    assert cells["zeroshot"]["id"]["std"] is None  # one seed: no spread is claimed


def test_best_mean_is_bold_and_latex_is_escaped(results):
    root, recs = results
    runs, _ = load_results(root)
    table = build_table(runs, wise_of=["all"])
    md = to_markdown(table)
    best_id = max(r.cells["id"].mean for r in table.rows)
    winner = [r for r in table.rows if r.cells["id"].mean == best_id][0]
    assert f"**{winner.cells['id'].text()}**" in md
    assert {r.key for r in table.rows} >= {"wise-ft", "wise-lp", "wise-autoft"}  # all trained methods
    tex = to_latex(table)
    assert r"\begin{tabular}{lccccc}" in tex and r"\pm" in tex and "±" not in tex
    assert latex_escape("id_test 5% & more") == r"id\_test 5\% \& more"


def test_reference_columns_only_where_given(results, tmp_path):
    root, _ = results
    ref = tmp_path / "ref.yaml"
    ref.write_text("source: a paper\nmetric: accuracy\nmethods:\n  ft: {id: 91.2}\n"
                   "  autoft: {ood_mean: 61.5, fog: 50.0}\n  flyp: {ood_mean: 58.0}\n")
    report = make_report(root, reference=ref, plots=False)
    md = (root / "results_table.md").read_text()
    rows = md_rows(md.split("\n\n", 1)[1])
    header = md.split("\n\n", 1)[1].splitlines()[0]
    assert header.endswith("| ID (ref.) | fog (ref.) | OOD mean (ref.) |")
    assert rows["FT"][-3:] == ["91.2", "", ""]
    assert rows["AutoFT"][-3:] == ["", "50.0", "61.5"]
    assert rows["Zero-shot"][-3:] == ["", "", ""]
    assert rows["FLYP"][:6] == [""] * 6 and rows["FLYP"][-1] == "58.0"  # published, not run here
    assert report.groups[0].table.reference_source == "a paper"
    ref.write_text("metric: macro_f1\nmethods:\n  ft: {id: 1.0}\n")
    with pytest.raises(ResultsError, match="macro_f1"):
        make_report(root, reference=ref, plots=False)
    ref.write_text("methods:\n  ft: {id_test: 1.0}\n")
    with pytest.raises(ResultsError, match="ft.id_test is not a column"):
        make_report(root, reference=ref, plots=False)


def test_missing_or_corrupt_results_are_named(results):
    root, _ = results
    (root / "ft" / "seed1" / "results.json").write_text('{"dataset": "shapes", "metr')  # killed mid-write
    (root / "lp" / "seed2" / "results.json").unlink()
    bad = json.loads((root / "autoft" / "seed0" / "results.json").read_text())
    del bad["metrics"]["fog"]["accuracy"]
    (root / "autoft" / "seed0" / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError) as err:
        load_results(root)
    msg = str(err.value)
    assert str(root / "ft" / "seed1" / "results.json") + ": corrupt JSON" in msg
    assert str(root / "lp" / "seed2" / "results.json") + ": missing" in msg
    assert "autoft/seed0/results.json: metrics['fog'] has no finite 'accuracy'" in msg

    script = [sys.executable, str(ROOT / "scripts" / "make_tables.py"), str(root), "--no-plots"]
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 2
    assert "ft/seed1/results.json: corrupt JSON" in done.stderr and "--skip-bad" in done.stderr
    assert not (root / "results_table.md").exists()

    done = subprocess.run(script + ["--skip-bad"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning: not included:" in done.stderr and "lp/seed2/results.json: missing" in done.stderr
    md = (root / "results_table.md").read_text()
    assert "Not included (unusable results)" in md and "ft/seed1/results.json: corrupt JSON" in md
    assert md_rows(md.split("\n\n")[1])["FT"][5] == "2"  # the table says how many seeds it averaged


def test_runs_that_disagree_are_reported(results):
    root, _ = results
    rec = json.loads((root / "ft" / "seed0" / "results.json").read_text())
    del rec["metrics"]["night"]
    (root / "ft" / "seed0" / "results.json").write_text(json.dumps(rec))
    with pytest.raises(ResultsError, match=r"ft/seed0/results.json: test splits .* differ"):
        load_results(root)
    empty = root.parent.parent / "empty"
    empty.mkdir()
    with pytest.raises(ResultsError, match="no results.json found"):
        load_results(empty)
    with pytest.raises(ResultsError, match="results directory not found"):
        load_results(root / "nowhere")


def test_plots_are_written_and_not_empty(results):
    root, _ = results
    report = make_report(root, wise_of=["ft", "autoft"])
    pngs = {p.name: p for p in report.files if p.suffix == ".png"}
    assert set(pngs) == {"id_vs_ood.png", "wise_curves.png"}
    for p in pngs.values():
        assert p.parent == root / "plots"
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.01  # something is drawn


def test_search_plots_and_best_hparams_from_a_real_study(tmp_path, results):
    root, _ = results
    db = root / "search-autoft" / "optuna.db"
    db.parent.mkdir(parents=True)
    storage = f"sqlite:///{db}"
    study = optuna.create_study(study_name="s1", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        lr = trial.suggest_float("trainer.lr_scale", 1e-2, 1e2, log=True)
        wd = trial.suggest_float("trainer.weight_decay", 0, 1)
        hinge = trial.suggest_float("method.loss_weights.hinge", 1e-4, 10, log=True)
        return -abs(np.log10(lr)) - 0.01 * wd + 0.001 * hinge

    study.optimize(objective, n_trials=12)
    best = best_hparams_from_study(storage)
    assert best.lr_scale == study.best_params["trainer.lr_scale"]
    assert best.loss_weights["hinge"] == study.best_params["method.loss_weights.hinge"]
    assert {k for k, w in best.loss_weights.items() if w} == {"ce", "hinge"}  # unsearched terms: ce 1, others 0
    assert best.weight_decay == study.best_params["trainer.weight_decay"]
    assert best.records["trial_number"] == study.best_trial.number and best.records["study_name"] == "s1"
    assert best.wise_alpha == 1.0

    report = make_report(root, studies=load_studies_under(root))
    names = {p.name for p in report.files}
    assert {"search_history_s1.png", "search_importances_s1.png"} <= names
    for n in ("search_history_s1.png", "search_importances_s1.png"):
        assert (root / "plots" / n).stat().st_size > 5000

    with pytest.raises(UserError, match="holds 2 studies"):
        optuna.create_study(study_name="s2", storage=storage)
        best_hparams_from_study(storage)


def test_parallel_coordinates_place_each_trial_on_log_linear_and_categorical_axes(tmp_path):
    """Three trials enqueued by hand: lr on a log axis (1e-4, 1e-3, 1e-2 sit at 0, 1/2, 1), wd linear
    (0.1, 0.4, 0.2 -> 0, 1, 1/3), a categorical by its index; a failed trial is left out; the best is last."""
    from autoft.reporting.plots import parallel_axes, plot_parallel_coordinates

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for lr, wd, opt in ((1e-4, 0.1, "adam"), (1e-2, 0.4, "sgd"), (1e-3, 0.2, "adam")):
        study.enqueue_trial({"lr": lr, "wd": wd, "opt": opt})

    def objective(trial):
        lr, wd = trial.suggest_float("lr", 1e-5, 1e-1, log=True), trial.suggest_float("wd", 0, 1)
        trial.suggest_categorical("opt", ["adam", "sgd"])
        return -abs(np.log10(lr) + 3) + wd  # 1e-4: -0.9, 1e-2: -0.6, 1e-3: 0.2 (the best)

    study.optimize(objective, n_trials=3)
    study.optimize(lambda t: float("nan"), n_trials=1)  # a failed trial
    labels, done, scaled, ends = parallel_axes(study.trials, maximize=True)
    assert labels == ["objective", "lr", "opt", "wd"]
    assert [t.number for t in done] == [0, 1, 2]  # worst first, the best last
    assert np.allclose(scaled, [[0, 0.3 / 1.1, 1], [0, 1, 0.5], [0, 1, 0], [0, 1, 1 / 3]])
    assert np.allclose(ends, [(-0.9, 0.2), (1e-4, 1e-2), (0, 1), (0.1, 0.4)])  # lr's ends in its own units
    png = plot_parallel_coordinates("s", study.trials, True, tmp_path / "pc.png")
    img = mpimg.imread(png)
    assert img.shape[1] > 500 and img[..., :3].std() > 0.01
    assert plot_parallel_coordinates("s", study.trials[3:], True, tmp_path / "none.png") is None  # nothing complete


def small_study(storage: str, name: str) -> None:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("trainer.weight_decay", 0, 1), n_trials=4)


def test_each_group_plots_the_studies_under_it_and_reporting_opens_no_storage(tmp_path):
    for ds in ("shapes", "iwildcam"):
        write_run(tmp_path / "outputs", "ft", 0, dataset=ds)
    root = tmp_path / "outputs"
    (root / "shapes" / "rn" / "search-autoft").mkdir()
    small_study(f"sqlite:///{root / 'shapes' / 'rn' / 'search-autoft' / 'optuna.db'}", "mine")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    small_study(elsewhere, "shared")
    studies = {**load_studies_under(root), elsewhere: load_studies(elsewhere)}
    assert [p.relative_to(root) for p in studies if isinstance(p, Path)] == [
        Path("shapes/rn/search-autoft/optuna.db")]
    for db in [*root.rglob("optuna.db"), tmp_path / "elsewhere.db"]:
        db.unlink()  # the records are all make_report needs: it must not reopen a storage

    report = make_report(root, studies=studies)
    plotted = {g.dataset: sorted(p.name for p in g.files if p.name.startswith("search_history")) for g in report.groups}
    assert plotted == {"shapes": ["search_history_mine.png", "search_history_shared.png"],
                       "iwildcam": ["search_history_shared.png"]}
    assert not list(root.rglob("optuna.db"))
    loaded = subprocess.run([sys.executable, "-c", "import sys, autoft.reporting.report, autoft.reporting.selection; "
                             "print(sorted(m for m in sys.modules if m.startswith(('autoft.search', 'optuna'))))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_one_table_per_dataset_and_model_next_to_its_results(tmp_path):
    for ds in ("shapes", "iwildcam"):
        for seed in (0, 1):
            write_run(tmp_path, "ft", seed, dataset=ds)
    report = make_report(tmp_path, plots=False)
    assert sorted((g.dataset, g.out_dir) for g in report.groups) == [
        ("iwildcam", tmp_path / "iwildcam" / "rn"), ("shapes", tmp_path / "shapes" / "rn")]
    for g in report.groups:
        assert (g.out_dir / "results_table.md").is_file()
        assert all(r.group == (g.dataset, "rn") for r in g.runs)
