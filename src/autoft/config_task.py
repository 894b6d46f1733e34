"""dataset.task's checks: its keys from the task builder's signature, its values from one rule per
argument name (TASK_ARGUMENT_RULES), and the domain roles of the shapes and folder builders.

The builder's signature is read from its module's source (`builder_signature`) when the module is
not imported yet, so that a bad task is refused before torch and the dataset libraries are imported.
"""
import ast
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from autoft.data.roles import roles_problem, templates_problem
from autoft.errors import UserError
from autoft.names import (FOLDER_TARGET, IMAGENET_TARGET, IMAGENET_TESTS, IWILDCAM_CAPTION_NAMES, METRIC_NAMES,
                          SHAPES_DOMAINS, SHAPES_TARGET)
from autoft.values import plain, show


def _check_positive_int(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "an integer >= 1"


def _check_optional_positive_int(v) -> Optional[str]:
    return None if v is None or _check_positive_int(v) is None else "null or an integer >= 1"


def _check_seed(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "an integer >= 0"


def _check_probability(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0
    return None if ok else "a probability in [0, 1]"


def _check_optional_probability(v) -> Optional[str]:
    return None if v is None or _check_probability(v) is None else "null or a probability in [0, 1]"


def _check_open_fraction(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < float(v) < 1.0
    return None if ok else "a fraction in (0, 1)"


def _check_severity(v) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 else "an integer in 1..5"


def _one_of(valid):
    def check(v) -> Optional[str]:
        return None if v in valid else f"one of {', '.join(valid)}"
    return check


def _subset_of(valid):
    def check(v) -> Optional[str]:
        ok = isinstance(v, (list, tuple)) and all(x in valid for x in v)
        return None if ok else f"a list of {', '.join(valid)}"
    return check


# Allowed values of the task builders' arguments, by argument name (the same name means the same
# thing in every builder). Keys not listed are checked by the builder itself.
TASK_ARGUMENT_RULES = {
    "n_train": _check_positive_int, "n_val": _check_positive_int, "n_test": _check_positive_int,
    "n_ood_val": _check_positive_int, "image_size": _check_positive_int,
    "num_classes": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= 2 else "an integer >= 2",
    "ood_val_size": _check_optional_positive_int,
    "seed": _check_seed, "subset_seed": _check_seed, "split_seed": _check_seed,
    "cue": _check_probability,                     # P(background colour = the class's own) in the ID domain
    "test_cue": _check_optional_probability,       # the same in the OOD domains (null: independent)
    "id_val_fraction": _check_open_fraction, "id_test_fraction": _check_open_fraction,
    "severity": _check_severity,
    "caption_names": _one_of(IWILDCAM_CAPTION_NAMES),
    "metric": _one_of(METRIC_NAMES),
    "cifar102_train": lambda v: None if isinstance(v, bool) else "true or false",  # also test on the reference's file
}


@dataclass(frozen=True)
class BuilderSignature:
    params: tuple        # every named parameter
    required: tuple      # parameters without a default
    var_keyword: bool    # accepts **kwargs


def _signature_from_ast(path: str, name: str) -> Optional[BuilderSignature]:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            n_req = len(positional) - len(a.defaults)
            required = [p.arg for p in positional[:n_req]]
            required += [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
            return BuilderSignature(tuple(p.arg for p in [*positional, *a.kwonlyargs]), tuple(required),
                                    a.kwarg is not None)
    return None


@lru_cache(maxsize=None)
def builder_signature(target: str) -> BuilderSignature:
    """The parameters of a `_target_` (module.function). Read from the module's source when it is
    not imported yet (no heavy imports); otherwise, or for classes and re-exports, from
    inspect.signature."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise UserError(f"dataset.task._target_={target}: not a dotted path module.function")
    if module_name not in sys.modules:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise UserError(f"dataset.task._target_={target}: no module named {module_name}; "
                            f"it must name a task builder, e.g. {SHAPES_TARGET}")
        if spec.origin and spec.origin.endswith(".py"):
            sig = _signature_from_ast(spec.origin, attr)
            if sig is not None:
                return sig
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"dataset.task._target_={target} does not resolve ({type(err).__name__}: {err}); "
                        f"it must name a task builder, e.g. {SHAPES_TARGET}") from None
    params = inspect.signature(obj).parameters.values()
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return BuilderSignature(tuple(p.name for p in named), tuple(p.name for p in named if p.default is p.empty),
                            any(p.kind == p.VAR_KEYWORD for p in params))


def task_problems(task) -> list[str]:
    """Every problem of dataset.task (empty: valid)."""
    if not isinstance(task, (dict, DictConfig)):
        return [f"dataset.task={task}: must be a mapping with _target_ (a task builder) and its arguments"]
    target = task.get("_target_")
    if not isinstance(target, str) or not target:
        return ["dataset.task._target_ is missing: name the task builder, e.g. _target_: " + SHAPES_TARGET]
    sig = builder_signature(target)
    keys = [k for k in task.keys() if not str(k).startswith("_")]
    problems = []
    unknown = [k for k in keys if k not in sig.params]
    if unknown and not sig.var_keyword:
        problems.append(f"dataset.task: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} "
                        f"for {target}; valid keys: {', '.join(sig.params)}")
    missing = [p for p in sig.required if p not in keys]
    if missing:
        problems.append(f"dataset.task: {target} needs {', '.join(missing)}; add dataset.task.{missing[0]}=...")
    for k in keys:
        rule = TASK_ARGUMENT_RULES.get(k)
        value = task.get(k)
        if rule is not None and k in sig.params:
            allowed = rule(plain(value))
            if allowed:
                problems.append(f"dataset.task.{k}={show(value)}: must be {allowed}")
    if target == SHAPES_TARGET:
        problems += _shapes_domain_problems(task)
    if target == FOLDER_TARGET:
        problems += _folder_problems(task)
    if target == IMAGENET_TARGET and "tests" in keys:
        allowed = _subset_of(IMAGENET_TESTS)(plain(task.get("tests")))
        if allowed:
            problems.append(f"dataset.task.tests={show(task.get('tests'))}: must be {allowed}")
    return problems


def _shapes_domain_problems(task) -> list[str]:
    problems = []
    domains = {}
    for k, default in (("id_domain", "studio"), ("ood_val_domain", "garden")):
        domains[k] = plain(task.get(k, default))
        # ood_val_domain may also be a list: a class-balanced mixture of those domains
        named = domains[k] if k == "ood_val_domain" and isinstance(domains[k], list) and domains[k] else [domains[k]]
        if any(d not in SHAPES_DOMAINS for d in named):
            also = " (or a non-empty list of them)" if k == "ood_val_domain" else ""
            problems.append(f"dataset.task.{k}={show(domains[k])}: not a shapes domain{also}; "
                            f"valid: {', '.join(SHAPES_DOMAINS)}")
    tests = plain(task.get("test_domains", ["snow", "night", "fog", "clutter"]))
    if not isinstance(tests, list) or not tests or any(d not in SHAPES_DOMAINS for d in tests):
        problems.append(f"dataset.task.test_domains={show(tests)}: must be a non-empty list of shapes domains; "
                        f"valid: {', '.join(SHAPES_DOMAINS)}")
    elif not problems:
        val = domains["ood_val_domain"]
        every = [domains["id_domain"], *(val if isinstance(val, list) else [val]), *tests]
        if len(set(every)) != len(every):
            problems.append(f"dataset.task: id_domain={domains['id_domain']}, ood_val_domain={domains['ood_val_domain']} "
                            f"and test_domains={show(tests)} must all differ")
    return problems


def _folder_problems(task) -> list[str]:
    """The domain roles and the templates of a folder dataset, before any folder is listed."""
    problems = []
    roles = roles_problem(*(plain(task.get(k)) for k in ("id_domain", "ood_val_domain", "test_domains")))
    if roles:
        problems.append(roles)
    templates = templates_problem(plain(task.get("templates", "openai")))
    if templates:
        problems.append(templates)
    if not task.get("root"):
        problems.append("dataset.task.root is not set: set data_root=<folder> (or dataset.task.root)")
    return problems
