"""The whole path a user takes on each paper benchmark, from a dataset folder in the real on-disk
format to the paper's table: `train.py -m search=autoft` (2 tiny trials), `scripts/final_retrain.py`
(zero-shot, FT, AutoFT, with WiSE-FT), `scripts/make_tables.py` (run by final_retrain). The data
are the fabricated miniatures of tests/fabricate.py and the model the tiny random CLIP, so the
numbers are meaningless; what is checked is that every stage runs and that the table has the
paper's columns, metrics and ID split."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fabricate
from conftest import offline_env, run_train

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["device=cpu", "logger=local", "trainer.num_workers=0", "trainer.eval_batch_size=16", "trainer.batch_size=4"]
# per benchmark: fabricate, extra overrides (the miniatures hold only a few corruptions), the table
BENCHMARKS = {
    "iwildcam": (fabricate.make_iwildcam, [], {
        "metric": "macro_f1", "id_test": "id_test", "id_metrics": ["macro_f1"],
        "columns": ["id", "ood_test", "ood_mean"], "headers": ["ID (macro-F1)", "ood_test (macro-F1)", "OOD mean (macro-F1)"]}),
    "fmow": (fabricate.make_fmow, [], {
        "metric": "worst_group_accuracy", "id_test": "id_test", "id_metrics": ["accuracy", "worst_group_accuracy"],
        "columns": ["id", "id_worst_group_accuracy", "ood_test", "ood_mean"],
        "headers": ["ID accuracy", "ID worst-group accuracy", "ood_test (worst-group accuracy)",
                    "OOD mean (worst-group accuracy)"]}),
    "imagenet": (fabricate.make_imagenet, [f"dataset.task.corruptions=[{','.join(fabricate.C_CORRUPTIONS)}]",
                                           "dataset.task.ood_val_size=8", "dataset.task.id_val_fraction=0.2"], {
        "metric": "accuracy", "id_test": "imagenet", "id_metrics": ["accuracy"],
        "columns": ["id", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet", "ood_mean"],
        "headers": ["ID", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet", "OOD mean"]}),
    "cifar10": (fabricate.make_cifar10, [f"dataset.task.corruptions=[{','.join(fabricate.CIFAR10C)}]",
                                         "dataset.task.ood_val_size=10"], {
        "metric": "accuracy", "id_test": "cifar10", "id_metrics": ["accuracy"],
        "columns": ["id", "cifar10.1", "cifar10.2", "ood_mean"], "headers": ["ID", "cifar10.1", "cifar10.2", "OOD mean"]}),
}
ROWS = ["Zero-shot", "FT", "WiSE-FT (α=0.5)", "AutoFT", "AutoFT + WiSE-FT (α=0.5)"]


def run(cmd, cwd):
    done = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True,
                          env=offline_env(OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


# The default suite runs iWildCam's path through the README's own commands (tests/test_readme.py: the
# same fabricated tree and tiny CLIP, its table checked against BENCHMARKS); FMoW's, ImageNet's and
# CIFAR-10's loaders, metrics and task builds have tests of their own (test_data_wilds.py,
# test_data_imagenet.py, test_data_cifar.py, test_configs.py), so every end-to-end case here is `slow`
# (CI runs them): the default suite stays under 10 minutes on 2 cores.
DEFAULT_SUITE = ()


@pytest.mark.parametrize("dataset", [d if d in DEFAULT_SUITE else pytest.param(d, marks=pytest.mark.slow)
                                     for d in BENCHMARKS])
def test_dataset_folder_to_paper_table(tmp_path, dataset):
    make, extra, want = BENCHMARKS[dataset]
    data = tmp_path / "data"
    manifest = make(data)
    overrides = [f"experiment={dataset}_tiny_vit", f"data_root={data}", f"cache_dir={tmp_path / 'cache'}", *COMMON, *extra]
    run([str(ROOT / "train.py"), "-m", "search=autoft", "search.n_trials=2", "trainer.inner_steps=2",
         "hydra.sweeper.plots=false", "search.bootstrap=0", *overrides], tmp_path)
    out = tmp_path / "outputs" / dataset / "tiny_vit"
    assert (out / "search-autoft" / "best_hparams.yaml").is_file()

    run([str(ROOT / "scripts" / "final_retrain.py"), "--dataset", dataset, "--model", "tiny_vit",
         "--methods", "zeroshot,ft,autoft", "--seeds", "0", "--out", str(out),
         "trainer.epochs=1", *overrides[1:]], tmp_path)
    table = json.loads((out / "results_table.json").read_text())
    assert (table["dataset"], table["model"], table["metric"]) == (dataset, "tiny_vit", want["metric"])
    assert (table["id_test"], table["id_metrics"], table["columns"]) == (want["id_test"], want["id_metrics"], want["columns"])
    assert [table["headers"][c] for c in table["columns"]] == want["headers"]
    assert [r["label"] for r in table["rows"]] == ROWS
    for row in table["rows"]:
        assert set(row["cells"]) == set(want["columns"])
        ood = [row["cells"][c]["mean"] for c in want["columns"] if c != "ood_mean" and not c.startswith("id")]
        assert row["cells"]["ood_mean"]["mean"] == pytest.approx(sum(ood) / len(ood))  # the ID test is not in it
    # each results.json names its ID split and ID metrics, so the table can be rebuilt from it alone
    res = json.loads((out / "autoft" / "seed0" / "results.json").read_text())
    assert (res["id_test_split"], res["id_test_metrics"]) == (want["id_test"], want["id_metrics"])
    # every split read from the image cache (trainer.image_cache=auto), the search's pool and OOD-val too
    assert set(res["image_sources"]) >= {"train", "id_val", "ood_val", want["id_test"]}
    assert set(res["image_sources"].values()) == {"cache"}
    trial = json.loads(next((out / "search-autoft").glob("**/trial.json")).read_text())
    assert set(trial["image_sources"].values()) == {"cache"} and "ood_val" in trial["image_sources"]
    for metric in want["id_metrics"]:
        assert table["rows"][3]["cells"]["id" if metric == want["id_metrics"][0] else f"id_{metric}"]["mean"] == \
            pytest.approx(res["metrics"][want["id_test"]][metric])
    if dataset in ("iwildcam", "fmow"):  # one epoch = as many passes as the reference's caption rows per image
        passes = {"iwildcam": 2, "fmow": 16}[dataset]
        assert res["images_seen"] == manifest["counts"]["train"] // 4 * 4 * passes
    md = (out / "results_table.md").read_text()
    assert all(h in md for h in want["headers"])


def test_search_on_a_missing_dataset_stops_before_any_trial(tmp_path):
    """The search's pre-flight check (hydra.sweeper.preflight: autoft.cli.preflight) builds the
    dataset once before any trial: one message, no trial, no study row, instead of failing trial
    after trial (the builder's UserError, wrapped by Hydra's instantiate, is recognised as such)."""
    done = run_train(["-m", "search=autoft", "experiment=iwildcam_tiny_vit", f"data_root={tmp_path / 'empty'}",
                      *COMMON], tmp_path)  # in this process: the search's refusal is the subject, not the process
    out = done.stdout  # stdout and stderr
    assert done.returncode != 0 and "iwildcam_v2.0" in out and "prepare_data.py" in out, out
    assert "Traceback" not in out and "trial 1" not in out
    assert not list(tmp_path.glob("outputs/**/trial_*"))
    for db in tmp_path.glob("outputs/**/optuna.db"):  # a study may be created, but holds no trial
        import optuna

        url = f"sqlite:///{db}"
        assert all(not optuna.load_study(study_name=n, storage=url).trials for n in optuna.get_all_study_names(url))
