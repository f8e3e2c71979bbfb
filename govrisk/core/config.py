"""Configs and the work folder: where every YAML file is found, how it is read and validated.

A config is named by kind and name (`contract/county`) or given as a path anywhere on disk. A name is
looked up along the search path, first match wins:

1. `./configs/<kind>/<name>.yaml` under the current directory;
2. each folder of `$GOVRISK_CONFIG_PATH` (separated by `os.pathsep`), as `<folder>/<kind>/<name>.yaml`;
3. the defaults packaged with govrisk (`govrisk.configs`, read with importlib.resources).

`govrisk config list` and `govrisk config show KIND NAME` say which file won. Generated data, runs and
models live in one git-ignored work folder (`$GOVRISK_WORK`, default `./runs`), never beside code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from govrisk.core.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)

KINDS = ("contract", "features", "generator", "model", "experiment", "search", "governance", "serving",
         "policy", "rating", "monitoring")  # fmt: skip
ENV_PATH = "GOVRISK_CONFIG_PATH"


class StrictModel(BaseModel):
    """The base of every config model: an unknown key is an error (a misspelt key never silently
    leaves the default in force) and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def work_dir() -> Path:
    """The work folder: `$GOVRISK_WORK` if set, else `./runs` under the current directory."""
    return Path(os.environ.get("GOVRISK_WORK", "runs")).resolve()


def packaged_configs() -> Path:
    """The folder of the packaged default configs."""
    root = resources.files("govrisk.configs")
    # A wheel installs as plain files (never zipped), so the resource root is a real folder.
    if not isinstance(root, Path):
        raise RuntimeError(f"govrisk.configs is not on the file system ({root!r}); reinstall govrisk")
    return root


def search_path() -> list[tuple[str, Path]]:
    """(source, folder) in the order names are looked up."""
    dirs = [("./configs", Path.cwd() / "configs")]
    dirs += [(ENV_PATH, Path(p)) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    return [*dirs, ("packaged", packaged_configs())]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidInput(f"unknown config kind {kind!r}; kinds: {', '.join(KINDS)}")


def is_path(name_or_path: str | Path) -> bool:
    """A path (has a YAML suffix or a separator), not a name to look up."""
    s = str(name_or_path)
    return Path(s).suffix in {".yaml", ".yml"} or os.sep in s or "/" in s


def config_path(kind: str, name_or_path: str | Path) -> Path:
    """Resolve `name_or_path` to a YAML file: a path as given, or the first `<kind>/<name>.yaml` on the
    search path. FileNotFoundError names what was looked for and where."""
    _check_kind(kind)
    if is_path(name_or_path):
        p = Path(name_or_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{kind} config file not found: {p}")
        return p
    for _, folder in search_path():
        candidate = folder / kind / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({e.name for e in list_configs(kind)})
    raise FileNotFoundError(f"no {kind} config named {name_or_path!r}; known: {', '.join(known) or 'none'}")


@dataclass(frozen=True)
class ConfigEntry:
    kind: str
    name: str
    path: Path
    source: str  # ./configs, GOVRISK_CONFIG_PATH or packaged
    shadowed: bool  # an earlier folder of the search path has the same kind and name


def list_configs(kind: str | None = None) -> list[ConfigEntry]:
    """Every config on the search path, in lookup order within each kind and name."""
    kinds = KINDS if kind is None else (kind,)
    for k in kinds:
        _check_kind(k)
    seen: set[tuple[str, str]] = set()
    rows = []
    for source, folder in search_path():
        for k in kinds:
            for p in sorted((folder / k).glob("*.yaml")):
                rows.append(ConfigEntry(k, p.stem, p, source, (k, p.stem) in seen))
                seen.add((k, p.stem))
    return sorted(rows, key=lambda e: (KINDS.index(e.kind), e.name, e.shadowed))


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping; a file that is not YAML, or not a mapping, is a ValueError naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidInput(f"{path}: not valid YAML{at}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def format_errors(e: ValidationError, prefix: str = "") -> str:
    """One line per error: the dotted key, the message and the value given."""
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def validate(model: type[M], raw: dict[str, Any], *, what: str, prefix: str = "") -> M:
    """`model.model_validate(raw)`, a ValidationError turned into a ValueError naming `what` and keys."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise InvalidInput(f"invalid {what}:\n{format_errors(e, prefix)}") from None


def load_config(kind: str, name_or_path: str | Path, model: type[M], **overrides: Any) -> M:
    """Find a config (see `config_path`), apply top-level overrides, validate it with `model`; a bad key
    or value raises ValueError naming the file and the key."""
    path = config_path(kind, name_or_path)
    return validate(model, read_yaml(path) | overrides, what=f"{kind} config {path}")


# --- dotted keys: command-line overrides and search spaces ----------------------------------------


def parse_override(item: str) -> tuple[str, Any]:
    """'model.params.trainer.max_epochs=3' -> ('model.params.trainer.max_epochs', 3)."""
    if "=" not in item:
        raise InvalidInput(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise InvalidInput(f"override {item!r}: empty key")
    try:
        return key, yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        raise InvalidInput(f"override {item!r}: the value is not YAML") from None


def get_dotted(raw: dict[str, Any], key: str) -> Any:
    """The value at a dotted key; KeyError(key) when any part is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key, creating sections; a part that is a value, not a section, is a ValueError."""
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidInput(f"key {key!r}: {part!r} is not a section")
    node[last] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides (values read as YAML) in place; returns `raw`."""
    for item in overrides:
        key, value = parse_override(item)
        try:
            set_dotted(raw, key, value)
        except ValueError as e:
            raise InvalidInput(f"override {item!r}: {e}") from None
    return raw
