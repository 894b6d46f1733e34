"""Every bad input is stopped before any work with one message naming the key or the file.

One table (BAD) of bad inputs: config keys, values, types, cross-field rules, config files and
other files. Each case runs the real entry point's checks; nothing may be built (no task, no model,
no study), no result written, and the files of an earlier run must stay byte-identical. Most cases
run in-process (Hydra's compose, its error put in words by autoft.config_messages.composition_error, then
autoft.cli.run with the builders replaced by tripwires); the cases in TRAIN_PY also run train.py
from its command line (in this process, conftest.run_train: the same main, argv and exit status),
which must exit with status 2 and print one message and no traceback.
"""
import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from autoft import cli, config_checks, config_messages
from autoft.errors import UserError
from conftest import TINY_CLIP, compose_config, run_train

BASE = ["experiment=shapes_tiny_vit", "device=cpu", "logger=local", "trainer.num_workers=0"]

# files the cases point at, written by the `files` fixture: {name} in an override is replaced by its path
FILES = {
    "corrupt.yaml": b"loss_weights: {ce: 1.0\n  hinge: [0.1\n",
    "truncated.yaml": b"loss_weights: {ce: 1.0, hinge: 0.01, dc",
    "binary.yaml": bytes(range(256)) * 4,
    "list.yaml": b"- 0.1\n- 0.2\n",
    "unknown_term.yaml": b"loss_weights: {ce: 1.0, focal: 0.3}\nlr_scale: 1.0\nweight_decay: 0.1\n",
    "negative_weight.yaml": b"loss_weights: {ce: 1.0, hinge: -0.5}\nlr_scale: 1.0\nweight_decay: 0.1\n",
    "zero_lr.yaml": b"loss_weights: {ce: 1.0}\nlr_scale: 0\nweight_decay: 0.1\n",
    "nan_wd.yaml": b"loss_weights: {ce: 1.0}\nlr_scale: 1.0\nweight_decay: .nan\n",
    "garbage.pt": b"this is not a torch file" * 10,
    # finished final runs that weights_from names (the base config's dataset, model, method and seed)
    "ft_run/results.json": b'{"dataset": "shapes", "model": "tiny_vit", "method": "ft", "seed": 0, "epochs": [{"epoch": 1}]}',
    "lp_run/results.json": b'{"dataset": "shapes", "model": "tiny_vit", "method": "lp", "seed": 0, "epochs": [{"epoch": 1}]}',
    "garbage_run/results.json": b'{"dataset": "shapes", "model": "tiny_vit", "method": "ft", "seed": 0, "epochs": [{"epoch": 1}]}',
    "garbage_run/model.pt": b"this is not a torch file" * 10,
    # config files of a user's config directory ({conf}: on the search path with hydra.searchpath)
    "conf/experiment/key_typo.yaml": b"# @package _global_\ntrainer:\n  bach_size: 32\n",
    "conf/experiment/batch_words.yaml": b"# @package _global_\ntrainer:\n  batch_size: lots\n",
    "conf/dataset/bool_words.yaml": (b"name: shapes\ntask: {_target_: autoft.data.shapes.shapes_task}\n"
                                     b"metric: accuracy\nhigher_is_better: maybe\n"),
    "conf/dataset/broken.yaml": b"name: shapes\ntask: [1, 2\nmetric: accuracy\n",
}
CONF_DIR = "hydra.searchpath=[file://{conf}]"

# (id, overrides, what the message must name)
BAD = [
    # trainer
    ("batch-zero", ["trainer.batch_size=0"], "trainer.batch_size=0"),
    ("batch-negative", ["trainer.batch_size=-4"], "trainer.batch_size=-4"),
    ("eval-batch-zero", ["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0"),
    ("inner-steps-zero", ["trainer.inner_steps=0"], "trainer.inner_steps=0"),
    ("epochs-zero", ["trainer.epochs=0"], "trainer.epochs=0"),
    ("base-lr-zero", ["trainer.base_lr=0"], "trainer.base_lr=0"),
    ("lr-scale-negative", ["trainer.lr_scale=-1"], "trainer.lr_scale=-1"),
    ("wd-negative", ["trainer.weight_decay=-0.1"], "trainer.weight_decay=-0.1"),
    ("warmup-one", ["trainer.warmup_fraction=1.0"], "trainer.warmup_fraction=1.0"),
    ("clip-zero", ["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm=0"),
    ("accum-zero", ["trainer.accum_steps=0"], "trainer.accum_steps=0"),
    ("accum-not-dividing", ["trainer.accum_steps=3"], "must divide trainer.batch_size=64"),
    ("precision-fp16", ["trainer.precision=fp16"], "trainer.precision=fp16"),
    ("workers-negative", ["trainer.num_workers=-1"], "trainer.num_workers=-1"),
    ("max-loss-zero", ["trainer.max_loss=0"], "trainer.max_loss=0"),
    ("channels-last-maybe", ["trainer.channels_last=maybe"], "trainer.channels_last=maybe"),
    ("batch-not-int", ["trainer.batch_size=abc"], "trainer.batch_size=abc on the command line: must be an integer"),
    ("lr-not-number", ["trainer.base_lr=fast"], "trainer.base_lr=fast on the command line: must be a number"),
    ("clip-not-number", ["trainer.clip_grad_norm=high"], "trainer.clip_grad_norm=high on the command line: must be null or a number"),
    ("seed-not-int", ["seed=one"], "seed=one on the command line: must be an integer"),
    ("optimizer-lr-fixed", ["+trainer.optimizer.lr=0.1"], "trainer.optimizer.lr: set by the schedule"),
    ("optimizer-not-partial", ["trainer.optimizer._partial_=false"], "trainer.optimizer._partial_=false"),
    ("optimizer-key-unadded", ["trainer.optimizer.betas=[0.9,0.98]"], "+trainer.optimizer.betas"),
    ("trainer-typo", ["trainer.batch_sizee=3"], "trainer.batch_sizee"),
    ("trainer-typo-added", ["+trainer.batch_sizee=3"], "valid keys of trainer: batch_size"),
    # root
    ("device-tpu", ["device=tpu"], "device=tpu"),
    ("device-gpu", ["device=gpu"], "device=gpu"),
    ("device-cuda-absent", ["device=cuda:7"], "device=cuda:7"),
    ("phase-train", ["phase=train"], "phase=train"),
    ("seed-negative", ["seed=-1"], "seed=-1"),
    ("root-typo-added", ["+sede=1"], "valid keys of the root config"),
    # the budgets of one dataset and model (conf/budget/<dataset>_<model>.yaml)
    ("pair-without-budgets", ["model=vit_l14"],
     "not set for dataset=shapes model=vit_l14: there is no conf/budget/shapes_vit_l14.yaml; choose a pair with budgets: "
     "dataset=shapes model=shapes_rn10t or dataset=shapes model=tiny_vit"),
    ("experiment-other-model", ["experiment=iwildcam_vit_b16", "model=vit_l14"],
     "choose a pair with budgets: dataset=iwildcam model=vit_b16 or dataset=iwildcam model=tiny_vit"),
    ("budget-none", ["~budget"], "its budgets, conf/budget/shapes_tiny_vit.yaml, were left out"),
    ("budget-other-pair", ["budget=iwildcam_vit_b16"],
     "budget=iwildcam_vit_b16 sets the budgets (trainer.base_lr, batch_size, inner_steps, epochs, ..., search.n_trials) "
     "for dataset=iwildcam model=vit_b16, not for dataset=shapes model=tiny_vit"),
    ("experiment-unknown", ["experiment=iwildcam_resnet"], "Could not find 'experiment/iwildcam_resnet'; available: "),
    ("budget-typo", ["budget.modle=x"], "did you mean budget.model?"),
    # config files with a misspelt key, a wrong type, broken YAML
    ("yaml-key-typo", [CONF_DIR, "experiment=key_typo"],
     "unknown config key trainer.bach_size in experiment/key_typo.yaml (did you mean trainer.batch_size?)"),
    ("yaml-wrong-type", [CONF_DIR, "experiment=batch_words"],
     "trainer.batch_size=lots in experiment/batch_words.yaml: must be an integer"),
    ("yaml-bool-words", [CONF_DIR, "dataset=bool_words"],
     "dataset.higher_is_better=maybe in dataset/bool_words.yaml: must be true or false"),
    ("yaml-broken", [CONF_DIR, "dataset=broken"], "{conf}/dataset/broken.yaml: line 3, column 7: not valid YAML"),
    # dataset and its task block
    ("cue-above-one", ["dataset.task.cue=1.5"], "dataset.task.cue=1.5"),
    ("cue-negative", ["dataset.task.cue=-0.1"], "dataset.task.cue=-0.1"),
    ("test-cue-two", ["+dataset.task.test_cue=2"], "dataset.task.test_cue=2"),
    ("n-train-zero", ["dataset.task.n_train=0"], "dataset.task.n_train=0"),
    ("ood-val-size-zero", ["dataset.task.ood_val_size=0"], "dataset.task.ood_val_size=0"),
    ("domain-unknown", ["dataset.task.id_domain=moon"], "dataset.task.id_domain=moon"),
    ("domains-overlap", ["dataset.task.test_domains=[snow,studio]"], "must all differ"),
    ("task-key-unknown", ["+dataset.task.colour=red"], "valid keys: seed, n_train"),
    ("task-key-typo", ["dataset.task.cuee=0.5"], "dataset.task.cuee"),
    ("metric-unknown", ["dataset.metric=f1"], "dataset.metric=f1"),
    ("id-metrics-unknown", ["dataset.id_test_metrics=[accuracy,top5]"], "dataset.id_test_metrics=[accuracy,top5]"),
    ("passes-zero", ["dataset.passes_per_epoch=0"], "dataset.passes_per_epoch=0"),
    ("trials-zero", ["search.n_trials=0"], "search.n_trials=0"),
    ("target-unknown", ["dataset.task._target_=autoft.data.nothing.task"], "autoft.data.nothing.task"),
    ("synthetic-one-class", ["experiment=synthetic_tiny_vit", "dataset.task.num_classes=1"], "dataset.task.num_classes=1"),
    ("cifar-severity", ["experiment=cifar10_tiny_vit", "dataset.task.severity=9"], "dataset.task.severity=9"),
    ("cifar-holdout", ["experiment=cifar10_tiny_vit", "dataset.task.id_val_fraction=1.5"], "dataset.task.id_val_fraction=1.5"),
    ("iwildcam-captions", ["experiment=iwildcam_tiny_vit", "dataset.task.caption_names=klingon"], "caption_names=klingon"),
    ("imagenet-tests", ["experiment=imagenet_tiny_vit", "dataset.task.tests=[imagenet_z]"], "dataset.task.tests=[imagenet_z]"),
    # method
    ("weight-negative", ["method.loss_weights.hinge=-1"], "method.loss_weights.hinge=-1"),
    ("loss-term-unknown", ["+method.loss_weights.focal=1"], "valid keys of method.loss_weights"),
    ("trainable-text", ["method.trainable=text"], "method.trainable=text"),
    ("lr-mult-zero", ["method.lr_mult=0"], "method.lr_mult=0"),
    ("lp-epochs-negative", ["method=lpft", "method.lp_epochs=-1"], "method.lp_epochs=-1"),
    ("search-losses-ce", ["method.search_losses=[ce]"], "method.search_losses=[ce]"),
    ("train-not-bool", ["method.train=maybe"], "method.train"),
    # model
    ("model-two-sources", ["model.arch=ViT-B-16"], "set exactly one of model.arch"),
    ("model-tag-without-arch", ["model.pretrained=openai"], "model.pretrained=openai"),
    ("model-for-other-task", ["model=shapes_rn10t", "dataset=synthetic"], "model=shapes_rn10t was built for"),
    ("checkpoint-missing", ["experiment=shapes_rn10t", "model.checkpoint=/nonexistent/foundation.pt"],
     "/nonexistent/foundation.pt"),
    # logger
    ("logger-mode", ["logger.mode=loud"], "logger.mode=loud"),
    ("logger-typo", ["logger.projet=x"], "logger.projet"),
    # files: the hparams of a final run
    ("hparams-corrupt", ["hparams={corrupt.yaml}"], "{corrupt.yaml}"),
    ("hparams-truncated", ["hparams={truncated.yaml}"], "{truncated.yaml}"),
    ("hparams-binary", ["hparams={binary.yaml}"], "{binary.yaml}"),
    ("hparams-list", ["hparams={list.yaml}"], "{list.yaml}: holds list"),
    ("hparams-unknown-term", ["hparams={unknown_term.yaml}"], "loss_weights.focal: unknown loss term"),
    ("hparams-negative-weight", ["hparams={negative_weight.yaml}"], "loss_weights.hinge=-0.5"),
    ("hparams-zero-lr", ["hparams={zero_lr.yaml}"], "lr_scale=0"),
    ("hparams-nan-wd", ["hparams={nan_wd.yaml}"], "weight_decay=nan"),
    ("hparams-missing", ["hparams={missing.yaml}"], "{missing.yaml}: file not found"),
    ("checkpoint-garbage", ["experiment=shapes_rn10t", "model.checkpoint={garbage.pt}"], "{garbage.pt}"),
    # files: the finished run whose weights a final run evaluates again
    ("weights-from-missing", ["weights_from={missing.yaml}"], "weights_from={missing.yaml}: not a directory"),
    ("weights-from-no-results", ["weights_from={conf}"], "weights_from={conf}: {conf}/results.json: missing"),
    ("weights-from-other-method", ["weights_from={lp_run}"], "method 'lp' there, 'ft' here"),
    ("weights-from-other-seed", ["weights_from={ft_run}", "seed=1"], "seed 0 there, 1 here"),
    ("weights-from-no-weights", ["weights_from={ft_run}"], "weights_from={ft_run}: {ft_run}/model.pt missing"),
    ("weights-from-garbage", ["weights_from={garbage_run}"], "cannot read {garbage_run}/model.pt"),
    ("weights-from-in-search", ["phase=search", "weights_from={ft_run}"], "only a final run (phase=final)"),
    ("weights-from-with-hparams", ["weights_from={ft_run}", "hparams={zero_lr.yaml}"], "leave out hparams"),
]
# the cases that also run train.py from its command line (item 1 of the issue, and a few more)
TRAIN_PY = {"batch-zero", "device-tpu", "hparams-corrupt", "cue-above-one", "trainer-typo", "task-key-unknown",
            "checkpoint-garbage", "accum-not-dividing", "batch-not-int", "pair-without-budgets", "yaml-key-typo",
            "yaml-broken", "weights-from-garbage"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_files")
    for name, data in FILES.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return {name: str(d / name) for name in [*FILES, "missing.yaml", "conf", "ft_run", "lp_run", "garbage_run"]}


def fill(text: str, files: dict) -> str:
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return text


@pytest.fixture
def tripwires(monkeypatch):
    """Anything that would build data, a model or a workspace fails the test."""
    def boom(*a, **k):
        raise AssertionError("work started before the config was validated")

    for name in ("build_task", "load_clip", "workspace", "run_final", "run_search"):
        monkeypatch.setattr(cli, name, boom)


@pytest.mark.parametrize("case,overrides,named", BAD, ids=[c[0] for c in BAD])
def test_bad_input_in_process(case, overrides, named, files, tripwires, tmp_path):
    overrides = [fill(o, files) for o in overrides]
    named = fill(named, files)
    try:
        cfg = compose_config(*BASE, f"cache_dir={tmp_path}", *overrides)
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:  # refused while composing:
        message = config_messages.composition_error(err)  # types, unknown keys, broken files (train.py prints this)
        assert named in message and "\n" not in message, message
        return
    with pytest.raises(UserError) as err:
        if case.startswith("checkpoint-garbage"):
            from autoft.models import clip

            cli.load_clip = clip.load_clip  # the weights check reads the file (nothing else is built)
            cli.check_weights(cfg.model)
        cli.run(cfg)
    message = str(err.value)
    assert named in message, message
    assert "Traceback" not in message
    assert not list(tmp_path.iterdir())  # nothing cached or written


def test_a_run_is_validated_once(tripwires, monkeypatch, tmp_path):
    """cli.run checks the config, then runs it with run_validated, which train.py calls after its own
    check (made before torch is imported): no path checks twice."""
    calls = []
    monkeypatch.setattr(cli, "validate", lambda cfg: calls.append(cfg) or config_checks.validate(cfg))
    cfg = compose_config(*BASE, f"cache_dir={tmp_path}")
    with pytest.raises(AssertionError, match="work started"):  # valid: on to the workspace (a tripwire)
        cli.run(cfg)
    assert len(calls) == 1
    with pytest.raises(AssertionError, match="work started"):
        cli.run_validated(cfg)
    assert len(calls) == 1


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """The files of an earlier run and search (results, weights, study): a bad rerun must not touch them."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    run.mkdir()
    (run / "results.json").write_text('{"dataset": "shapes", "metrics": {}}')
    torch.save({"w": torch.arange(4)}, run / "model.pt")
    torch.save({"epoch": 1}, run / "last.pt")
    import sqlite3

    with sqlite3.connect(run / "optuna.db") as db:
        db.execute("create table studies (id integer)")
    (run / "best_hparams.yaml").write_text("loss_weights: {ce: 1.0}\nlr_scale: 1.0\nweight_decay: 0.1\n")
    return run


@pytest.mark.parametrize("case,overrides,named", [c for c in BAD if c[0] in TRAIN_PY],
                         ids=[c[0] for c in BAD if c[0] in TRAIN_PY])
def test_bad_input_stops_train_py(case, overrides, named, files, earlier_run, tmp_path):
    before = digest(earlier_run)
    done = run_train([*BASE, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={earlier_run}",
                      *[fill(o, files) for o in overrides]], tmp_path)
    out = done.stdout  # stdout and stderr (an uncaught exception would fail the test here)
    assert done.returncode == 2, out
    assert fill(named, files) in out, out
    assert "Traceback" not in out, out
    assert sum("Error" in line or "ERROR" in line for line in out.splitlines()) == 1, out  # one message
    assert digest(earlier_run) == before  # results, weights, study: byte-identical
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()
    assert not list(earlier_run.glob("trial_*"))


# ------------------------------------------------------------------------------------------------
# files read by other commands: each gets one message naming the file and the fix

def test_checkpoint_of_another_architecture_names_the_file(tmp_path):
    from autoft.models.clip import build_custom_clip, load_checkpoint, save_checkpoint

    other = dict(TINY_CLIP, embed_dim=48)
    path = tmp_path / "other.pt"
    save_checkpoint(path, build_custom_clip(other), other, image_size=16)
    payload = torch.load(path, weights_only=False)
    payload["config"] = TINY_CLIP  # the file claims one architecture, its weights are another's
    torch.save(payload, path)
    with pytest.raises(UserError, match=f"{path} does not match the architecture"):
        load_checkpoint(path)
    torch.save({"head.weight": torch.zeros(3, 32)}, path)  # a final run's model.pt: a classifier's weights
    with pytest.raises(UserError, match=f"{path} is not an autoft CLIP checkpoint"):
        load_checkpoint(path)


def test_results_json_cut_short_names_the_file_and_the_fix(tmp_path):
    from autoft.reporting.results import ResultsError, read_result

    path = tmp_path / "results.json"
    path.write_text('{"dataset": "shapes", "metrics": {"id_test": {"accur')
    with pytest.raises(ResultsError, match="corrupt JSON .*rerun the final run that wrote it"):
        read_result(path)


def test_study_storage_that_is_not_a_database_names_the_file(tmp_path):
    from autoft.search_app import best_hparams_from_study

    path = tmp_path / "optuna.db"
    path.write_bytes(b"not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(UserError, match=str(path)):
        best_hparams_from_study(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    import fabricate
    from autoft.data.images import load_rgb

    good, bad = tmp_path / "a.jpg", tmp_path / "b.jpg"
    fabricate._save(good, __import__("numpy").random.default_rng(0), fmt="JPEG")
    bad.write_bytes(good.read_bytes())
    fabricate.corrupt(bad)
    with pytest.raises(UserError, match=f"corrupt image file: {bad}"):
        load_rgb(bad)
    with pytest.raises(UserError, match=f"image file missing: {tmp_path / 'c.jpg'}"):
        load_rgb(tmp_path / "c.jpg")


def test_dataset_folder_missing_is_named_before_training(tmp_path):
    cfg = compose_config(*BASE, "experiment=cifar10_tiny_vit", f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match=str(tmp_path / "nowhere")):
        cli.preflight(cfg)


def test_preflight_refuses_hub_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(*BASE[1:], "model=vit_b16", f"model.cache_dir={tmp_path / 'hub'}")
    with pytest.raises(UserError, match="ViT-B-16/openai weights .* are not in the Hugging Face cache"):
        cli.check_weights(cfg.model)
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.bin"))  # nothing downloaded
