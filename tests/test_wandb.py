"""W&B logging, offline only: runs are written by train.py (also under the joblib multi-process
launcher), the sweeper and make_tables, then read back from the offline run files with
wandb_offline.read_offline_run / read_run (W&B's own record format). Nothing goes online."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoft.reporting import wandb_logger as W
from autoft.reporting import wandb_offline as O
from autoft.reporting.wandb_summary import flatten, run_config

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = Path(__file__).resolve().parent / "conf"
BASE = ["--config-dir", str(TEST_CONF), "experiment=tinyshapes_tiny_vit", "device=cpu",
        "trainer.num_workers=0"]


# tinyshapes' roles, written out (the builder's defaults): the run's W&B config then holds them
ROLES = ["++dataset.task.id_domain=studio", "++dataset.task.ood_val_domain=garden",
         "++dataset.task.test_domains=[snow,night,fog,clutter]"]


def offline_env(tmp_path):
    """No API key anywhere (env or netrc) and no WANDB_MODE: logger.mode=auto must choose offline."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    (tmp_path / "netrc").write_text("")
    e.update(HF_HUB_OFFLINE="1", NETRC=str(tmp_path / "netrc"))
    return e


def train(tmp_path, *args):
    """train.py as a process: for the joblib workers and the kill."""
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=offline_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def in_process(tmp_path, path, *args):
    """`python <path> <args>` in this process (conftest.run_python) under offline_env(tmp_path)."""
    from conftest import run_python

    env = offline_env(tmp_path)
    unset = {k: None for k in os.environ if k not in env}  # the WANDB_* variables offline_env drops
    done = run_python(path, list(args), ROOT, **unset, NETRC=env["NETRC"])
    assert done.returncode == 0, done.stdout[-6000:]
    return done


def train_here(tmp_path, *args):
    """train.py in this process: for what a run writes to W&B."""
    return in_process(tmp_path, ROOT / "train.py", *args)


def the_run(folder):
    runs = O.offline_runs(folder)
    assert len(runs) == 1, runs
    return O.read_offline_run(runs[0])


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """Two final runs in two worker processes (Hydra's joblib launcher), logger=wandb, mode auto."""
    tmp = tmp_path_factory.mktemp("wandb")
    out = tmp / "out"
    train(tmp, "-m", *BASE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=ft", "seed=0,1",
          "logger=wandb", "logger.log_every_n_steps=1", f"hydra.sweep.dir={out}", *ROLES)
    return tmp, out


def test_final_runs_log_config_summary_and_epochs(multirun):
    _, out = multirun
    for seed in (0, 1):
        run_dir = out / "ft" / f"seed{seed}"
        res = json.loads((run_dir / "results.json").read_text())
        logged = the_run(run_dir)  # each worker process wrote its own run, offline
        assert logged["run"]["id"] == W.run_id("final", run_dir.resolve())  # a rerun resumes this run
        assert logged["run"]["job_type"] == "final" and logged["run"]["exit_code"] == 0
        assert logged["run"]["group"] == "tinyshapes/tiny_vit/ft" and logged["run"]["name"] == f"ft-seed{seed}"
        cfg = logged["config"]
        assert cfg["seed"] == seed and cfg["method"] == "ft" and cfg["dataset"] == "tinyshapes"
        assert (cfg["id_domain"], cfg["ood_val_domain"], cfg["test_domains"]) == (
            "studio", "garden", ["snow", "night", "fog", "clutter"])  # the split, as the benchmark's runs need
        for term, w in res["hparams"]["loss_weights"].items():  # flat keys: W&B's parameter panels use them
            assert cfg[f"loss_weights/{term}"] == w
        assert cfg["lr_scale"] == res["hparams"]["lr_scale"] and cfg["weight_decay"] == res["hparams"]["weight_decay"]
        assert "lr" not in cfg and "loss_weights" not in cfg  # one lr key: the sampled lr_scale
        assert cfg["epochs"] == res["hparams"]["epochs"] and cfg["batch_size"] == res["hparams"]["batch_size"]
        summary = logged["summary"]
        for split, metrics in res["metrics"].items():
            for name, value in metrics.items():
                assert summary[f"{split}/{name}"] == pytest.approx(value), (split, name)
        ood = ["snow", "night", "fog", "clutter"]
        assert summary["ood_mean/accuracy"] == pytest.approx(sum(res["metrics"][s]["accuracy"] for s in ood) / 4)
        assert summary["objective"] == pytest.approx(res["metrics"]["id_val"]["accuracy"])
        assert summary["lr"] == pytest.approx(res["hparams"]["lr"]) and summary["selected_epoch"] == res["selected_epoch"]
        assert not [k for k in summary if k.startswith("wise/0")]  # the curve is a table, not 220 scalars
        # history: loss and lr every step against global_step, ID-val and the objective against epoch
        assert logged["metrics"] == {"train/*": "global_step", "val/*": "epoch"}
        steps = [h for h in logged["history"] if "train/loss" in h]
        n = len(steps)
        assert n == 8 and [h["global_step"] for h in steps] == list(range(1, n + 1))
        assert steps[0]["train/lr"] > steps[-1]["train/lr"] > 0  # the cosine decay
        assert steps[-1]["train/loss"] == pytest.approx(res["epochs"][-1]["loss"], abs=1.0)
        epochs = [h for h in logged["history"] if "epoch" in h]
        assert [h["epoch"] for h in epochs] == [e["epoch"] for e in res["epochs"]]
        assert [h["val/id_val/accuracy"] for h in epochs] == pytest.approx([e["id_val"]["accuracy"] for e in res["epochs"]])
        assert [h["val/objective"] for h in epochs] == pytest.approx([e["id_val"]["accuracy"] for e in res["epochs"]])
        assert [h["train/epoch_loss"] for h in epochs] == pytest.approx([e["loss"] for e in res["epochs"]])
        # the WiSE-FT curve: one table, two line plots
        (table_file,) = (O.offline_runs(run_dir)[0] / "files" / "media" / "table" / "wise").glob("curve_*.table.json")
        table = json.loads(table_file.read_text())
        rows = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert [r["alpha"] for r in rows] == pytest.approx([a / 10 for a in range(11)])
        for r in rows:
            block = res["wise"][f"{r['alpha']:.1f}"]
            assert r["id_test"] == pytest.approx(block["id_test"]["accuracy"])
            assert r["ood_mean"] == pytest.approx(sum(block[s]["accuracy"] for s in ood) / 4)
        for plot in ("id_test", "ood_mean"):
            assert cfg[f"_wandb/visualize/wise/{plot}_vs_alpha"]["panel_config"]["fieldSettings"] == {"x": "alpha", "y": plot, "stroke": None}
        # results.json uploaded; the checkpoint a reference to the local file
        arts = {a["type"]: a for a in logged["artifacts"]}
        assert arts["results"]["files"] == ["results.json"]
        assert arts["model"]["refs"] == [(run_dir / "model.pt").resolve().as_uri()]
        assert "epoch 2/2" in logged["output"]  # the console log (W&B's Logs tab)


def test_a_runs_config_names_its_domain_roles_and_the_weights_it_read(tmp_path):
    """The benchmark's splits share W&B groups (dataset/model/method): each run's config says which
    domains it trained, chose and tested on, and whose weights it evaluated (weights_from)."""
    from autoft import cli
    from conftest import compose_config

    roles = ["dataset.task.id_domain=photo", "dataset.task.ood_val_domain=[art_painting,cartoon]",
             "dataset.task.test_domains=[sketch]"]

    def config_of(*overrides):
        cfg = compose_config(*overrides)
        hp = cli.hyperparameters(cfg)
        return run_config(cfg, cli.hparams_record(cfg, hp, cli.run_spec(cfg, hp)))

    config = config_of("dataset=folder", "model=tiny_vit", *roles, f"weights_from={tmp_path}")
    assert (config["id_domain"], config["ood_val_domain"], config["test_domains"]) == (
        "photo", ["art_painting", "cartoon"], ["sketch"])
    assert config["weights_from"] == str(tmp_path) and config["dataset"] == "folder"
    plain = config_of("model=tiny_vit", "dataset=tinyshapes")  # its roles are left to the builder's defaults
    assert not {"id_domain", "ood_val_domain", "test_domains", "weights_from"} & set(plain)


def test_a_transaction_log_cut_short_reads_as_far_as_it_goes(multirun, tmp_path):
    """What WandbRun.finish waits for: a finished run's .wandb file ends with its exit record; a file
    the service is still writing (or a kill cut) has none, and reads back without its torn tail."""
    _, out = multirun
    whole = next((out / "ft" / "seed0").rglob("run-*.wandb"))
    assert O.has_exit_record(whole)
    cut = tmp_path / "offline-run-cut" / whole.name
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[:-5])
    assert not O.has_exit_record(cut)
    logged = O.read_offline_run(cut.parent)
    assert "exit_code" not in logged["run"] and logged["run"]["job_type"] == "final"
    cut.write_bytes(b"")  # created, not yet written
    assert not O.has_exit_record(cut)


def test_a_part_started_in_the_same_second_is_one_of_the_runs_parts(tmp_path):
    """W&B names a run's directory offline-run-<time>-<id> and adds -1 when a resumed part starts in
    the same second as the last (seen from an in-process search followed by log_study): that part is
    still the run's, found by its log run-<id>.wandb, for read_run and for a resume's held_step."""
    import shutil

    rid = W.run_id("final", "same-second")
    run = W.start_run(enabled=True, project="autoft", job_type="final", name="x", config={}, out_dir=tmp_path,
                      mode="offline", run_id=rid)
    with run.closing():
        for step in (1, 2, 3):
            run.record_step(step, {"loss": 1.0 / step, "lr": 0.1})
    (first,) = O.offline_runs(tmp_path)
    shutil.copytree(first, first.with_name(first.name + "-1"))  # the directory a same-second restart gets
    logged = O.read_run(tmp_path, rid)
    assert logged["parts"] == 2 and [h["global_step"] for h in logged["history"]] == [1, 2, 3] * 2
    assert O.held_step(tmp_path, rid, but=first) == O.held_step(tmp_path, rid) == 3


def test_make_tables_logs_tables_and_plots_as_an_artifact(multirun):
    tmp, out = multirun
    before = set(O.offline_runs(out))
    in_process(tmp, ROOT / "scripts" / "make_tables.py", out, "--wandb")
    new = [p for p in O.offline_runs(out) if p not in before]
    assert len(new) == 1
    logged = O.read_offline_run(new[0])
    assert logged["run"]["job_type"] == "report"
    assert logged["run"]["id"] == W.run_id("report", out.resolve())  # rerunning updates this run
    arts = {a["name"]: a for a in logged["artifacts"]}
    files = set(arts["results-tinyshapes-tiny_vit"]["files"])
    assert {"results_table.md", "results_table.tex", "results_table.csv", "results_table.json",
            "id_vs_ood.png", "wise_curves.png"} <= files
    table = json.loads((out / "results_table.json").read_text())
    ft = next(r for r in table["rows"] if r["key"] == "ft")
    assert logged["summary"]["ft/id"] == pytest.approx(ft["cells"]["id"]["mean"])
    assert logged["summary"]["results_table/_type"] == "table-file"
    assert logged["summary"]["plots/id_vs_ood/_type"] == "image-file"


def test_search_trial_is_one_run_in_the_study_group(tmp_path):
    out = tmp_path / "trial_3"
    train_here(tmp_path, *BASE, "phase=search", "logger=wandb", "logger.log_every_n_steps=1", "hydra/sweeper=autoft_optuna",
          "++hydra.sweeper.trial={number:3,study_name:study-x}", "+search.eval_every=2", "+search.wise_alphas=[0.5,1.0]", "trainer.lr_scale=0.5",
          f"hydra.run.dir={out}")
    trial = json.loads((out / "trial.json").read_text())
    logged = the_run(out)
    assert logged["run"]["job_type"] == "trial" and logged["run"]["group"] == "study-x"
    assert logged["run"]["name"] == "trial-3" and logged["run"]["id"] == W.run_id("trial", "study-x", 3)
    cfg = logged["config"]
    assert cfg["lr_scale"] == 0.5 and "lr" not in cfg and cfg["loss_weights/ce"] == 1.0
    assert cfg["inner_steps"] == 4 and cfg["phase"] == "search" and "wise_alpha" not in cfg
    summary = logged["summary"]
    assert summary["objective"] == pytest.approx(trial["objective"]) and summary["lr"] == pytest.approx(0.5e-3)
    assert summary["wise_alpha"] == trial["wise_alpha"] and "ood_val/accuracy" in summary
    assert logged["metrics"] == {"train/*": "global_step", "val/*": "global_step"}
    hist = {h["global_step"]: h for h in logged["history"]}
    assert sorted(hist) == [1, 2, 3, 4] and all("train/loss" in h and "train/lr" in h for h in hist.values())
    assert hist[4]["train/loss"] == pytest.approx(trial["runs"][0]["final_loss"])
    assert [s for s, h in hist.items() if "val/ood_val" in h] == [2]  # every eval_every steps, before the last


def test_a_pruned_trial_finishes_as_pruned_not_failed(tmp_path):
    import optuna

    run = W.start_run(enabled=True, project="autoft", job_type="trial", name="trial-0", config={}, out_dir=tmp_path,
                      mode="offline", run_id=W.run_id("trial", "s", 0))
    with pytest.raises(optuna.TrialPruned), run.closing():
        for step in (1, 2):
            run.record_step(step, {"loss": 1.0 / step, "lr": 0.1})
        run.record_ood_val(2, 0.25)
        raise optuna.TrialPruned("pruned at step 2")
    logged = the_run(tmp_path)
    assert logged["run"]["exit_code"] == 0 and logged["run"]["tags"] == ["pruned"]
    assert logged["summary"]["pruned"] is True and logged["summary"]["pruned_at_step"] == 2
    assert [h.get("val/ood_val") for h in logged["history"]] == [None, 0.25]  # the score that pruned it


# slow: that a rerun keeps its run's id stays in the default suite (the final-run test above); CI runs the kill
@pytest.mark.slow
def test_a_killed_final_run_resumes_its_wandb_run_with_one_history(tmp_path):
    """A real kill after the first epoch's checkpoint; the rerun resumes the run (same id) and its
    history continues: every step once, in order, across both parts, then the sync command lists it."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *BASE, "method=ft", "trainer.epochs=3", "logger=wandb",
           "logger.log_every_n_steps=1", f"hydra.run.dir={out}"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=offline_env(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL and (out / "last.pt").exists()
    train(tmp_path, *BASE, "method=ft", "trainer.epochs=3", "logger=wandb", "logger.log_every_n_steps=1",
          f"hydra.run.dir={out}")
    res = json.loads((out / "results.json").read_text())
    rid = W.run_id("final", out.resolve())
    assert {p.name.rsplit("-", 1)[-1] for p in O.offline_runs(out)} == {rid}  # one run, two starts
    logged = O.read_run(out, rid)
    assert logged["parts"] == 2
    steps = [h["global_step"] for h in logged["history"] if "train/loss" in h]
    assert steps == list(range(1, 13))  # 3 epochs x 4 steps: no gap, no duplicate
    epochs = [h for h in logged["history"] if "epoch" in h]
    assert [h["epoch"] for h in epochs] == [1, 2, 3]
    assert [h["train/epoch_loss"] for h in epochs] == pytest.approx([e["loss"] for e in res["epochs"]])
    assert logged["summary"]["id_test/accuracy"] == pytest.approx(res["metrics"]["id_test"]["accuracy"])
    # the sync command, in a plain shell (no globstar): every part with data, as one run
    done = subprocess.run(f"{sys.executable} -m autoft.reporting.wandb_sync {tmp_path} --dry-run", shell=True,
                          executable="/bin/sh", capture_output=True, text=True, env=offline_env(tmp_path), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    listed = [line for line in (done.stdout + done.stderr).splitlines() if line.strip().endswith(".wandb")]
    assert listed and all(rid in line for line in listed) and "Would sync" in done.stdout + done.stderr


def test_an_unreachable_server_falls_back_to_offline_once(tmp_path, monkeypatch, caplog):
    for k in ("WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(W, "_OFFLINE_FALLBACK", False)
    t0 = time.time()
    with caplog.at_level(logging.WARNING):
        runs = [W.start_run(enabled=True, project="autoft", job_type="trial", name=f"t{i}", config={"i": i},
                            out_dir=tmp_path / f"t{i}", mode="auto", init_timeout=3, run_id=W.run_id("t", i))
                for i in range(2)]
        for r in runs:
            r.finish()
    assert time.time() - t0 < 30  # bounded: the second run does not wait for the server again
    assert [r.__class__ for r in runs] and all(len(O.offline_runs(tmp_path / f"t{i}")) == 1 for i in range(2))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "writing offline runs instead" in warnings[0].getMessage()


def test_final_retrain_and_the_demo_send_tables_to_wandb_by_default():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("config").logger
        local = compose("config", overrides=["logger=local"]).logger
    assert default.wandb and W.make_tables_args(default)[:1] == ["--wandb"]
    assert W.make_tables_args(local) == []


def test_logger_none_writes_nothing(tmp_path):
    from conftest import run_train  # in this process: W&B is never started, so no W&B state is left behind

    out = tmp_path / "run"
    done = run_train([*BASE, "method=zeroshot", "logger=none", f"hydra.run.dir={out}"], ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (out / "results.json").is_file() and not (out / "wandb").exists()


def test_a_wandb_failure_never_stops_training(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # W&B cannot create its folder here
    out = tmp_path / "run"
    done = train_here(tmp_path, *BASE, "method=zeroshot", "logger=wandb", f"logger.dir={blocker}/sub",
                 f"hydra.run.dir={out}")
    assert (out / "results.json").is_file()
    assert "W&B could not start" in done.stdout + done.stderr


def test_errors_inside_a_live_run_switch_it_off(tmp_path, caplog):
    run = W.start_run(enabled=True, project="autoft", job_type="final", name="x", config={"a": 1},
                      out_dir=tmp_path, mode="offline")
    assert run.active
    run.run.finish()  # W&B now rejects every call on this run
    with caplog.at_level(logging.WARNING):
        run.log({"x": 1})
        run.summary({"y": 2})
        run.finish()
    assert not run.active
    assert "W&B log failed" in caplog.text and "logging is off" in caplog.text


def test_mode_and_rank_rules(tmp_path, monkeypatch):
    for k in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert W.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert W.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert W.resolve_mode("auto") == "disabled" and W.resolve_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_MODE")
    assert W.resolve_mode("auto") == "online"  # `wandb login` counts as a configured key
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks do not log
    run = W.start_run(enabled=True, project="p", job_type="final", name="n", config={}, out_dir=tmp_path,
                      mode="offline")
    assert not run.active and not (tmp_path / "wandb").exists()
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1]}) == {"a/b": 1, "a/c/d": 2, "e": [1]}


def test_a_study_has_one_run_updated_not_duplicated(tmp_path):
    import optuna

    sweep = tmp_path / "sweep"
    train_here(tmp_path, "-m", *BASE, "search=autoft", "search.n_trials=2", "search.bootstrap=0", "logger=wandb",
          "hydra.sweeper.plots=true", f"hydra.sweep.dir={sweep}")
    url = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    best = optuna.load_study(study_name=name, storage=url).best_trial
    study_dir = sweep / name.replace("/", "_")
    rid = W.run_id("study", name)
    W.log_study({"wandb": True, "mode": "offline"}, study_dir, name)  # a later update (a re-evaluation's end)
    logged = O.read_run(study_dir / "wandb", rid)
    assert logged["parts"] == 2 and logged["run"]["job_type"] == "study" and logged["run"]["group"] == name
    trial_runs = {O.read_offline_run(p)["run"]["group"] for p in O.offline_runs(study_dir) if rid not in p.name}
    assert trial_runs == {name}  # the trials share the study's group
    s = logged["summary"]
    assert s["best/trial_number"] == best.number and s["best/objective"] == pytest.approx(best.value)
    assert s["best/lr_scale"] == pytest.approx(best.params["trainer.lr_scale"]) and s["trials/complete"] == 2
    assert s["trials/_type"] == "table-file" and s["trials/nrows"] == 2
    assert any(k.startswith("plots/") and k.endswith("/_type") for k in s)  # the study's plots, as images
    files = {f for a in logged["artifacts"] if a["type"] == "study" for f in a["files"]}
    assert {"best_hparams.yaml", "optimization_results.yaml", "trials.csv"} <= files
    # a final run from the study's best_hparams.yaml records the study and trial it came from
    from hydra import compose, initialize_config_dir

    from autoft import cli

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["method=autoft", f"hparams={sweep / 'best_hparams.yaml'}"])
    hp = cli.hyperparameters(cfg)
    config = run_config(cfg, cli.hparams_record(cfg, hp, cli.run_spec(cfg, hp)), hp.records)
    assert config["hparams_study"] == name and config["hparams_trial"] == best.number
