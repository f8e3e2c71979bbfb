"""Where generated data, runs and models live: one git-ignored work folder, never beside code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


class StrictModel(BaseModel):
    """The base of every config model: an unknown key is an error (a misspelt key never silently
    leaves the default in force) and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def work_dir() -> Path:
    """The work folder: `$GOVRISK_WORK` if set, else `./runs` under the current directory."""
    return Path(os.environ.get("GOVRISK_WORK", "runs")).resolve()


def config_path(kind: str, name_or_path: str | Path) -> Path:
    """Resolve `name_or_path` to a YAML file: a path that exists, or `configs/<kind>/<name>.yaml`."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    candidate = CONFIGS / kind / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in (CONFIGS / kind).glob("*.yaml"))
        raise FileNotFoundError(f"no {kind} config named {name_or_path!r}; known: {known}")
    return candidate


def load_config(kind: str, name_or_path: str | Path, model: type[M], **overrides: Any) -> M:
    """Read `configs/<kind>/<name>.yaml` (or a path), apply top-level overrides, validate with the
    pydantic `model`; a bad key or value raises ValueError naming the file and the key."""
    path = config_path(kind, name_or_path)
    raw = (yaml.safe_load(path.read_text()) or {}) | overrides
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"invalid {kind} config {path}:\n{e}") from None
