"""Every option of every config group composes against the schema (src/autoft/config.py), passes
`validate`'s value checks (autoft.config_checks), and every `_target_` it names resolves and accepts its keys (the cheap
builders are instantiated, the data builders on the fabricated miniatures of tests/fabricate.py, the
optimiser partial on real parameters). The budgets have one home: conf/budget/<dataset>_<model>.yaml,
chosen by the dataset and model (the mission's `dataset=iwildcam` alone runs the paper's setting)."""
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from autoft import cli, config, config_checks, config_messages, config_task, engine
from autoft.errors import UserError
import conftest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TEST_CONF = Path(__file__).resolve().parent / "conf"
BASE = ["device=cpu", "logger=local", "trainer.num_workers=0"]


def options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def compose_config(*overrides, return_hydra_config: bool = False):
    return conftest.compose_config(*BASE, *overrides, return_hydra_config=return_hydra_config)


EXPERIMENTS = options(CONF, "experiment") + options(TEST_CONF, "experiment")
# every YAML option of every group, in conf/ and in the test conf dir
CASES = ([("experiment", o) for o in EXPERIMENTS]
         + [("dataset", o) for o in options(CONF, "dataset")] + [("dataset", o) for o in options(TEST_CONF, "dataset")]
         + [(g, o) for g in ("model", "method", "trainer", "logger", "search") for o in options(CONF, g)]
         + [("search/warm_start", o) for o in options(CONF, "search/warm_start")]
         + [("hydra/launcher", o) for o in options(CONF, "hydra/launcher")])


BUDGETS = options(CONF, "budget") + options(TEST_CONF, "budget")
PAIRS = config_checks.preset_pairs((str(TEST_CONF),))  # {budget file: (dataset, model)}


def overrides_for(group: str, option: str) -> list[str]:
    if group == "search/warm_start":
        return ["search=autoft", f"search/warm_start={option}"]
    if group == "model":  # a model comes with a dataset it has budgets for, when it has one
        dataset = next((d for d, m in PAIRS.values() if m == option), None)
        return [f"dataset={dataset}", f"model={option}"] if dataset else [f"model={option}"]
    if (group, option) == ("dataset", "folder"):  # the one dataset whose domain roles the user must name
        return ["dataset=folder", "dataset.task.id_domain=a", "dataset.task.ood_val_domain=b",
                "dataset.task.test_domains=[c]"]
    return [f"{group}={option}"]  # a dataset comes with its own default model and their budgets


def test_every_group_has_options():
    groups = {g for g, _ in CASES}
    assert {"experiment", "dataset", "model", "method", "trainer", "logger", "search"} <= groups
    assert BUDGETS and set(BUDGETS) == set(PAIRS)


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config(*overrides_for(group, option))
    if group == "model" and option not in {m for _, m in PAIRS.values()}:  # no budgets yet: refused, with the way out
        assert config_checks.problems(cfg) == [config_checks.missing_budgets_problem(cfg)]
        assert f"write conf/budget/shapes_{option}.yaml" in config_checks.missing_budgets_problem(cfg)
        return
    assert config_checks.problems(cfg) == []
    # the trainer's optimiser partial builds an optimiser with the schedule's lr and weight decay
    opt = engine.make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.1, torch.device("cpu"),
                                engine.optimizer_factory(cfg.trainer.optimizer))
    assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 0.1
    # every schema'd group really is typed by its dataclass (unknown keys and bad types refused at compose)
    for name, schema in config.GROUP_SCHEMAS.items():
        assert OmegaConf.get_type(cfg, name) is schema, name
    # the dataset's builder accepts every key the YAML gives it
    task = OmegaConf.to_container(cfg.dataset.task, resolve=False)
    target = task.pop("_target_")
    inspect.signature(get_method(target)).bind_partial(**task)


@pytest.mark.parametrize("dataset", options(CONF, "dataset"))
def test_builder_signature_read_from_source_equals_inspect(dataset):
    target = compose_config(f"dataset={dataset}").dataset.task._target_
    config_task.builder_signature.cache_clear()
    fast = config_task.builder_signature(target)  # the module may be imported already: compare both ways
    params = inspect.signature(get_method(target)).parameters.values()
    assert fast.params == tuple(p.name for p in params)
    assert fast.required == tuple(p.name for p in params if p.default is p.empty)
    module, _, name = target.rpartition(".")
    import importlib.util

    from_ast = config_task._signature_from_ast(importlib.util.find_spec(module).origin, name)
    assert from_ast == fast


def test_small_builders_instantiate(tmp_path):
    cfg = compose_config("dataset=tinyshapes", f"cache_dir={tmp_path}")
    assert len(cli.build_task(cfg).train) == 64
    cfg = compose_config("dataset=synthetic", "model=tiny_vit", "dataset.task.n_train=8", "dataset.task.n_val=4",
                         "dataset.task.n_ood_val=4", "dataset.task.n_test=4", "dataset.task.image_size=16")
    task = cli.build_task(cfg)
    assert len(task.train) == 8 and task.train.dataset[0][0].shape[-1] == 16


@pytest.mark.parametrize("dataset", ["iwildcam", "fmow", "imagenet", "cifar10"])
def test_data_builders_instantiate_on_fabricated_folders(tmp_path, dataset):
    from test_paper_benchmarks import BENCHMARKS

    make, extra, want = BENCHMARKS[dataset]
    make(tmp_path / "data")
    cfg = compose_config(f"dataset={dataset}", "model=tiny_vit", f"data_root={tmp_path / 'data'}",
                         f"cache_dir={tmp_path / 'cache'}", "trainer.batch_size=4", *extra)  # a batch the miniature fills
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
    msg = config_messages.unknown_override(["trainer.batch_sizee=3"])
    assert "trainer.batch_sizee" in msg and "did you mean trainer.batch_size" in msg
    assert all(f.name in msg for f in dataclasses.fields(config.TrainerConf))
    assert config_messages.unknown_override(["trainer.batch_size=3", "dataset.task.anything=1", "hydra.job.chdir=true",
                                    "search.losses=[dcm]", "+search.seeds_per_trial=2", "model=tiny_vit"]) is None


def test_shapes_builder_refuses_bad_arguments_itself():
    from autoft.data.shapes import shapes_task

    with pytest.raises(UserError, match=r"dataset.task.cue=1.5: must be a probability in \[0, 1\]"):
        shapes_task(cue=1.5)
    with pytest.raises(UserError, match="dataset.task.n_train=0"):
        shapes_task(n_train=0)


# ------------------------------------------------------------------------------------------------
# the budgets: one home, conf/budget/<dataset>_<model>.yaml

@pytest.mark.parametrize("name", BUDGETS)
def test_every_budget_file_records_its_pair_and_sets_every_budget(name):
    dataset, model = PAIRS[name]
    if (dataset, model) == (None, None):  # the default of user datasets: any model, not calibrated
        cfg = compose_config("dataset=pacs", "model=tiny_vit")
        assert (cfg.budget.name, cfg.budget.calibrated) == (name, False) == ("user_data", False)
        assert not [k for k in config.BUDGET_KEYS if OmegaConf.is_missing(cfg.trainer, k)]
        return
    cfg = compose_config(f"dataset={dataset}", f"model={model}")
    b = cfg.budget
    assert (b.name, b.dataset, b.model) == (name, cfg.dataset.name, cfg.model.name) == (name, dataset, model)
    assert not [k for k in config.BUDGET_KEYS if OmegaConf.is_missing(cfg.trainer, k)]
    assert cfg.search.n_trials >= 1 and config_checks.problems(cfg) == []
    searched = compose_config(f"dataset={dataset}", f"model={model}", "search=autoft", return_hydra_config=True)
    assert searched.hydra.sweeper.n_trials == cfg.search.n_trials


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_is_the_pair_it_names(name):
    """experiment=<d>_<m> composes exactly what dataset=<d> model=<m> composes."""
    cfg = compose_config(f"experiment={name}")
    pair = compose_config(f"dataset={cfg.dataset.name}", f"model={cfg.model.name}")
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(pair)
    assert cfg.budget.name == config_checks.budget_for(cfg.dataset.name, cfg.model.name, (str(TEST_CONF),))


def test_budgets_live_only_in_the_budget_files():
    budget = re.compile(r"^\s*(base_lr|weight_decay|clip_grad_norm|batch_size|inner_steps|final_epochs|epochs|n_trials):",
                        re.M)
    for conf in (CONF, TEST_CONF):
        for path in conf.rglob("*.yaml"):
            assert not re.search(r"\$\{dataset\.(?!name\b)", path.read_text()), path  # no re-exports of dataset keys
        for group in ("dataset", "experiment"):
            for path in (conf / group).glob("*.yaml"):
                assert not budget.search(path.read_text()), path
        for path in (conf / "dataset").glob("*.yaml"):  # every dataset's default model has budgets
            cfg = compose_config(f"dataset={path.stem}")
            own = cfg.dataset.task._target_ not in ("autoft.data.folders.folder_task",  # user datasets: the default
                                                    "autoft.data.wilds_tasks.camelyon17")
            assert cfg.budget.name == (f"{path.stem}_{cfg.model.name}" if own else "user_data"), path
    trainer = OmegaConf.load(CONF / "trainer" / "default.yaml")
    assert not set(config.BUDGET_KEYS) & set(trainer)


def test_the_embedded_default_keeps_its_numbers():
    cfg = compose_config()
    t = cfg.trainer
    assert cfg.budget.name == "shapes_shapes_rn10t" and (cfg.dataset.name, cfg.model.name) == ("shapes", "shapes_rn10t")
    assert (t.base_lr, t.weight_decay, t.clip_grad_norm, t.batch_size, t.inner_steps, t.epochs) == \
        (1e-3, 0.1, 1.0, 64, 62, 2)
    s = compose_config("search=autoft", return_hydra_config=True)
    assert (s.phase, s.search.n_trials, s.hydra.sweeper.n_trials) == ("search", 16, 16)
    # one mechanism for the search's directory: hydra.sweep.dir of search=autoft wins over the primary's
    assert OmegaConf.to_container(s.hydra.sweep)["dir"] == "outputs/${dataset.name}/${model.name}/search-${method.name}"
    assert s.hydra.sweeper.sweep_dir is None and "phase" not in s.hydra.sweeper.params


# (dataset, its paper budgets: base_lr, weight_decay, batch_size, inner_steps, epochs, n_trials)
PAPER = {"iwildcam": (1e-5, 0.2, 256, 100, 20, 500), "fmow": (1e-5, 0.1, 256, 100, 20, 500),
         "imagenet": (1e-5, 0.1, 512, 5, 10, 100), "cifar10": (1e-5, 0.2, 256, 10, 20, 100)}


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_the_missions_command_runs_the_papers_setting(dataset):
    """`python train.py -m search=autoft dataset=<d>` composes what experiment=<d>_vit_b16 composes:
    the paper's backbone (ViT-B/16, OpenAI weights) and the reference budgets."""
    cfg = compose_config("search=autoft", f"dataset={dataset}", return_hydra_config=True)
    preset = compose_config("search=autoft", f"experiment={dataset}_vit_b16", return_hydra_config=True)
    plain = lambda c: {k: v for k, v in OmegaConf.to_container(c, resolve=False).items() if k != "hydra"}  # noqa: E731
    assert plain(cfg) == plain(preset)  # hydra's own record differs only in the overrides typed
    assert OmegaConf.to_container(cfg.hydra.sweeper) == OmegaConf.to_container(preset.hydra.sweeper)
    t = cfg.trainer
    assert (cfg.model.arch, cfg.model.pretrained, cfg.model.quick_gelu) == ("ViT-B-16", "openai", True)
    assert (t.base_lr, t.weight_decay, t.batch_size, t.inner_steps, t.epochs, cfg.search.n_trials) == PAPER[dataset]
    assert cfg.hydra.sweeper.n_trials == PAPER[dataset][-1] and cfg.phase == "search"
    assert config_checks.problems(compose_config("search=autoft", f"dataset={dataset}")) == []
    # another model with budgets for it is its pair's; one without is refused with the pairs that have them
    tiny = compose_config(f"dataset={dataset}", "model=tiny_vit")
    assert (tiny.budget.name, tiny.model.name, tiny.trainer.inner_steps) == (f"{dataset}_tiny_vit", "tiny_vit",
                                                                            PAPER[dataset][3])
    big = compose_config(f"dataset={dataset}", "model=vit_l14")
    assert config_checks.problems(big) == [
        f"trainer.base_lr, trainer.weight_decay, trainer.clip_grad_norm, trainer.batch_size, trainer.inner_steps, "
        f"trainer.epochs: not set for dataset={dataset} model=vit_l14: there is no conf/budget/{dataset}_vit_l14.yaml; "
        f"choose a pair with budgets: dataset={dataset} model=vit_b16 or dataset={dataset} model=tiny_vit; write "
        f"conf/budget/{dataset}_vit_l14.yaml (a `budget` block naming the pair, and its budgets)"]


def test_a_budget_file_of_another_pair_is_refused():
    cfg = compose_config("budget=iwildcam_vit_b16")  # the embedded default's dataset and model
    assert config_checks.problems(cfg) == [config_checks.pairing_problem(cfg)]
    assert config_checks.pairing_problem(cfg) == (
        "budget=iwildcam_vit_b16 sets the budgets (trainer.base_lr, batch_size, inner_steps, epochs, ..., "
        "search.n_trials) for dataset=iwildcam model=vit_b16, not for dataset=shapes model=shapes_rn10t; leave "
        "budget= out: this pair's own, shapes_shapes_rn10t, is chosen by itself")
    fit = compose_config("dataset=iwildcam", "model=shapes_rn10t")  # the embedded model cannot serve a real dataset
    assert config_checks.problems(fit) == [config_checks.model_fit_problem(fit)]
    assert "model=shapes_rn10t was built for autoft.data.shapes.shapes_task only" in config_checks.model_fit_problem(fit)


def test_the_optimiser_is_a_partial_any_torch_optimiser_may_fill():
    cfg = compose_config("trainer.optimizer._target_=torch.optim.SGD", "+trainer.optimizer.momentum=0.9")
    assert config_checks.problems(cfg) == []
    factory = engine.optimizer_factory(cfg.trainer.optimizer)
    opt = engine.make_optimizer([torch.nn.Parameter(torch.zeros(2))], 0.5, 0.01, torch.device("cpu"), factory)
    assert type(opt) is torch.optim.SGD and (opt.defaults["lr"], opt.defaults["momentum"]) == (0.5, 0.9)
    assert opt.defaults["weight_decay"] == 0.01 and opt.defaults["fused"] is True
    with pytest.raises(UserError, match="trainer.optimizer._target_=torch.optim.Nope"):
        engine.optimizer_factory({"_target_": "torch.optim.Nope", "_partial_": True})
