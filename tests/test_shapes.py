"""The embedded shapes world, its downstream task and the foundation-model build (fast, CPU)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from autoft.data import shapes
from autoft.data.base import Task
from autoft.errors import UserError
from autoft.models.clip import load_checkpoint
from autoft.models.tokenizer import WordTokenizer, split_words
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _load_build_script():
    return load_script("build_foundation")


SMALL = dict(n_train=60, n_val=30, n_test=40, ood_val_size=50)


@pytest.fixture(scope="module")
def task() -> Task:
    return shapes.shapes_task(seed=3, **SMALL)


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha1(images.numpy().tobytes()).hexdigest()


def test_task_is_deterministic_in_its_seed(task):
    again = shapes.shapes_task(seed=3, **SMALL)
    other = shapes.shapes_task(seed=4, **SMALL)
    for name in ["train", "id_val", "ood_val"]:
        a, b, c = getattr(task, name), getattr(again, name), getattr(other, name)
        assert torch.equal(a.dataset.images, b.dataset.images)
        assert np.array_equal(a.labels, b.labels)
        assert not torch.equal(a.dataset.images, c.dataset.images)
    for name in task.tests:
        assert torch.equal(task.tests[name].dataset.images, again.tests[name].dataset.images)


def test_every_split_has_model_ready_images_and_labels(task):
    splits = {"train": task.train, "id_val": task.id_val, "ood_val": task.ood_val, **task.tests}
    sizes = {"train": 60, "id_val": 30, "ood_val": 50}
    assert task.classnames == shapes.SHAPES[: shapes.N_DOWNSTREAM]
    assert len(task.tests) >= 4 and "id_test" in task.tests  # ID test plus at least three OOD domains
    for name, split in splits.items():
        assert len(split) == sizes.get(name, 40)
        img, label = split.dataset[0]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 32, 32)
        assert isinstance(label, int) and label == split.labels[0]
        assert split.labels.dtype == np.int64
        assert split.labels.min() >= 0 and split.labels.max() < len(task.classnames)
        assert len(np.unique(split.labels)) == len(task.classnames)  # class-balanced, every class present
        assert split.dataset.images.float().std() > 10  # real pictures, not a constant
    # the OOD-val domain is neither the ID domain nor a test domain
    assert task.ood_val.name not in task.tests


def test_splits_are_disjoint(task):
    seen: dict[str, str] = {}
    splits = {"train": task.train, "id_val": task.id_val, "ood_val": task.ood_val, **task.tests}
    for name, split in splits.items():
        for img in split.dataset.images:
            key = _digest(img)
            assert key not in seen or seen[key] == name, f"an image of {name} also appears in {seen.get(key)}"
            seen[key] = name


def test_id_domain_carries_the_background_cue():
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 10
    img, _ = shapes.render("studio", labels, rng, cue=1.0)
    # with cue 1 every image of a class has the same corner colour (its class background)
    corners = img[:, :, 0, 0].numpy()
    for k in range(10):
        assert (corners[labels == k] == corners[labels == k][0]).all()
    img, _ = shapes.render("studio", labels, rng, cue=None)
    corners = img[:, :, 0, 0].numpy()
    assert len({tuple(c) for c in corners[labels == 0]}) > 3


def test_captions_name_class_and_domain():
    images, captions = shapes.pretraining_corpus(180, seed=0, name_fraction=0.5, colour_fraction=1.0)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (180, 3, 32, 32)
    domains = {d: shapes.DOMAINS[d].phrase for d in shapes.DOMAINS}
    found_domains = set()
    named = 0
    for cap in captions:
        doms = [d for d, phrase in domains.items() if phrase in cap]
        assert len(doms) == 1, cap
        found_domains.add(doms[0])
        words = split_words(cap)
        shape_words = [s for s in shapes.SHAPES + ["shape"] if s in words]
        assert len(shape_words) == 1, cap
        named += shape_words[0] != "shape"
        if shapes.DOMAINS[doms[0]].coloured:
            assert any(c in words for c in shapes.OBJECT_COLOURS), cap
    assert found_domains == set(shapes.DOMAINS)  # every domain in the corpus
    assert 0.5 < named / len(captions) < 1.0  # downstream shapes partly unnamed, extra shapes always named
    assert shapes.caption("star", "red", "garden") == "a photo of a red star in the garden."


def test_tokenizer_round_trips_every_caption():
    tok = WordTokenizer.from_texts(shapes.all_texts(shapes.TEMPLATES))
    _, captions = shapes.pretraining_corpus(90, seed=1)
    prompts = [t.replace("{}", c) for t in shapes.TEMPLATES for c in shapes.SHAPES]
    ids = tok(captions + prompts)
    for text, row in zip(captions + prompts, ids):
        words = [tok.words[i - 3] for i in row.tolist() if 3 <= i < tok.eot]
        assert words == split_words(text)  # no unknown words, nothing truncated
        assert row[0] == tok.SOT and tok.eot in row.tolist()


def test_unknown_domain_is_a_user_error():
    with pytest.raises(UserError, match="unknown shapes domain 'moon'"):
        shapes.shapes_task(test_domains=("snow", "moon", "fog"), **SMALL)


def test_task_cache_round_trips(tmp_path):
    a = shapes.shapes_task(seed=5, cache_dir=str(tmp_path), **SMALL)
    files = list((tmp_path / "shapes").glob("task-*.pt"))
    assert len(files) == 1
    b = shapes.shapes_task(seed=5, cache_dir=str(tmp_path), **SMALL)
    assert torch.equal(a.train.dataset.images, b.train.dataset.images)
    assert set(a.tests) == set(b.tests)
    assert np.array_equal(a.tests["id_test"].labels, b.tests["id_test"].labels)


def test_model_yaml_names_the_checkpoint_by_the_hash_of_its_build_settings():
    bf = _load_build_script()
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "shapes_rn10t.yaml")
    build = OmegaConf.to_container(cfg.build, resolve=True)
    assert cfg.name == "shapes_rn10t" and cfg.arch is None and cfg.custom is None
    raw = OmegaConf.to_container(cfg, resolve=False)["checkpoint"]  # ${cache_dir} is the root config's
    assert raw == f"${{cache_dir}}/foundation/shapes_rn10t-{bf.settings_hash(build)}.pt", \
        "model.build changed: rename model.checkpoint to the new hash (see scripts/build_foundation.py)"


def test_the_shipped_foundation_is_the_one_the_yaml_names_and_installs_verbatim(tmp_path, capsys):
    """The repository ships the checkpoint the README was measured with (a rebuild elsewhere is not
    bit-identical); build_foundation.py installs it byte for byte instead of pretraining."""
    bf = _load_build_script()
    build = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "shapes_rn10t.yaml").build, resolve=True)
    shipped = bf.SHIPPED_DIR / f"shapes_rn10t-{bf.settings_hash(build)}.pt"
    assert shipped.is_file(), "ship the checkpoint the model YAML names (scripts/build_foundation.py)"
    assert load_checkpoint(shipped).model is not None
    path = bf.main([f"cache_dir={tmp_path}"])
    assert path == tmp_path / "foundation" / shipped.name
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(shipped.read_bytes()).digest()
    assert "installed the shipped" in capsys.readouterr().out
    bf.main([f"cache_dir={tmp_path}"])
    assert "already built" in capsys.readouterr().out


def test_foundation_build_is_reloadable_and_reproducible(tmp_path):
    bf = _load_build_script()
    build = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "shapes_rn10t.yaml").build)
    build.update(corpus_size=64, steps=3, batch_size=16, warmup_steps=1)
    logs: list[str] = []
    path = bf.pretrain(build, tmp_path / "a.pt", log=logs.append)
    bundle = load_checkpoint(path)
    assert bundle.image_size == 32 and len(bundle.mean) == 3 and all(0 < s < 1 for s in bundle.std)
    ids = bundle.tokenizer(["a photo of a star."])
    assert (ids != WordTokenizer.UNK).all()
    bundle.model.eval()  # train mode would update the batch-norm statistics
    with torch.no_grad():
        img = torch.zeros(2, 3, 32, 32)
        feats = bundle.model.encode_image(img, normalize=True)
        text = bundle.model.encode_text(ids, normalize=True)
    assert feats.shape == (2, build["config"]["embed_dim"]) and text.shape == (1, build["config"]["embed_dim"])
    assert any("step" in line for line in logs)
    # the same settings give the same weights
    again = load_checkpoint(bf.pretrain(build, tmp_path / "b.pt", log=logs.append))
    sa, sb = bundle.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and training moved them away from the initialisation (the script builds it right after seeding)
    torch.manual_seed(build["seed"])
    config = {**build["config"], "text_cfg": {**build["config"]["text_cfg"], "vocab_size": bundle.tokenizer.vocab_size}}
    init = bf.build_custom_clip(config).state_dict()
    moved = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], init[k])]
    assert len(moved) > len(sa) // 2


def test_ood_val_mixture_is_class_balanced_over_its_domains():
    """A mixture OOD-val (ood_val_domain as a list): every (class, domain) cell holds the same count,
    each domain's share is drawn in that domain (equal to rendering it alone from its own stream),
    and the test splits are the same as with a single-domain OOD-val."""
    mix = ["fog", "sketch", "night"]
    single = shapes.shapes_task(seed=3, ood_val_domain="fog", test_domains=("snow", "clutter"),
                                **{**SMALL, "ood_val_size": 60})
    mixed = shapes.shapes_task(seed=3, ood_val_domain=mix, test_domains=("snow", "clutter"),
                               **{**SMALL, "ood_val_size": 60})
    assert mixed.ood_val.name == "mix(fog+sketch+night)"
    labels = mixed.ood_val.labels
    assert np.bincount(labels, minlength=10).tolist() == [6] * 10
    rank = np.zeros(60, dtype=int)
    for k in range(10):
        rank[labels == k] = np.arange(6)
    assigned = (rank + labels) % 3
    for j, d in enumerate(mix):
        cells = np.bincount(labels[assigned == j], minlength=10)
        assert cells.tolist() == [2] * 10, (d, cells)
        idx = np.flatnonzero(assigned == j)
        alone, _ = shapes.render(d, labels[idx], np.random.default_rng([3, 4, 1 + list(shapes.DOMAINS).index(d)]))
        assert torch.equal(mixed.ood_val.dataset.images[torch.from_numpy(idx)], alone)
    for name in ("snow", "clutter", "id_test"):
        assert torch.equal(mixed.tests[name].dataset.images, single.tests[name].dataset.images)
    # a one-element list is the bare domain, bit for bit
    one = shapes.shapes_task(seed=3, ood_val_domain=["fog"], test_domains=("snow", "clutter"),
                             **{**SMALL, "ood_val_size": 60})
    assert one.ood_val.name == "fog" and torch.equal(one.ood_val.dataset.images, single.ood_val.dataset.images)


@pytest.mark.parametrize("ood_val, tests", [(["fog", "snow"], ("snow", "clutter")), (["fog", "studio"], ("snow",)),
                                            ([], ("snow",)), (["fog", "moon"], ("snow",))])
def test_ood_val_mixture_refuses_overlaps_and_unknown_domains(ood_val, tests):
    with pytest.raises(UserError, match="differ|unknown shapes domain|name one domain"):
        shapes.shapes_task(ood_val_domain=ood_val, test_domains=tests, **SMALL)
