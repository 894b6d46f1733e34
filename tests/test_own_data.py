"""A researcher's own shift, the whole path from the command line: a DomainBed-style tree (and its CSV
manifest) on disk -> `prepare_data.py --check` -> `train.py -m search=autoft dataset=folder` ->
`final_retrain.py` -> the table, one column per test domain. The tiny random CLIP makes the numbers
meaningless; what is checked is that every stage runs on a user dataset and what the table holds. The
manifest goes through the stages that take it from the command line (the check and the search); the final
runs build the task through the same call (test_data_folders proves both layouts build the same task).
The scripts and the search run in this process with the command's arguments (conftest.run_python), and so
do the refused runs (exit status 2); final_retrain's train.py runs are processes."""
import json
import shutil

import pytest
from omegaconf import OmegaConf

import fabricate
from conftest import run_script, run_train

ROLES = ["dataset.task.id_domain=photo", "dataset.task.ood_val_domain=art_painting",
         "dataset.task.test_domains=[cartoon,sketch]", "dataset.task.templates=photo"]
SMALL = ["model=tiny_vit", "device=cpu", "logger=local", "trainer.num_workers=0", "trainer.eval_batch_size=32",
         "trainer.batch_size=4"]


@pytest.mark.parametrize("layout", ["tree", "manifest"])
def test_own_shift_from_folder_to_table(tmp_path, layout):
    data = tmp_path / "data"
    made = fabricate.make_domain_tree(data)
    where = [f"data_root={data}", "dataset.name=myshift", *ROLES]
    select, check_select = ["dataset=folder"], ["--dataset", "folder"]
    if layout == "manifest":  # the shift as one YAML in the user's own config directory (docs/own_data.md)
        conf = tmp_path / "myconf" / "dataset"
        conf.mkdir(parents=True)
        (conf / "myshift.yaml").write_text(
            f"defaults: [folder, _self_]\nname: myshift\ntask: {{root: {data}, manifest: {made['manifest']}, "
            "id_domain: photo, ood_val_domain: art_painting, test_domains: [cartoon, sketch], templates: photo}\n")
        budget = tmp_path / "myconf" / "budget"  # and the budgets of the pair, the user's own: no warning
        budget.mkdir()
        (budget / "myshift_tiny_vit.yaml").write_text("# @package _global_\nbudget: {name: myshift_tiny_vit, "
                                                      "dataset: myshift, model: tiny_vit}\ntrainer: {epochs: 3}\n")
        where = []
        select, check_select = ["--config-dir", str(conf.parent), "dataset=myshift"], ["--config-dir", str(conf.parent),
                                                                                      "--dataset", "myshift"]
    check = run_script("prepare_data", [*check_select, *where], tmp_path, OMP_NUM_THREADS="1")
    where.append(f"cache_dir={tmp_path / 'cache'}")
    assert check.returncode == 0, check.stdout[-3000:]
    assert "domain 'photo': 24 images in 3 classes (dog 8, elephant 8, guitar 8)" in check.stdout
    assert "task: 3 classes; ID train 15, id_val 3, id_test 6; OOD-val art_painting 24; tests cartoon 24, sketch 24" in check.stdout
    if layout == "tree":
        assert "skipped 6 entries that are not domains, classes or images: .ipynb_checkpoints/" in check.stdout

    search = run_train(["-m", *select, "search=autoft", "search.n_trials=2", "trainer.inner_steps=2",
                        "hydra.sweeper.plots=false", "search.bootstrap=0", *SMALL, *where], tmp_path, OMP_NUM_THREADS="1")
    assert search.returncode == 0, search.stdout[-3000:]
    assert ("are not calibrated for dataset=myshift model=tiny_vit" in search.stdout) == (layout == "tree")
    study = tmp_path / "outputs" / "myshift" / "tiny_vit" / "search-autoft"
    assert (study / "best_hparams.yaml").is_file()
    drawn = json.loads(next(study.glob("*/id_split_myshift.json")).read_text())
    assert drawn["info"]["n"] == {"train": 15, "id_val": 3, "id_test": 6}
    if layout == "manifest":
        searched = OmegaConf.load(next(study.glob("*/multirun.yaml")))
        assert "budgets from" not in search.stdout and (searched.budget.name, searched.trainer.epochs) == ("myshift_tiny_vit", 3)
        return  # the final runs read the task as the search did: the tree's path below covers them

    out = tmp_path / "outputs" / "myshift" / "tiny_vit"
    # no --out: the runs go beside the search, under dataset.name (myshift), not the config's name (folder)
    final = run_script("final_retrain", ["--dataset", "folder", "--model", "tiny_vit", "--methods", "zeroshot,ft,autoft",
                                         "--seeds", "0", "trainer.epochs=1", *SMALL[1:], *where],
                       tmp_path, OMP_NUM_THREADS="1")  # in this process; its train.py runs are processes
    assert final.returncode == 0, final.stdout[-3000:]
    table = json.loads((out / "results_table.json").read_text())
    assert (table["dataset"], table["metric"], table["id_test"]) == ("myshift", "accuracy", "id_test")
    assert table["columns"] == ["id", "cartoon", "sketch", "ood_mean"]  # one column per test domain
    assert [r["label"] for r in table["rows"]] == ["Zero-shot", "FT", "WiSE-FT (α=0.5)", "AutoFT", "AutoFT + WiSE-FT (α=0.5)"]
    results = json.loads((out / "autoft" / "seed0" / "results.json").read_text())
    assert set(results["metrics"]) >= {"id_val", "ood_val", "id_test", "cartoon", "sketch"}

    # the finished FT run evaluated with other roles, without training (docs/own_data.md's command)
    other = ["dataset.task.ood_val_domain=sketch", "dataset.task.test_domains=[cartoon,art_painting]"]
    trained = json.loads((out / "ft" / "seed0" / "results.json").read_text())
    for name, extra in (("again", []), ("other_split", ["dataset.task.split_seed=1"])):
        done = run_train(["method=ft", "dataset=folder", *SMALL, *where, *other, *extra, f"weights_from={out / 'ft' / 'seed0'}",
                          f"hydra.run.dir={tmp_path / name}"], tmp_path, OMP_NUM_THREADS="1")
        assert done.returncode == 0, done.stdout[-3000:]
        again = json.loads((tmp_path / name / "results.json").read_text())
        assert list(again["metrics"]) == ["id_val", "ood_val", "id_test", "cartoon", "art_painting"]
        assert again["epochs"] == trained["epochs"] and again["hparams"]["weights_from"] == str(out / "ft" / "seed0")
        warned = "dataset.task.split_seed 0 there, 1 here. That run may have trained on other ID data" in done.stdout
        if name == "again":  # the same weights on the same ID split and test domain: the same numbers
            assert not warned and again["metrics"]["cartoon"] == trained["metrics"]["cartoon"]
            assert again["metrics"]["id_test"] == trained["metrics"]["id_test"]
        else:  # another ID split: said (the ID roles' keys differ from that run's saved config)
            assert warned
    # a run that evaluated another's weights can be named in turn: the weights come from the first
    done = run_train(["method=ft", "dataset=folder", *SMALL, *where, f"weights_from={tmp_path / 'again'}",
                      f"hydra.run.dir={tmp_path / 'chained'}"], tmp_path, OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stdout[-3000:]
    chained = json.loads((tmp_path / "chained" / "results.json").read_text())
    assert chained["hparams"]["weights_from"] == str(out / "ft" / "seed0")
    assert chained["metrics"]["cartoon"] == trained["metrics"]["cartoon"]
    # a run whose final model is a WiSE-FT mixture (autoft_alpha's) is evaluated at its alpha again
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "autoft" / "seed0", mixed)
    source = json.loads((mixed / "results.json").read_text())
    (mixed / "results.json").write_text(json.dumps({**source, "wise_alpha": 0.5}))
    done = run_train(["method=autoft", "dataset=folder", *SMALL, *where, f"weights_from={mixed}",
                      f"hydra.run.dir={tmp_path / 'mixed_again'}"], tmp_path, OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stdout[-3000:]
    again = json.loads((tmp_path / "mixed_again" / "results.json").read_text())
    assert again["wise_alpha"] == 0.5 and again["metrics"]["cartoon"] == source["wise"]["0.5"]["cartoon"]


def test_bad_roles_stop_train_py_with_one_message(tmp_path):
    data = tmp_path / "data"
    fabricate.make_domain_tree(data, per_class=4, manifest=None)
    done = run_train(["dataset=folder", f"data_root={data}", "dataset.task.id_domain=photo",
                      "dataset.task.ood_val_domain=cartoon", "dataset.task.test_domains=[cartoon,sketch]", *SMALL],
                     tmp_path, OMP_NUM_THREADS="1")
    said = done.stdout  # what train.py logs and prints, stderr included
    assert done.returncode == 2, said[-3000:]
    assert "OOD-val domain 'cartoon' is also a test domain" in said and "Traceback" not in said
    done = run_train(["dataset=folder", f"data_root={data}", "dataset.task.id_domain=photos",
                      "dataset.task.ood_val_domain=cartoon", "dataset.task.test_domains=[sketch]", "method=zeroshot",
                      *SMALL], tmp_path, OMP_NUM_THREADS="1")
    said = done.stdout
    assert done.returncode == 2, said[-3000:]
    assert "domain 'photos' not found" in said and "domains found: art_painting, cartoon, photo, sketch" in said
    assert "Traceback" not in said and not (tmp_path / "outputs" / "folder" / "tiny_vit" / "zeroshot" / "seed0" /
                                                   "results.json").exists()


@pytest.mark.parametrize("script, args", [("bench_search", []), ("bench_loader", ["--dataset", "myshift"]),
                                          ("prepare_data", ["--dataset", "myshift"]), ("benchmark", []),
                                          ("final_retrain", ["--dataset", "myshift"])])
def test_a_config_dir_that_is_not_a_directory_is_one_line(script, args, tmp_path):
    """Every script that takes --config-dir refuses a missing one in the same line, with exit status 2
    and no traceback, before any work (config_checks.check_config_dir)."""
    done = run_script(script, ["--config-dir", str(tmp_path / "nope"), *args], tmp_path)
    assert done.returncode == 2, done.stdout[-2000:]
    assert f"error: --config-dir {tmp_path / 'nope'}: not a directory" in done.stdout and "Traceback" not in done.stdout


def test_bench_search_names_the_missing_foundation_model_and_its_build_command(tmp_path):
    """bench_search validates its config as train.py does: a checkpoint not built yet is one line
    naming the file and the command that builds it, before any model or data is loaded."""
    missing = tmp_path / "cache" / "foundation" / "absent.pt"
    done = run_script("bench_search", [f"model.checkpoint={missing}"], tmp_path)
    assert done.returncode == 2, done.stdout[-2000:]
    assert (f"error: model.checkpoint={missing}: file not found. Build it with: python scripts/build_foundation.py"
            in done.stdout) and "Traceback" not in done.stdout and "bench:" not in done.stdout


@pytest.mark.slow  # about 10 s: bench_search's loops (ours, the compute floor, the reference style, W&B on and off)
def test_bench_search_times_a_trial_of_your_own_yaml(tmp_path):
    """`bench_search.py --config-dir`: the seconds per trial of a search on the shift the user's YAML
    describes (a search's cost is trials x this), on its own images and OOD-val domain."""
    data = tmp_path / "data"
    fabricate.make_domain_tree(data)
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "myshift.yaml").write_text(f"defaults: [folder, _self_]\nname: myshift\ntask: {{root: {data}, "
                                       "id_domain: photo, ood_val_domain: art_painting, test_domains: [cartoon]}\n")
    done = run_script("bench_search", ["--config-dir", str(conf.parent), "--trials", "1", "--json", str(tmp_path / "b.json"),
                                       "dataset=myshift", *SMALL, "trainer.inner_steps=2", f"cache_dir={tmp_path / 'cache'}"],
                      tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    got = json.loads((tmp_path / "b.json").read_text())
    assert (got["dataset"], got["model"], got["inner_steps"], got["batch_size"]) == ("myshift", "tiny_vit", 2, 4)
    assert got["ood_val"] == 24 and got["seconds_per_trial"] > 0  # art_painting: all of its 24 images


def test_a_multirun_over_data_root_reads_each_tree(tmp_path):
    """The workspace a process keeps for its next runs (cli.workspace: model and data built once) is
    reused only when everything it is built from is the same, interpolations resolved: with
    `data_root=/a,/b` the runs on /b read /b (its key once held `${data_root}` as written, so they read
    /a's images)."""
    from autoft import cli
    from conftest import compose_config

    fabricate.make_domain_tree(tmp_path / "a", per_class=8, junk=False, manifest=None)
    fabricate.make_domain_tree(tmp_path / "b", per_class=6, junk=False, manifest=None)

    def built(tree, *more):
        return cli.workspace(compose_config("dataset=folder", f"data_root={tmp_path / tree}", *ROLES, *SMALL,
                                            f"cache_dir={tmp_path / 'cache'}", *more))

    cli._WORKSPACES.clear()
    try:
        a = built("a")
        assert built("a") is a  # the same inputs: built once
        b = built("b")
        assert b is not a and b.task.tests["cartoon"].dataset.root == str(tmp_path / "b")
        assert (len(a.task.tests["cartoon"]), len(b.task.tests["cartoon"])) == (3 * 8, 3 * 6)
        assert built("b", "trainer.eval_batch_size=16") is not b  # a key Workspace.build takes
    finally:
        cli._WORKSPACES.clear()
