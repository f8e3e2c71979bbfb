"""sha256 digests: of files (models, datasets, reports) and of canonical JSON (configs, records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (model and dataset files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of `obj` as canonical JSON (sorted keys): equal content, equal digest."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())
