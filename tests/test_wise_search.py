"""search.wise_alphas: each trial also scores the WiSE-FT mixtures of its inner run on OOD-val and
keeps the best; wise_alpha then travels through best_hparams.yaml to the final run, which reports
that mixture (method autoft_alpha, "AutoFT, α searched"). Real runs on a few dozen shapes images
with the tiny random CLIP."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from autoft import cli
from autoft.data.base import project_logits
from autoft.hparams import Hyperparameters
from autoft.pipeline import RunSpec, Workspace, at_mixtures, evaluate_all, run_final
from autoft.records import write_best_hparams
from autoft.reporting.results import read_result
from autoft.reporting.tables import build_table
from autoft.search.space import parse_space
from autoft.search.study import fingerprint
from autoft.wise import interpolate
from conftest import compose_config, offline_env, run_train

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = ROOT / "tests" / "conf"
ALPHAS = [0.25, 0.5, 0.75, 1.0]
BASE = ["experiment=tinyshapes_tiny_vit", "device=cpu", "trainer.num_workers=0", "logger=none"]
# a large lr, so that the inner run moves far from theta0 and the mixtures differ (here a = 0.25 scores best)
TRIAL = [*BASE, "search=autoft", "search.bootstrap=200", "trainer.lr_scale=30", "trainer.inner_steps=6"]


@pytest.fixture(autouse=True)
def fresh_workspace():
    """Each test builds its own workspace (seeded, as train.py does) and leaves none cached behind."""
    cli._WORKSPACES.clear()
    yield
    cli._WORKSPACES.clear()


def trial(tmp_path, name, *overrides):
    cfg = compose_config(*TRIAL, *overrides)
    cli.seed_everything(int(cfg.seed))  # the tiny CLIP's random weights, as cli.run seeds them
    ws = cli.workspace(cfg)
    out = tmp_path / name
    objective = cli.run_search(cfg, ws, cli.hyperparameters(cfg), out)["objective"]
    return objective, json.loads((out / "trial.json").read_text()), ws


def ood_val_accuracy(ws: Workspace) -> float:
    """Accuracy of the working model on OOD-val, computed here from its logits."""
    split = ws.task.ood_val
    pred = project_logits(ws.logits(split), split.class_map).argmax(dim=1)
    return (pred == torch.as_tensor(split.labels)).float().mean().item()


def test_a_trial_keeps_the_best_mixture_on_ood_val(tmp_path):
    plain, plain_rec, _ = trial(tmp_path, "plain")
    best, rec, ws = trial(tmp_path, "wise", f"search.wise_alphas=[{','.join(map(str, ALPHAS))}]")
    scores = {float(a): s for a, s in rec["wise"].items()}
    assert sorted(scores) == ALPHAS
    assert scores[1.0] == plain  # a = 1 is the plain trial's fine-tuned model (same seed, same run)
    assert best == max(scores.values()) >= plain
    assert rec["wise_alpha"] == max(ALPHAS, key=lambda a: scores[a])  # a tie goes to the first listed
    assert rec["objective"] == best and rec["per_seed"] == [best]
    assert rec["ci"][0] <= best <= rec["ci"][1]
    assert "wise_alpha" not in plain_rec
    assert len(set(scores.values())) > 1, scores  # the mixtures really differ here

    # recomputed independently: the working model holds the trial's fine-tuned weights afterwards
    finetuned = {k: v.clone() for k, v in ws.classifier.state_dict().items()}
    assert any(not torch.equal(finetuned[k], ws.theta0[k]) for k in finetuned)
    try:
        for a in ALPHAS:
            ws.classifier.load_state_dict(interpolate(ws.theta0, finetuned, a))
            assert ood_val_accuracy(ws) == scores[a], a
    finally:
        ws.classifier.load_state_dict(finetuned)


@pytest.mark.parametrize("bad", ["[1.5]", "[]", "[0.5,0.5]", "0.5"])
def test_bad_alphas_are_refused_before_any_work(bad, tmp_path):
    from autoft.config_checks import validate
    from autoft.errors import UserError

    cfg = compose_config(*TRIAL, f"search.wise_alphas={bad}")
    with pytest.raises(UserError, match="search.wise_alphas"):
        validate(cfg)


def test_the_study_fingerprint_follows_the_alphas():
    """A different objective is a different study: search.wise_alphas is part of the fingerprint
    (the sweeper excludes only the app's fingerprint_exclude keys), re-evaluation is not."""
    from autoft.search_app import FINGERPRINT_EXCLUDE, NEUTRAL_DEFAULTS

    exclude = FINGERPRINT_EXCLUDE
    assert not any(k == "search.wise_alphas" or "search.wise_alphas".startswith(k + ".") for k in exclude)
    params = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/search/autoft.yaml").hydra.sweeper.params)

    def fp(*overrides):
        cfg = compose_config(*TRIAL, *overrides)
        space, _ = parse_space(params, [], config=cfg)
        return fingerprint(cfg, space=space, direction="maximize", sampler={}, pruner=None, exclude=exclude,
                           neutral=NEUTRAL_DEFAULTS)

    off = fp()
    assert fp("search.wise_alphas=[0.5,1.0]") != off
    assert fp("search.wise_alphas=[0.5,1.0]") != fp("search.wise_alphas=[0.25,1.0]")
    assert fp("search.wise_alphas=[0.5,1.0]") == fp("search.wise_alphas=[0.5,1.0]")
    assert fp("search.reevaluate_top_k=3") == off  # an excluded key keeps the study


def test_a_final_run_applies_its_alpha(tiny_bundle, tiny_task, tmp_path):
    ws = Workspace.build(tiny_task, tiny_bundle, torch.device("cpu"))
    common = dict(weights={"ce": 1.0}, lr=3e-2, weight_decay=0.1, epochs=2, batch_size=8, curve_alphas=(0.0, 0.5, 1.0))
    zero_shot = run_final(ws, RunSpec(**common, train=False), tmp_path / "zs", progress=False)
    at_zero = run_final(ws, RunSpec(**common, wise_alpha=0.0), tmp_path / "a0", progress=False)
    at_half = run_final(ws, RunSpec(**common, wise_alpha=0.5), tmp_path / "a5", progress=False)
    evaluated = []  # every split evaluation of the runs below: 2 epochs' ID val, then every split per model
    evaluate = ws.evaluate
    ws.evaluate = lambda split, *a, **k: evaluated.append(split.name) or evaluate(split, *a, **k)
    plain = run_final(ws, RunSpec(**common), tmp_path / "a1", progress=False)
    splits = 2 + len(tiny_task.tests)  # id_val, ood_val and the tests
    # the final model (alpha 1) is the curve's last point, evaluated once; alpha 0 is the zero-shot
    # model, evaluated once per Workspace (by the zero-shot run above)
    assert len(evaluated) == 2 + 2 * splits
    evaluated.clear()
    odd = run_final(ws, RunSpec(**common, wise_alpha=0.25), tmp_path / "a25", progress=False)
    del ws.evaluate
    assert len(evaluated) == 2 + 3 * splits and odd["wise"] == plain["wise"]  # off the curve: evaluated on its own
    assert at_zero["metrics"] == zero_shot["metrics"]  # theta(0) is the zero-shot model, exactly: ...
    assert at_mixtures(ws, [0.0], lambda: evaluate_all(ws)) == [zero_shot["metrics"]]  # ... evaluated afresh too
    assert at_half["metrics"] == at_half["wise"]["0.5"] and plain["metrics"] == plain["wise"]["1.0"]
    assert at_half["wise"] == plain["wise"]  # the curve is the fine-tuned run's, whatever the alpha
    assert (at_zero["wise_alpha"], at_half["wise_alpha"], plain["wise_alpha"]) == (0.0, 0.5, 1.0)
    # model.pt holds the fine-tuned weights in every case: the final model is theta(wise_alpha) of them
    assert all(torch.equal(a, b) for a, b in zip(torch.load(tmp_path / "a5" / "model.pt").values(),
                                                 torch.load(tmp_path / "a1" / "model.pt").values()))


def test_a_linear_probes_curve_passes_the_image_tower_once_per_split(tiny_bundle, tiny_task, tmp_path):
    """LP trains the head alone, so every point of its WiSE-FT curve has the zero-shot image tower:
    the curve is each split's features once, then one head per alpha (pipeline.head_mixtures). Its
    numbers equal the general path's (each alpha's whole model evaluated) to the bit."""
    ws = Workspace.build(tiny_task, tiny_bundle, torch.device("cpu"))
    alphas = (0.0, 0.3, 0.7, 1.0)
    spec = RunSpec(weights={"ce": 1.0}, lr=3e-1, weight_decay=0.1, epochs=2, batch_size=8, trainable="head",
                   curve_alphas=alphas)
    passes = []  # every pass of the image tower over a split
    batches = ws.eval_batches
    ws.eval_batches = lambda split, *a, **k: passes.append(split.name) or batches(split, *a, **k)
    probe = run_final(ws, spec, tmp_path / "lp", progress=False)
    del ws.eval_batches
    splits = 2 + len(tiny_task.tests)  # id_val, ood_val and the tests
    assert len(passes) == 2 + splits  # 2 epochs' ID val, then each split once for a 4-point curve (not 4 times)
    general = at_mixtures(ws, alphas, lambda: evaluate_all(ws))  # ws holds the probe's weights
    assert [probe["wise"][f"{a:.1f}"] for a in alphas] == general and probe["metrics"] == general[-1]
    assert general[0] == evaluate_all(ws.__class__.build(tiny_task, tiny_bundle, torch.device("cpu")))  # zero-shot
    assert general[0]["ood_val"] != general[-1]["ood_val"]  # the probe moved the head: the points differ


def test_train_py_final_run_as_autoft_alpha(tmp_path):
    hp = Hyperparameters(loss_weights={"dcm": 0.1, "l2init": 0.01}, lr_scale=2.0, weight_decay=0.1, wise_alpha=0.5)
    hp_file = write_best_hparams(tmp_path / "best_hparams.yaml", hp)
    done = run_train(["--config-dir", TEST_CONF, *BASE, "method=autoft", "method.name=autoft_alpha", f"hparams={hp_file}",
                      f"hydra.run.dir={tmp_path}/autoft_alpha/seed0"], tmp_path)  # in this process
    assert done.returncode == 0, done.stdout[-3000:]
    result = read_result(tmp_path / "autoft_alpha" / "seed0" / "results.json")
    data = result.data
    assert data["method"] == "autoft_alpha" and data["wise_alpha"] == 0.5
    assert data["hparams"]["wise_alpha"] == 0.5 and data["hparams"]["loss_weights"]["dcm"] == 0.1
    assert data["metrics"] == data["wise"]["0.5"]  # the reported model is the searched mixture
    assert data["metrics"] != data["wise"]["1.0"]  # ... not the fine-tuned model
    table = build_table([result], wise_of=("autoft_alpha",))
    assert [r.label for r in table.rows] == ["AutoFT, α searched", "AutoFT, α searched + WiSE-FT (α=0.5)"]


# slow: the alpha search's parts are tested above and test_train_py_final_run_as_autoft_alpha runs its final run; CI runs this
@pytest.mark.slow
def test_search_with_alphas_then_final_run_as_autoft_alpha(tmp_path):
    """The whole path through train.py: trials record their alpha in the study, best_hparams.yaml
    holds the chosen trial's, and the final run named autoft_alpha applies it."""
    import optuna
    import yaml

    def train(*args):
        flags = [a for a in args if a.startswith("-")]  # argparse wants them before the overrides
        cmd = [sys.executable, str(ROOT / "train.py"), "--config-dir", str(TEST_CONF), *flags, *BASE,
               *[a for a in args if a not in flags]]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=offline_env(), timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    train("-m", "search=autoft", "search.n_trials=3", "hydra.sweeper.plots=false", "search.bootstrap=0",
          "search.wise_alphas=[0.5,1.0]", "trainer.inner_steps=3")
    sweep = tmp_path / "outputs/tinyshapes/tiny_vit/search-autoft"
    url = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.trials:
        record = json.loads((sweep / name / f"trial_{t.number}" / "trial.json").read_text())
        assert t.user_attrs["wise_alpha"] == record["wise_alpha"] in (0.5, 1.0)
        assert t.value == record["objective"] == max(record["wise"].values())
    best = yaml.safe_load((sweep / "best_hparams.yaml").read_text())
    assert best["wise_alpha"] == study.best_trial.user_attrs["wise_alpha"]

    train("method=autoft", "method.name=autoft_alpha", f"hparams={sweep / 'best_hparams.yaml'}")
    data = read_result(tmp_path / "outputs/tinyshapes/tiny_vit/autoft_alpha/seed0/results.json").data
    assert data["method"] == "autoft_alpha" and data["wise_alpha"] == best["wise_alpha"]
    assert data["metrics"] == data["wise"][f"{best['wise_alpha']:.1f}"]
