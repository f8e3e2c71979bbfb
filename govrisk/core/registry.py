"""The model registry: BentoML's model store, inside the work folder, with lineage as metadata.

Every model is registered with `bentoml.models.create` (not the deprecated framework helpers): the
store entry holds the ONNX file, the feature schema, the metrics and the lineage, and its metadata
records the ONNX file's sha256 so that anything loading it can refuse a file that was changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from govrisk.core.config import work_dir
from govrisk.core.hashing import sha256_file

PROJECT_LABEL = "govrisk"
KEY_METRICS = ("val/auroc", "oot/auroc", "oot/ks", "oot/brier")
STORE_FILES = ("model.onnx", "feature_schema.json", "metrics.json", "lineage.json", "config.yaml")
OPTIONAL_FILES = ("scorecard.csv", "reason_codes.json")
PACKAGES = ("govrisk", "numpy", "pandas", "pyarrow", "scikit-learn", "optbinning", "torch", "lightning",
            "torchmetrics", "onnx", "onnxruntime", "bentoml")  # fmt: skip


class TamperedModelError(RuntimeError):
    """A model file's sha256 differs from the one recorded when it was registered."""


def verify_file(path: str | Path, expected_sha256: str) -> None:
    """Raise TamperedModelError unless the file's sha256 is the expected one."""
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise TamperedModelError(
            f"{path}: sha256 {actual} != registered {expected_sha256}; refusing to load it"
        )


def _bentoml() -> Any:
    # The store lives in the work folder, never in the home directory or beside the code.
    os.environ.setdefault("BENTOML_HOME", str(work_dir() / "bentoml"))
    import bentoml

    return bentoml


def git_commit() -> str:
    """HEAD of the checkout this code runs from, with '+dirty' when there are uncommitted changes;
    'installed' when govrisk runs from an installed wheel rather than a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "installed"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage(*, data_hash: str, config_hash: str, seed: int, dataset: str) -> dict[str, Any]:
    """Where a model came from: data, config, code, packages, seed."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "dataset": dataset,
        "data_hash": data_hash,
        "config_hash": config_hash,
        "git_commit": git_commit(),
        "seed": seed,
        "python": sys.version.split()[0],
        "packages": versions,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def register(
    run_dir: Path, *, name: str, kind: str, metrics: dict[str, float], lineage_: dict[str, Any]
) -> str:
    """Copy a run's artefacts into the model store; returns the model tag ('name:version')."""
    bentoml = _bentoml()
    missing = [f for f in STORE_FILES if not (run_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"run folder {run_dir} lacks {missing}; cannot register")
    meta = {
        "kind": kind,
        "onnx_sha256": sha256_file(run_dir / "model.onnx"),
        "data_hash": lineage_["data_hash"],
        "config_hash": lineage_["config_hash"],
        "git_commit": lineage_["git_commit"],
        "dataset": lineage_["dataset"],
        "run_dir": str(run_dir),
        "metrics": {k: float(v) for k, v in metrics.items() if k in KEY_METRICS},
    }
    with bentoml.models.create(name, labels={"project": PROJECT_LABEL, "kind": kind}, metadata=meta) as model:
        for f in (*STORE_FILES, *OPTIONAL_FILES):
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, model.path_of(f))
    return str(model.tag)


def list_models() -> list[dict[str, Any]]:
    """Every govrisk model in the store, newest first."""
    bentoml = _bentoml()
    rows = []
    for m in bentoml.models.list():
        if m.info.labels.get("project") != PROJECT_LABEL:
            continue
        meta = m.info.metadata
        rows.append({
            "tag": str(m.tag),
            "name": m.tag.name,
            "version": m.tag.version,
            "kind": meta.get("kind"),
            "created": m.info.creation_time.isoformat(timespec="seconds"),
            "metrics": meta.get("metrics", {}),
            "data_hash": meta.get("data_hash", ""),
            "path": m.path,
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def model_path(tag: str, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """A registered model's folder and metadata; with `verify`, its ONNX file must match its hash."""
    bentoml = _bentoml()
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise KeyError(f"no model {tag!r} in the store at {os.environ['BENTOML_HOME']}") from None
    path = Path(model.path)
    meta = dict(model.info.metadata)
    if verify:
        verify_file(path / "model.onnx", meta["onnx_sha256"])
    return path, meta
