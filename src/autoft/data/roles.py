"""The roles of the domains of a folder dataset (`autoft.data.folders`): which are ID, OOD-val and
tests, and the names a domain may not take. Free of torch and numpy, so that the config's check
(autoft.config_task) refuses bad roles in a second, before any data is listed.
"""
from __future__ import annotations

from typing import Optional

ID_SPLITS = ("train", "id_val", "id_test")
# split and column names a domain may not take: its test split would shadow them in results and tables
RESERVED_NAMES = frozenset({"train", "id_val", "ood_val", "id_test", "id", "ood_mean", "pool", "seeds", "method"})
TEMPLATE_SETS = ("openai", "simple", "photo")  # autoft.data.folders.templates_of


def as_domains(value) -> list[str]:
    """One domain or a list of them, as a list of names."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, int)) else [str(v) for v in value]


def roles_problem(id_domain, ood_val_domain, test_domains) -> Optional[str]:
    """What is wrong with the domain roles alone (no disk needed), or None."""
    ids, vals, tests = as_domains(id_domain), as_domains(ood_val_domain), as_domains(test_domains)
    for key, names in (("id_domain", ids), ("ood_val_domain", vals), ("test_domains", tests)):
        if not names:
            return f"dataset.task.{key} is empty: name a domain (or a list of domains)"
        reserved = [d for d in names if d in RESERVED_NAMES]
        if reserved:
            return (f"dataset.task.{key}: the domain name {reserved[0]!r} is a split or table column name "
                    f"({', '.join(sorted(RESERVED_NAMES))}); rename the folder (or the manifest's domain)")
    overlap = sorted(set(vals) & set(tests))
    if overlap:
        return (f"dataset.task: OOD-val domain {overlap[0]!r} is also a test domain; the search must never see a "
                f"test domain: remove it from dataset.task.test_domains or choose another ood_val_domain")
    every = [*ids, *vals, *tests]
    twice = sorted({d for d in every if every.count(d) > 1})
    if twice:
        return (f"dataset.task: domain {twice[0]!r} is used twice (id_domain={ids}, ood_val_domain={vals}, "
                f"test_domains={tests}); each domain has one role")
    return None




def templates_problem(templates) -> Optional[str]:
    """What is wrong with dataset.task.templates, or None: a name of TEMPLATE_SETS, or a non-empty
    list of strings each with '{}' (or '{c}', '{a_c}') where the class name goes."""
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return None
        return (f"dataset.task.templates={templates}: must be one of {', '.join(TEMPLATE_SETS)} or a list of "
                f"templates such as ['a photo of a {{}}.']")
    out = list(templates) if isinstance(templates, (list, tuple)) else []
    bad = [t for t in out if not (isinstance(t, str) and any(p in t for p in ("{}", "{c}", "{a_c}")))]
    if not out or bad:
        return ("dataset.task.templates: each template needs '{}' where the class name goes"
                + (f"; {bad[0]!r} has none" if bad else "; the list is empty"))
    return None
