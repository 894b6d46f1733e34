"""Every option of every config group composes against the schema (src/autoft/config.py), passes
`validate`'s value checks, and every `_target_` it names resolves and accepts its keys (the cheap
builders are instantiated, the data builders on the fabricated miniatures of tests/fabricate.py)."""
import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from autoft import cli, config
from autoft.errors import UserError
import conftest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TEST_CONF = Path(__file__).resolve().parent / "conf"
BASE = ["device=cpu", "logger=local", "trainer.num_workers=0"]


def options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def compose_config(*overrides):
    return conftest.compose_config(*BASE, *overrides)


# every YAML option of every group, in conf/ and in the test conf dir
CASES = ([("dataset", o) for o in options(CONF, "dataset")] + [("dataset", o) for o in options(TEST_CONF, "dataset")]
         + [(g, o) for g in ("model", "method", "trainer", "logger", "search") for o in options(CONF, g)]
         + [("search/warm_start", o) for o in options(CONF, "search/warm_start")]
         + [("hydra/launcher", o) for o in options(CONF, "hydra/launcher")])


def overrides_for(group: str, option: str) -> list[str]:
    if group == "search/warm_start":
        return ["search=autoft", f"search/warm_start={option}"]
    if group == "model":  # the embedded model refuses datasets of other builders: pair it with its own
        return [f"model={option}"]
    return [f"{group}={option}"]


def test_every_group_has_options():
    groups = {g for g, _ in CASES}
    assert {"dataset", "model", "method", "trainer", "logger", "search"} <= groups


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config(*overrides_for(group, option))
    assert config.problems(cfg) == []
    # every schema'd group really is typed by its dataclass (unknown keys and bad types refused at compose)
    for name, schema in config.GROUP_SCHEMAS.items():
        assert OmegaConf.get_type(cfg, name) is schema, name
    # the dataset's builder accepts every key the YAML gives it
    task = OmegaConf.to_container(cfg.dataset.task, resolve=False)
    target = task.pop("_target_")
    inspect.signature(get_method(target)).bind_partial(**task)


def test_schema_lists_equal_the_library_lists():
    from autoft.data import imagenet, shapes, wilds_tasks
    from autoft.losses import LOSS_NAMES
    from autoft.metrics import METRICS
    from autoft.reporting import wandb_logger

    assert set(config.METRIC_NAMES) == set(METRICS)
    assert config.SHAPES_DOMAINS == tuple(shapes.DOMAINS)
    assert config.LOSS_TERMS == tuple(LOSS_NAMES)
    assert config.CAPTION_NAMES == tuple(wilds_tasks.IWILDCAM_CAPTION_NAMES)
    assert config.IMAGENET_TESTS == tuple(imagenet.IMAGENET_TESTS)
    assert set(config.WANDB_MODES) == set(wandb_logger.MODES)


@pytest.mark.parametrize("dataset", options(CONF, "dataset"))
def test_builder_signature_read_from_source_equals_inspect(dataset):
    target = compose_config(f"dataset={dataset}").dataset.task._target_
    config.builder_signature.cache_clear()
    fast = config.builder_signature(target)  # the module may be imported already: compare both ways
    params = inspect.signature(get_method(target)).parameters.values()
    assert fast.params == tuple(p.name for p in params)
    assert fast.required == tuple(p.name for p in params if p.default is p.empty)
    module, _, name = target.rpartition(".")
    import importlib.util

    from_ast = config._signature_from_ast(importlib.util.find_spec(module).origin, name)
    assert from_ast == fast


def test_small_builders_instantiate(tmp_path):
    cfg = compose_config("dataset=tinyshapes", f"cache_dir={tmp_path}")
    assert len(cli.build_task(cfg).train) == 64
    cfg = compose_config("dataset=synthetic", "dataset.task.n_train=8", "dataset.task.n_val=4",
                         "dataset.task.n_ood_val=4", "dataset.task.n_test=4", "dataset.task.image_size=16")
    task = cli.build_task(cfg)
    assert len(task.train) == 8 and task.train.dataset[0][0].shape[-1] == 16


@pytest.mark.parametrize("dataset", ["iwildcam", "fmow", "imagenet", "cifar10"])
def test_data_builders_instantiate_on_fabricated_folders(tmp_path, dataset):
    from test_paper_benchmarks import BENCHMARKS

    make, extra, want = BENCHMARKS[dataset]
    make(tmp_path / "data")
    cfg = compose_config(f"dataset={dataset}", "model=tiny_vit", f"data_root={tmp_path / 'data'}",
                         f"cache_dir={tmp_path / 'cache'}", *extra)
    cli.preflight(cfg)  # validate + fit + build_task + weights, as the sweeper does before trial 0
    task = cli.build_task(cfg)
    assert task.id_test == want["id_test"] and len(task.ood_val) > 0


def test_other_targets_instantiate():
    import open_clip
    import optuna

    cfg = conftest.compose_config(*BASE, "search=autoft", "hydra/launcher=slurm", return_hydra_config=True)
    sampler = OmegaConf.to_container(cfg.hydra.sweeper.sampler, resolve=False)
    if "_target_" in sampler:  # the sweeper's sampler config (whatever group provides it) builds a sampler
        assert isinstance(instantiate({**sampler, "seed": 0}), optuna.samplers.BaseSampler)
    get_method(cfg.hydra.sweeper._target_)  # our sweeper
    assert get_method(cfg.hydra.launcher._target_.rsplit(".", 1)[0] + ".SlurmLauncher") is not None
    # model sources that need no download: a custom config builds, registry names are known
    for name in options(CONF, "model"):
        m = compose_config(f"model={name}").model
        if m.custom:
            cli.check_weights(m)
        elif m.arch:
            assert m.arch in open_clip.list_models()


def test_unknown_command_line_key_lists_the_valid_keys():
    msg = config.unknown_override(["trainer.batch_sizee=3"])
    assert "trainer.batch_sizee" in msg and "did you mean trainer.batch_size" in msg
    assert all(f.name in msg for f in dataclasses.fields(config.TrainerConf))
    assert config.unknown_override(["trainer.batch_size=3", "dataset.task.anything=1", "hydra.job.chdir=true",
                                    "search.losses=[dcm]", "+search.seeds_per_trial=2", "model=tiny_vit"]) is None


def test_shapes_builder_refuses_bad_arguments_itself():
    from autoft.data.shapes import shapes_task

    with pytest.raises(UserError, match=r"dataset.task.cue=1.5: must be a probability in \[0, 1\]"):
        shapes_task(cue=1.5)
    with pytest.raises(UserError, match="dataset.task.n_train=0"):
        shapes_task(n_train=0)
