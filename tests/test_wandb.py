"""W&B logging, offline only: runs are written by train.py (also under the joblib multi-process
launcher) and by make_tables, then read back from the offline run files. Nothing goes online."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoft.reporting import wandb_logger as W

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = Path(__file__).resolve().parent / "conf"
BASE = ["--config-dir", str(TEST_CONF), "experiment=tinyshapes_tiny_vit", "device=cpu",
        "trainer.num_workers=0"]


def offline_env(tmp_path):
    """No API key anywhere (env or netrc) and no WANDB_MODE: logger.mode=auto must choose offline."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    (tmp_path / "netrc").write_text("")
    e.update(HF_HUB_OFFLINE="1", NETRC=str(tmp_path / "netrc"))
    return e


def train(tmp_path, *args):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=offline_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def the_run(folder):
    runs = W.offline_runs(folder)
    assert len(runs) == 1, runs
    return W.read_offline_run(runs[0])


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """Two final runs in two worker processes (Hydra's joblib launcher), logger=wandb, mode auto."""
    tmp = tmp_path_factory.mktemp("wandb")
    out = tmp / "out"
    train(tmp, "-m", *BASE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=ft", "seed=0,1",
          "logger=wandb", f"hydra.sweep.dir={out}")
    return tmp, out


def test_final_runs_log_config_summary_and_epochs(multirun):
    _, out = multirun
    for seed in (0, 1):
        run_dir = out / "ft" / f"seed{seed}"
        res = json.loads((run_dir / "results.json").read_text())
        logged = the_run(run_dir)  # each worker process wrote its own run, offline
        assert logged["run"]["job_type"] == "final"
        assert logged["run"]["group"] == "tinyshapes/tiny_vit/ft" and logged["run"]["name"] == f"ft-seed{seed}"
        cfg = logged["config"]
        assert cfg["seed"] == seed and cfg["method"] == "ft" and cfg["dataset"] == "tinyshapes"
        for k in ("loss_weights", "lr", "lr_scale", "weight_decay"):
            assert cfg[k] == res["hparams"][k], k
        assert cfg["epochs"] == res["hparams"]["epochs"] and cfg["batch_size"] == res["hparams"]["batch_size"]
        summary = logged["summary"]
        for split, metrics in res["metrics"].items():
            for name, value in metrics.items():
                assert summary[f"{split}/{name}"] == pytest.approx(value), (split, name)
        for a, block in res["wise"].items():
            for split, metrics in block.items():
                assert summary[f"wise/{a}/{split}/accuracy"] == pytest.approx(metrics["accuracy"])
        assert summary["selected_epoch"] == res["selected_epoch"]
        epochs = [h for h in logged["history"] if "epoch" in h]
        assert [h["epoch"] for h in epochs] == [e["epoch"] for e in res["epochs"]]
        assert [h["train/id_val/accuracy"] for h in epochs] == pytest.approx([e["id_val"]["accuracy"] for e in res["epochs"]])
        assert [h["train/loss"] for h in epochs] == pytest.approx([e["loss"] for e in res["epochs"]])


def test_make_tables_logs_tables_and_plots_as_an_artifact(multirun):
    tmp, out = multirun
    before = set(W.offline_runs(out))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tables.py"), str(out), "--wandb"],
                          capture_output=True, text=True, env=offline_env(tmp), timeout=300)
    assert done.returncode == 0, done.stderr
    new = [p for p in W.offline_runs(out) if p not in before]
    assert len(new) == 1
    logged = W.read_offline_run(new[0])
    assert logged["run"]["job_type"] == "report"
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
    train(tmp_path, *BASE, "phase=search", "logger=wandb", "+search.study_name=study-x", "+search.trial_number=3",
          "trainer.lr_scale=0.5", f"hydra.run.dir={out}")
    trial = json.loads((out / "trial.json").read_text())
    logged = the_run(out)
    assert logged["run"]["job_type"] == "trial" and logged["run"]["group"] == "study-x"
    assert logged["run"]["name"] == "trial-3"
    assert logged["config"]["lr_scale"] == 0.5 and logged["config"]["lr"] == pytest.approx(0.5e-3)
    assert logged["config"]["inner_steps"] == 4 and logged["config"]["phase"] == "search"
    assert logged["summary"]["objective"] == pytest.approx(trial["objective"])
    assert "ood_val/accuracy" in logged["summary"]


def test_logger_none_writes_nothing(tmp_path):
    out = tmp_path / "run"
    train(tmp_path, *BASE, "method=zeroshot", "logger=none", f"hydra.run.dir={out}")
    assert (out / "results.json").is_file() and not (out / "wandb").exists()


def test_a_wandb_failure_never_stops_training(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # W&B cannot create its folder here
    out = tmp_path / "run"
    done = train(tmp_path, *BASE, "method=zeroshot", "logger=wandb", f"logger.dir={blocker}/sub",
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
    assert W.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1]}) == {"a/b": 1, "a/c/d": 2, "e": [1]}
