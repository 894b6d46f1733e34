"""train.py's messages for a bad command line or config file: a misspelt key named with the valid
keys of its node (`unknown_override`, before Hydra composes; `unknown_keys`, of a composed config),
and Hydra's composition errors in one line each (`composition_error`: the key, its value and the
expected type, a YAML file's line, a missing group option with the available ones).
"""
import re
import typing
from dataclasses import fields, is_dataclass
from typing import Optional

from omegaconf import DictConfig

from autoft.config import RootConf
from autoft.values import show


# ----------------------------------------------------------------------------------------------
# unknown keys: a misspelt key is named with the valid ones (on the command line before Hydra composes)
# ----------------------------------------------------------------------------------------------
def _schema_keys(path: list[str]) -> Optional[tuple[str, tuple]]:
    """(where, valid keys) for the node a key path lands in, or None when that node is free-form."""
    schema, where = RootConf, ""
    for part in path[:-1]:
        sub = {f.name: f for f in fields(schema)}.get(part)
        if sub is None:
            return None
        if not is_dataclass(sub.type):
            return None  # a free-form node (dataset.task, model.build, search, ...)
        schema, where = sub.type, f"{where}.{part}" if where else part
    return where, tuple(f.name for f in fields(schema))


def unknown_keys(cfg) -> list[str]:
    """`unknown key ...; valid keys of <node>: ...` for every key of a schema node that its
    dataclass does not declare (free-form nodes such as dataset.task and search are skipped)."""
    found = []

    def walk(node, schema, where: str) -> None:
        declared = {f.name: f for f in fields(schema)}
        extra = [k for k in node.keys() if k not in declared]
        if extra:
            found.append(f"unknown config key{'s' if len(extra) > 1 else ''} "
                         f"{', '.join((where + '.' if where else '') + str(k) for k in extra)}; "
                         f"valid keys of {where or 'the root config'}: {', '.join(declared)}")
        for k, f in declared.items():
            if is_dataclass(f.type) and isinstance(node.get(k), (dict, DictConfig)):
                walk(node.get(k), f.type, f"{where}.{k}" if where else k)

    walk(cfg, RootConf, "")
    return found


def unknown_override(args: list[str]) -> Optional[str]:
    """The message for the first command-line override (key=value, +key=value) whose key is not in
    the schema, or None. Group choices (model=...), hydra.* and free-form nodes are left to Hydra."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "@" in key or not re.fullmatch(r"[A-Za-z_][\w.]*", key) or "." not in key:
            continue
        path = key.split(".")
        if path[0] == "hydra":
            continue
        found = _schema_keys(path)
        if found is None:
            continue
        where, valid = found
        if path[-1] not in valid:
            close = [v for v in valid if _similar(v, path[-1])]
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            return f"unknown config key {key}{hint}; valid keys of {where}: {', '.join(valid)}"
    return None


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _schema_field(path: list[str]):
    """The dataclass field a key path names, or None (free-form nodes, unknown keys)."""
    schema, found = RootConf, None
    for part in path:
        if schema is None:
            return None
        found = {f.name: f for f in fields(schema)}.get(part)
        if found is None:
            return None
        schema = found.type if is_dataclass(found.type) else None
    return found


def expected_type(tp) -> str:
    """A field's type in words: 'an integer', 'null or a number', 'true or false', ..."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return "null or " + expected_type(args[0])
    origin = typing.get_origin(tp) or tp
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list [a, b, ...]",
             dict: "a mapping {key: value, ...}"}
    return words.get(origin, getattr(origin, "__name__", str(origin)))


def _source(err: BaseException) -> str:
    """Where Hydra met the problem: ' in <group>/<option>.yaml' or ' on the command line'."""
    first = str(err).splitlines()[0] if str(err) else ""
    m = re.match(r"In '([^']+)'", first)
    if m and m.group(1) != "config":
        return f" in {m.group(1)}.yaml"
    if m:
        return " in config.yaml"
    return " on the command line" if first.startswith(("Error merging override", "Could not override")) else ""


def composition_error(err: BaseException) -> str:
    """One line for an error raised while Hydra composes the config: the key, its value and the
    expected type, or the valid keys of the node; a YAML file that does not parse is named with the
    line; a missing group option with the available ones."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    where = _source(err)
    for e in _causes(err):
        key = getattr(e, "full_key", None)
        if key and isinstance(e, ValidationError):
            f = _schema_field(str(key).split("."))
            allowed = expected_type(f.type) if f is not None else "of the schema's type"
            return f"{key}={show(getattr(e, 'value', None))}{where}: must be {allowed}"
        if key and isinstance(e, (ConfigKeyError, AttributeError)):
            path = str(key).split(".")
            found = _schema_keys(path)
            if found is None:
                node = ".".join(path[:-1])
                return (f"{key}{where}: {node or 'the root config'} has no key {path[-1]}; to add one to this free-form "
                        f"node write +{key}=<value>")
            node, valid = found
            close = [v for v in valid if _similar(v, path[-1])]
            hint = f" (did you mean {node}.{close[0]}?)" if close else ""
            return f"unknown config key {key}{where}{hint}; valid keys of {node or 'the root config'}: {', '.join(valid)}"
        if type(e).__module__.startswith("yaml"):
            mark = getattr(e, "problem_mark", None)
            at = f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            return f"{at}: not valid YAML ({getattr(e, 'problem', None) or ' '.join(str(e).split())}); fix the file"
        if type(e).__name__ == "MissingConfigException":
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            options = [ln for ln in lines[2:] if not ln.startswith(("provider=", "Config search path", "base_"))]
            first = re.sub(r"^In '[^']+': ", "", lines[0])
            return f"{first}; available: {', '.join(options)}" if options else first
    return " ".join(str(err).split())
