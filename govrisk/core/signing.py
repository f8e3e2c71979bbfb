"""The integrity key: HMAC-SHA256 over model manifests and audit-log entries, with a key the model
store and the governance folder do not hold.

Where the key comes from, first match wins:

1. `GOVRISK_MODEL_KEY`: the key itself (any string; use >= 32 random bytes, e.g. `openssl rand -hex 32`).
2. `GOVRISK_MODEL_KEY_FILE`: the path of a secret file holding it (surrounding whitespace ignored).
3. Neither set (the demo): `<work>/secrets/model.key`, created once with 32 random bytes and mode
   0600, beside the model store (`<work>/bentoml`) and the governance folder, never inside them, and
   never in git (the work folder and `secrets/` are git-ignored).

Why the demo default is acceptable: it is one user on one machine, and the threats it is built for are
an edited or swapped file in the model store or the audit log (a bad copy, a careless edit, a process
that may write the store but is not given the secret). It does not hold against an attacker who can
read the work folder as the same user: such an attacker can read the key too. Production must not use
it: there the key comes from a secrets manager, mounted read-only (`GOVRISK_MODEL_KEY_FILE`) or injected
(`GOVRISK_MODEL_KEY`) into the processes that register, serve and audit, and it is not readable by
whoever can write the model store or the governance folder. `load_key` refuses a default key file that
group or others can read.

Rotation: `GOVRISK_MODEL_KEY_OLD` / `GOVRISK_MODEL_KEY_OLD_FILE` name the previous key, read only by
`govrisk models resign`, which verifies everything with the old key before signing it with the new one.

Each use has its own derived key (`purpose`), so a MAC made for a manifest is never valid as an audit
entry's and vice versa.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from govrisk.core.config import work_dir

KEY_ENV = "GOVRISK_MODEL_KEY"
KEY_FILE_ENV = "GOVRISK_MODEL_KEY_FILE"
OLD_KEY_ENV = "GOVRISK_MODEL_KEY_OLD"
OLD_KEY_FILE_ENV = "GOVRISK_MODEL_KEY_OLD_FILE"
MIN_KEY_BYTES = 16


class SigningKeyError(RuntimeError):
    """The integrity key is missing, unreadable or too short."""


def default_key_file() -> Path:
    return work_dir() / "secrets" / "model.key"


def _read_key_file(path: Path, *, source: str) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as e:
        raise SigningKeyError(f"{source}: cannot read the key file {path}: {e.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(f"{source}: the key in {path} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def create_key_file(path: Path) -> Path:
    """A new secret file of 32 random bytes (hex) with mode 0600, unless it exists; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_secret(env: str, file_env: str, *, default_file: Path | None, missing: str) -> bytes:
    """A secret key: `$env` itself, else the file named by `$file_env`, else `default_file` (created
    on first use, 0600, refused if group or others can read it); with no default, SigningKeyError
    with `missing` as its message. The one key loader of govrisk: the integrity key here, the
    applicant pseudonym key (`govrisk.core.pseudonym`)."""
    if value := os.environ.get(env):
        if len(value.encode()) < MIN_KEY_BYTES:
            raise SigningKeyError(f"${env} is shorter than {MIN_KEY_BYTES} bytes")
        return value.encode()
    if value := os.environ.get(file_env):
        return _read_key_file(Path(value), source=f"${file_env}")
    if default_file is None:
        raise SigningKeyError(missing)
    path = default_file
    if not path.exists():
        create_key_file(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"the key file {path} is accessible to group or others (mode {oct(mode & 0o777)}); chmod 600 it"
        )
    return _read_key_file(path, source="default key file")


def load_key(*, old: bool = False) -> bytes:
    """The current key (or, with `old`, the previous one, for rotation), as bytes."""
    if old:
        return read_secret(
            OLD_KEY_ENV,
            OLD_KEY_FILE_ENV,
            default_file=None,
            missing=f"set ${OLD_KEY_ENV} or ${OLD_KEY_FILE_ENV} to the key the store was signed with",
        )
    return read_secret(KEY_ENV, KEY_FILE_ENV, default_file=default_key_file(), missing="")


def _derived(key: bytes, purpose: str) -> bytes:
    return hmac.new(key, b"govrisk-key-v1:" + purpose.encode(), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key (which key signed this?); reveals nothing usable."""
    return _derived(key, "key-id").hex()[:16]


def canonical(obj: Any) -> bytes:
    """The bytes a MAC covers: JSON with sorted keys and no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(obj: Any, key: bytes, *, purpose: str) -> str:
    """Hex HMAC-SHA256 of `obj`'s canonical JSON under the `purpose` key derived from `key`."""
    return hmac.new(_derived(key, purpose), canonical(obj), hashlib.sha256).hexdigest()


def signature_ok(obj: Any, mac: Any, key: bytes, *, purpose: str) -> bool:
    """Constant-time check of a MAC made by `sign`."""
    return isinstance(mac, str) and hmac.compare_digest(sign(obj, key, purpose=purpose), mac)
