"""The model registry: BentoML's model store, inside the work folder, with lineage as metadata.

Every model is registered with `bentoml.models.create` (not the deprecated framework helpers): the
store entry holds the ONNX file, the feature schema, the metrics and the lineage.

Integrity: registration writes `manifest.json` into the model folder, the sha256 of every file in it
(all of STORE_FILES and the OPTIONAL_FILES present) and of BentoML's metadata, authenticated with
HMAC-SHA256 under the integrity key (`govrisk.core.signing`), which the store does not hold:

    {"format": "govrisk-model-manifest/1", "tag": "county-scorecard:<version>",
     "files": {"config.yaml": "<sha256>", "feature_schema.json": "<sha256>", ...},
     "metadata_sha256": "<sha256 of model.yaml's metadata as canonical JSON>",
     "key_id": "<fingerprint of the signing key>", "hmac_sha256": "<HMAC of all the above>"}

`verify_model` (behind `govrisk models verify`, `model_path(verify=True)`, reports, promotion and
monitoring) and `serving.models.LoadedModel` (on the very bytes it loads) recompute every digest and
the HMAC and raise TamperedModelError naming the file that differs. A file added to the folder, or
removed from it, is refused too; `model.yaml`'s `onnx_sha256` is informative only. A model registered
before manifests existed has no `manifest.json` and is refused with how to register it again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from govrisk.core import signing
from govrisk.core.config import work_dir
from govrisk.core.errors import UnknownName
from govrisk.core.hashing import sha256_bytes, sha256_file, sha256_json

PROJECT_LABEL = "govrisk"
KEY_METRICS = ("val/auroc", "oot/auroc", "oot/ks", "oot/brier")
STORE_FILES = ("model.onnx", "feature_schema.json", "metrics.json", "lineage.json", "config.yaml")
OPTIONAL_FILES = ("scorecard.csv", "reason_codes.json")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "govrisk-model-manifest/1"
MANIFEST_PURPOSE = "model-manifest"
BENTOML_FILES = ("model.yaml",)  # written by BentoML itself; its metadata is covered by metadata_sha256
PACKAGES = ("govrisk", "numpy", "pandas", "pyarrow", "scikit-learn", "optbinning", "torch", "lightning",
            "torchmetrics", "onnx", "onnxruntime", "bentoml")  # fmt: skip


class TamperedModelError(RuntimeError):
    """A model's files or manifest differ from what was signed when it was registered."""


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
        write_manifest(Path(model.path), str(model.tag), meta, signing.load_key())
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


def _get(tag: str) -> Any:
    bentoml = _bentoml()
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise UnknownName(f"no model {tag!r} in the store at {os.environ['BENTOML_HOME']}") from None


def model_path(tag: str, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """A registered model's folder and metadata; with `verify`, every file must match its signed
    manifest (`verify_model`). Code that then reads the files should use `load_verified` instead,
    which checks the bytes it returns."""
    model = _get(tag)
    path = Path(model.path)
    meta = dict(model.info.metadata)
    if verify:
        verify_model(tag)
    return path, meta


# --- the signed manifest ------------------------------------------------------------------------------


def _key(tag: str, key: bytes | None) -> bytes:
    if key is not None:
        return key
    try:
        return signing.load_key()
    except signing.SigningKeyError as e:
        raise TamperedModelError(f"{tag}: cannot check the manifest: {e}") from None


def folder_files(folder: Path) -> list[str]:
    """The files of a model folder that its manifest must list (all but the manifest and model.yaml)."""
    skip = {MANIFEST, MANIFEST + ".tmp", *BENTOML_FILES}
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in skip
    )


def manifest_body(folder: Path, tag: str, meta: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The unsigned manifest of a model folder as it is now."""
    return {
        "format": MANIFEST_FORMAT,
        "tag": tag,
        "files": {name: sha256_file(folder / name) for name in folder_files(folder)},
        "metadata_sha256": sha256_json(meta),
        "key_id": signing.key_id(key),
    }


def write_manifest(folder: Path, tag: str, meta: dict[str, Any], key: bytes) -> dict[str, Any]:
    """Digest every file of `folder`, sign the lot with `key`, write `manifest.json` atomically."""
    body = manifest_body(folder, tag, meta, key)
    manifest = body | {"hmac_sha256": signing.sign(body, key, purpose=MANIFEST_PURPOSE)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path, tag: str, *, key: bytes | None = None) -> dict[str, Any]:
    """`folder`'s manifest once its signature, format and tag check out (TamperedModelError if not)."""
    path = folder / MANIFEST
    if not path.exists():
        raise TamperedModelError(
            f"{tag}: no signed manifest ({MANIFEST}): it was registered before model manifests existed "
            f"or the manifest was deleted; register it again: govrisk train --config {folder / 'config.yaml'}"
        )
    try:
        manifest = json.loads(path.read_bytes())
        body = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
        mac = manifest.get("hmac_sha256")
    except (ValueError, AttributeError):
        raise TamperedModelError(f"{tag}: {MANIFEST} is not a JSON object; the manifest was edited") from None
    key = _key(tag, key)
    if not signing.signature_ok(body, mac, key, purpose=MANIFEST_PURPOSE):
        signed_by = body.get("key_id")
        raise TamperedModelError(
            f"{tag}: manifest signature does not match: the manifest was edited or the key differs "
            f"(signed by key {signed_by}, current key {signing.key_id(key)})"
        )
    if body.get("format") != MANIFEST_FORMAT or not isinstance(body.get("files"), dict):
        raise TamperedModelError(
            f"{tag}: {MANIFEST} format {body.get('format')!r} is not {MANIFEST_FORMAT!r}"
        )
    resolved = f"{folder.parent.name}:{folder.name}"
    if body.get("tag") != resolved:
        raise TamperedModelError(f"{tag}: the manifest was signed for {body.get('tag')!r}, not {resolved!r}")
    return manifest


def check_bytes(tag: str, manifest: dict[str, Any], name: str, data: bytes) -> None:
    """TamperedModelError unless `data` (the content of file `name`) has the digest the manifest signed."""
    expected = manifest["files"].get(name)
    if expected is None:
        raise TamperedModelError(f"{tag}: {name} is not in the signed manifest; refusing to load it")
    actual = sha256_bytes(data)
    if actual != expected:
        raise TamperedModelError(f"{tag}: {name} sha256 {actual} != manifest {expected}; refusing to load it")


def _check_listing(tag: str, folder: Path, manifest: dict[str, Any]) -> None:
    present, listed = set(folder_files(folder)), set(manifest["files"])
    for name in sorted(listed - present):
        raise TamperedModelError(f"{tag}: {name} is missing; the signed manifest lists it")
    for name in sorted(present - listed):
        raise TamperedModelError(f"{tag}: {name} is not in the signed manifest; refusing the model")


def _check_metadata(tag: str, manifest: dict[str, Any], meta: dict[str, Any]) -> None:
    actual = sha256_json(meta)
    if actual != manifest["metadata_sha256"]:
        raise TamperedModelError(
            f"{tag}: model.yaml metadata sha256 {actual} != manifest {manifest['metadata_sha256']}"
        )


def load_verified(
    tag: str, *, key: bytes | None = None
) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """A registered model's folder, metadata, signed manifest and the bytes of every file in it, each
    checked against the manifest: callers use these bytes, never a second read of the file."""
    model = _get(tag)
    folder, meta = Path(model.path), dict(model.info.metadata)
    manifest = read_manifest(folder, tag, key=key)
    _check_listing(tag, folder, manifest)
    contents = {}
    for name in sorted(manifest["files"]):
        data = (folder / name).read_bytes()
        check_bytes(tag, manifest, name, data)
        contents[name] = data
    _check_metadata(tag, manifest, meta)
    return folder, meta, manifest, contents


def verify_model(tag: str, *, key: bytes | None = None) -> dict[str, Any]:
    """Check every file, the metadata and the manifest's signature; returns the manifest."""
    model = _get(tag)
    folder, meta = Path(model.path), dict(model.info.metadata)
    manifest = read_manifest(folder, tag, key=key)
    _check_listing(tag, folder, manifest)
    for name in sorted(manifest["files"]):
        actual = sha256_file(folder / name)
        if actual != manifest["files"][name]:
            raise TamperedModelError(
                f"{tag}: {name} sha256 {actual} != manifest {manifest['files'][name]}; refusing to load it"
            )
    _check_metadata(tag, manifest, meta)
    return manifest


def resign_model(tag: str, *, old_key: bytes, new_key: bytes) -> dict[str, Any]:
    """Key rotation for one model: verify it in full with `old_key`, then sign the same digests with
    `new_key` (the files are not re-read after the check). See `govrisk models resign`."""
    manifest = verify_model(tag, key=old_key)
    model = _get(tag)
    body = {k: v for k, v in manifest.items() if k != "hmac_sha256"} | {"key_id": signing.key_id(new_key)}
    signed = body | {"hmac_sha256": signing.sign(body, new_key, purpose=MANIFEST_PURPOSE)}
    folder = Path(model.path)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(signed, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return signed
