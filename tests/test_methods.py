"""Every method config, end to end through scripts/final_retrain.py -> train.py -> results.json ->
make_tables, on a few dozen images of the embedded shapes world with a tiny random CLIP."""
import json
from pathlib import Path

import pytest
import torch

from autoft import cli
from conftest import compose_config, run_script
from autoft.models.classifier import zeroshot_weights
from autoft.reporting.results import read_result

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = Path(__file__).resolve().parent / "conf"
METHODS = ("zeroshot", "lp", "ft", "lpft", "l2sp", "flyp", "autoft")
OVERRIDES = ["device=cpu", "trainer.num_workers=0", "logger=none"]
HPARAMS = {"loss_weights": {"ce": 1.0, "hinge": 0.01, "entropy": 0.001, "dcm": 0.1, "flyp": 0.5, "l1init": 0.01,
                            "l2init": 0.001, "l1zero": 1e-4, "l2zero": 1e-4}, "lr_scale": 2.0, "weight_decay": 0.3}


def retrain(out, hp_file, *args):
    """scripts/final_retrain.py in this process (its train.py runs are processes of their own)."""
    done = run_script("final_retrain", ["--config-dir", TEST_CONF, "--dataset", "tinyshapes", "--model", "tiny_vit",
                                        "--out", out, "--hparams", hp_file, *args, *OVERRIDES], cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("final")
    hp_file = out / "best_hparams.yaml"
    hp_file.write_text(json.dumps(HPARAMS))  # JSON is YAML
    first = retrain(out, hp_file, "--seeds", "0", "--no-tables")  # the second call tables every run
    second = retrain(out, hp_file, "--methods", "zeroshot,ft", "--seeds", "0,1", "--skip-existing")
    res = {m: read_result(out / m / "seed0" / "results.json").data for m in METHODS}
    return out, res, first, second


@pytest.fixture(scope="module")
def theta0():
    """The zero-shot weights the runs started from, rebuilt through the same code path as train.py."""
    cfg = compose_config("experiment=tinyshapes_tiny_vit", *OVERRIDES)
    cli.seed_everything(0)
    ws = cli.workspace(cfg)
    return ws


def moved(state, ws, prefix):
    return max((state[k].float() - v.float()).abs().max().item()
               for k, v in ws.theta0.items() if k.startswith(prefix) and v.is_floating_point())


def test_every_method_writes_a_complete_result(runs):
    out, res, first, second = runs
    for m in METHODS:
        assert res[m]["method"] == m and res[m]["seed"] == 0
        assert set(res[m]["metrics"]) == {"id_val", "ood_val", "id_test", "snow", "night", "fog", "clutter"}
        assert (out / m / "seed0" / "model.pt").is_file() == (m != "zeroshot")
        assert ("wise" in res[m]) == (m != "zeroshot")
        if m != "zeroshot":
            assert sorted(res[m]["wise"]) == [f"{0.1 * i:.1f}" for i in range(11)]
            assert res[m]["wise"]["1.0"] == res[m]["metrics"]  # a = 1 is the selected fine-tuned model
            best = max(e["id_val"]["accuracy"] for e in res[m]["epochs"])
            assert res[m]["epochs"][res[m]["selected_epoch"] - 1]["id_val"]["accuracy"] == best
    # zero-shot is the a = 0 end of every WiSE-FT curve: the same model through the same evaluation
    for split, values in res["zeroshot"]["metrics"].items():
        for m in ("ft", "flyp", "autoft"):
            assert res[m]["wise"]["0.0"][split] == pytest.approx(values), (m, split)


def test_lp_trains_only_the_head(runs, theta0):
    out, res, *_ = runs
    state = torch.load(out / "lp" / "seed0" / "model.pt", weights_only=True)
    assert moved(state, theta0, "clip.") == 0.0
    assert moved(state, theta0, "head.") > 0
    assert res["lp"]["hparams"]["lr"] == pytest.approx(1e-3 * 1000)  # tinyshapes base_lr x lp's lr_mult


def test_lpft_probes_then_fine_tunes_everything(runs, theta0):
    out, res, *_ = runs
    lpft = res["lpft"]
    assert [e["epoch"] for e in lpft["lp_epochs"]] == [1, 2]
    assert lpft["hparams"]["lp_lr"] == pytest.approx(1e-3 * 1000) and lpft["hparams"]["lr"] == pytest.approx(1e-3)
    state = torch.load(out / "lpft" / "seed0" / "model.pt", weights_only=True)
    assert moved(state, theta0, "clip.visual.") > 0
    # the probe changed the starting point: LP-FT's first epoch differs from plain FT's
    assert lpft["epochs"][0]["loss"] != pytest.approx(res["ft"]["epochs"][0]["loss"])


def test_l2sp_and_autoft_use_their_objectives(runs):
    out, res, *_ = runs
    w = res["l2sp"]["hparams"]["loss_weights"]
    assert w["ce"] == 1.0 and w["l2init"] == 1e6 and sum(w.values()) == 1.0 + 1e6
    a = torch.load(out / "l2sp" / "seed0" / "model.pt", weights_only=True)
    b = torch.load(out / "ft" / "seed0" / "model.pt", weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    hp = res["autoft"]["hparams"]
    assert hp["loss_weights"] == HPARAMS["loss_weights"] and hp["weight_decay"] == 0.3
    assert hp["lr"] == pytest.approx(1e-3 * 2.0) and hp["source"].endswith("best_hparams.yaml")


def test_flyp_is_contrastive_only_with_the_head_of_its_own_text_tower(runs, theta0):
    out, res, *_ = runs
    w = res["flyp"]["hparams"]["loss_weights"]
    assert w["ce"] == 0.0 and w["flyp"] == 1.0 and sum(w.values()) == 1.0
    state = torch.load(out / "flyp" / "seed0" / "model.pt", weights_only=True)
    assert moved(state, theta0, "clip.transformer.") > 0  # the text tower trained
    clf = theta0.classifier
    clf.load_state_dict(state)
    try:
        head = zeroshot_weights(clf.clip, theta0.bundle.tokenizer, [theta0.task.prompts(c) for c in theta0.task.classnames])
        torch.testing.assert_close(state["head.weight"], head * clf.clip.logit_scale.exp(), atol=1e-4, rtol=1e-4)
    finally:
        theta0.reset()


def test_seeds_skip_existing_and_the_table(runs):
    out, res, first, second = runs
    assert "method=zeroshot,lp,ft,lpft,l2sp,flyp seed=0" in first.stdout  # one process for them
    assert "method=ft seed=1 " in second.stdout and "zeroshot: all seeds done, skipped" in second.stdout
    assert "seed=0" not in second.stdout  # complete runs are kept; zero-shot has no seed of its own
    assert read_result(out / "ft" / "seed1" / "results.json").seed == 1
    md = (out / "results_table.md").read_text()
    for label in ("Zero-shot", "LP", "FT", "LP-FT", "L2-SP", "FLYP", "WiSE-FT (α=0.5)", "AutoFT",
                  "AutoFT + WiSE-FT (α=0.5)"):
        assert f"| {label} |" in md
    table = json.loads((out / "results_table.json").read_text())
    ft = next(r for r in table["rows"] if r["key"] == "ft")
    ids = [read_result(out / "ft" / f"seed{s}" / "results.json").data["metrics"]["id_test"]["accuracy"] for s in (0, 1)]
    assert ft["seeds"] == [0, 1] and ft["cells"]["id"]["values"] == ids
    assert (out / "plots" / "id_vs_ood.png").stat().st_size > 0
