"""search.regenerate_head: a trial scored with the zero-shot head rebuilt from its tuned text tower,
as the reference's experiment scripts did (`--regenerate_head`, docs/fidelity.md), instead of its
trained head. Real inner runs of the tiny random CLIP on CPU; the expected scores are computed here
with open_clip's own zero-shot classifier builder."""
from dataclasses import replace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from autoft import cli
from autoft.config_checks import validate
from autoft.data.base import Task
from autoft.errors import UserError
from autoft.pipeline import RunSpec, Workspace, run_trial
from autoft.search.space import parse_space
from autoft.search.study import fingerprint
from conftest import ROOT, compose_config, random_split

TRIAL = ["experiment=tinyshapes_tiny_vit", "device=cpu", "trainer.num_workers=0", "logger=none", "search=autoft"]
# ce moves the head, flyp the text tower (and both the image tower); 12 steps learn the colour cue
SPEC = RunSpec(weights={"ce": 1.0, "flyp": 1.0}, lr=3e-3, weight_decay=0.0, steps=12, batch_size=8, bootstrap=0)


@pytest.fixture
def ws(tiny_bundle):
    classes = ["cat", "dog", "bird"]
    task = Task(name="tiny", classnames=classes, templates=["a photo of a {}.", "a {} in the wild."],
                train=random_split("train", 48, 3, 0), id_val=random_split("id_val", 12, 3, 1),
                ood_val=random_split("ood_val", 90, 3, 2), tests={"id_test": random_split("id_test", 12, 3, 3)})
    return Workspace.build(task, tiny_bundle, torch.device("cpu"))


@torch.no_grad()
def ood_val_logits(ws, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """logits = W normalise(f(x)) + b on OOD-val, with the working model's image tower."""
    clip = ws.classifier.clip.eval()
    images, _ = ws.split_tensors(ws.task.ood_val)
    feats = F.normalize(clip.encode_image(ws.normalizer(images)), dim=-1)
    return feats @ weight.T + bias


def test_a_regenerated_head_trial_scores_the_zero_shot_head_of_its_tuned_text_tower(ws):
    labels = torch.as_tensor(ws.task.ood_val.labels)
    trained = run_trial(ws, SPEC)
    head = {k: v.clone() for k, v in ws.classifier.head.state_dict().items()}  # the tuned model's trained head
    assert not torch.allclose(head["weight"], ws.theta0["head.weight"]) and head["bias"].abs().max() > 0  # ce moved it
    # the tuned text tower's zero-shot head, built by open_clip (not by our code): logit_scale.exp() x W, b = 0
    clip = ws.classifier.clip.eval()
    zs = open_clip.build_zero_shot_classifier(clip, ws.bundle.tokenizer, ws.task.classnames, ws.task.templates,
                                              num_classes_per_batch=2, device="cpu").T * clip.logit_scale.exp()
    zs_acc = (ood_val_logits(ws, zs, torch.zeros(3)).argmax(1) == labels).float().mean().item()
    trained_acc = (ood_val_logits(ws, head["weight"], head["bias"]).argmax(1) == labels).float().mean().item()
    assert trained["objective"] == pytest.approx(trained_acc, abs=1e-9)

    regen = run_trial(ws, replace(SPEC, regenerate_head=True))
    assert regen["objective"] == pytest.approx(zs_acc, abs=1e-9)
    assert regen["objective"] != trained["objective"]  # here 0.678 vs 0.878 with the trained head
    assert (regen["regenerate_head"], trained["regenerate_head"]) == (True, False)
    # same training: the rebuilt head only scores, and the trained head is put back afterwards
    assert regen["runs"][0]["final_loss"] == trained["runs"][0]["final_loss"]
    for k, v in ws.classifier.head.state_dict().items():
        torch.testing.assert_close(v, head[k], rtol=0, atol=0)


def test_the_next_trial_starts_from_theta0_head_included(ws):
    def scores(record: dict) -> dict:  # the record without its timings
        return {**record, "runs": [{k: v for k, v in r.items() if k != "seconds"} for r in record["runs"]]}

    plain = run_trial(ws, SPEC)
    run_trial(ws, replace(SPEC, regenerate_head=True, lr=1e-1))
    assert scores(run_trial(ws, SPEC)) == scores(plain)  # as after a fresh start: loss, scores, every metric
    for k, v in ws.theta0.items():  # and a reset puts the head back to the initial zero-shot head
        if k.startswith("head."):
            ws.reset()
            torch.testing.assert_close(ws.classifier.state_dict()[k], v, rtol=0, atol=0)


def test_intermediate_reports_use_the_rebuilt_head_without_changing_training(ws):
    reports = {}
    regen = replace(SPEC, regenerate_head=True, eval_every=4)
    plain_run = run_trial(ws, replace(SPEC, eval_every=4), report=lambda s, v: reports.setdefault("plain", []).append(v))
    regen_run = run_trial(ws, regen, report=lambda s, v: reports.setdefault("regen", []).append(v))
    assert len(reports["regen"]) == 2 and reports["regen"] != reports["plain"]
    assert regen_run["runs"][0]["final_loss"] == plain_run["runs"][0]["final_loss"]


def test_the_option_reaches_the_trial_and_a_bad_value_is_refused():
    assert cli.run_spec(compose_config(*TRIAL), cli.hyperparameters(compose_config(*TRIAL))).regenerate_head is False
    cfg = compose_config(*TRIAL, "search.regenerate_head=true")
    assert cli.run_spec(cfg, cli.hyperparameters(cfg)).regenerate_head is True
    with pytest.raises(UserError, match=r"search.regenerate_head='?yes'?: must be true or false"):
        validate(compose_config(*TRIAL, "search.regenerate_head=yes"))


def test_a_study_searched_with_regenerated_heads_is_another_study():
    from autoft.search_app import FINGERPRINT_EXCLUDE, NEUTRAL_DEFAULTS

    exclude = FINGERPRINT_EXCLUDE
    params = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/search/autoft.yaml").hydra.sweeper.params)

    def fp(cfg):
        space, _ = parse_space(params, [], config=cfg)
        return fingerprint(cfg, space=space, direction="maximize", sampler={}, pruner=None, exclude=exclude,
                           neutral=NEUTRAL_DEFAULTS)

    default = compose_config(*TRIAL)
    assert default.search.regenerate_head is False
    on = fp(compose_config(*TRIAL, "search.regenerate_head=true"))
    assert on != fp(default)
    # a study made before the key existed (its config has no search.regenerate_head) keeps its fingerprint
    older = OmegaConf.to_container(default, resolve=False)
    del older["search"]["regenerate_head"]
    assert fp(OmegaConf.create(older)) == fp(default)
