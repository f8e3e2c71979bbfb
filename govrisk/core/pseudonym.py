"""Applicant pseudonyms: HMAC-SHA256 of the applicant id under a secret key that never lives in git.

The decision log stores `applicant_hash = HMAC-SHA256(key, "govrisk-applicant-v2:" + applicant id)`
(64 lower-case hex), never the id. Outcomes (`govrisk data outcomes`) and monitoring (`govrisk monitor
live`, `govrisk monitor book`) recompute it from the ids of a dataset to join on it, so they need the
same key. A plain salted sha256 (the salt in git) was reversible by enumerating the id space (5,000 of
5,000 in 0.16 s); without the key, a pseudonym says nothing about the id.

Where the key comes from (the loader of `govrisk.core.signing`, first match wins):

1. `GOVRISK_APPLICANT_KEY`: the key itself (>= 16 bytes; e.g. `openssl rand -hex 32`);
2. `GOVRISK_APPLICANT_KEY_FILE`: a secret file holding it (surrounding whitespace ignored).

Neither set: no default. The server refuses to start and the join commands stop, with one line
naming both variables. The demo (`scripts/demo.sh`) and the dev launcher create a 0600 key file in the
work folder (`demo_key_file`, git-ignored) and point `GOVRISK_APPLICANT_KEY_FILE` at it.

Rotation (docs/guides/governance.md): the new key goes in `GOVRISK_APPLICANT_KEY(_FILE)`; earlier keys
in `GOVRISK_APPLICANT_KEY_OLD_FILE` (one key per line) or `GOVRISK_APPLICANT_KEY_OLD` (one key). New
decisions are logged under the new key; the joins accept a log hash made under any of the keys (an
application matches whichever key its decision was logged with), so outcomes of decisions logged
before the rotation still join. `key_id` is the public fingerprint of each key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from govrisk.core.config import work_dir
from govrisk.core.signing import (
    MIN_KEY_BYTES,
    SigningKeyError,
    _read_key_file,
    create_key_file,
    key_id,
    read_secret,
)

KEY_ENV = "GOVRISK_APPLICANT_KEY"
KEY_FILE_ENV = "GOVRISK_APPLICANT_KEY_FILE"
OLD_KEY_ENV = "GOVRISK_APPLICANT_KEY_OLD"
OLD_KEY_FILE_ENV = "GOVRISK_APPLICANT_KEY_OLD_FILE"
PREFIX = b"govrisk-applicant-v2:"
MISSING = (
    f"no applicant pseudonym key: set ${KEY_ENV} or ${KEY_FILE_ENV} (a secret of >= {MIN_KEY_BYTES} bytes, "
    "e.g. `openssl rand -hex 32`; never in git); the demo creates one with scripts/demo.sh"
)


class Pseudonymizer:
    """`p(applicant_id)`: the pseudonym under the current key; `p.every(applicant_id)`: under each
    accepted key, current first (what a join matches a logged hash against)."""

    def __init__(self, key: bytes, old: Sequence[bytes] = ()) -> None:
        # HMAC state after the key, copied per id: a third of the cost of hmac.new per applicant
        self._macs = [hmac.new(k, PREFIX, hashlib.sha256) for k in (key, *old)]
        self.key_ids = [key_id(k) for k in (key, *old)]

    def __call__(self, applicant_id: str) -> str:
        m = self._macs[0].copy()
        m.update(applicant_id.encode())
        return m.hexdigest()

    def under_each_key(self) -> list[Callable[[str], str]]:
        """One pseudonym function per accepted key, the current one first."""
        return [Pseudonymizer._one(m) for m in self._macs]

    @staticmethod
    def _one(mac: hmac.HMAC) -> Callable[[str], str]:
        def f(applicant_id: str) -> str:
            m = mac.copy()
            m.update(applicant_id.encode())
            return m.hexdigest()

        return f

    def every(self, applicant_id: str) -> tuple[str, ...]:
        return tuple(f(applicant_id) for f in self.under_each_key())


def pseudonym_functions(hash_of: Callable[[str], str]) -> list[Callable[[str], str]]:
    """Every key's pseudonym function of `hash_of` (a Pseudonymizer), or `[hash_of]` for a plain one."""
    return hash_of.under_each_key() if isinstance(hash_of, Pseudonymizer) else [hash_of]


def load_applicant_key() -> bytes:
    """The current pseudonym key; SigningKeyError (one line, `MISSING`) when none is configured."""
    return read_secret(KEY_ENV, KEY_FILE_ENV, default_file=None, missing=MISSING)


def load_old_keys() -> list[bytes]:
    """Earlier keys still accepted by the joins (rotation), oldest last as listed."""
    keys = []
    if value := os.environ.get(OLD_KEY_ENV):
        keys.append(value.encode())
    if value := os.environ.get(OLD_KEY_FILE_ENV):
        text = _read_key_file(Path(value), source=f"${OLD_KEY_FILE_ENV}").decode()
        keys += [line.strip().encode() for line in text.splitlines() if line.strip()]
    for k in keys:
        if len(k) < MIN_KEY_BYTES:
            raise SigningKeyError(f"an old applicant key is shorter than {MIN_KEY_BYTES} bytes")
    return keys


def load_pseudonymizer(*, with_old: bool = True) -> Pseudonymizer:
    """The pseudonymizer of the configured keys (the server's: `with_old=False`, it only writes)."""
    return Pseudonymizer(load_applicant_key(), load_old_keys() if with_old else ())


def demo_key_file() -> Path:
    """The demo's and the dev launcher's generated key file: `<work>/secrets/applicant.key` (0600)."""
    return work_dir() / "secrets" / "applicant.key"


def ensure_demo_key() -> Path:
    """Create the demo key file if missing (32 random bytes, mode 0600) and return its path."""
    return create_key_file(demo_key_file())


if __name__ == "__main__":  # scripts/demo.sh: print the demo key file's path, creating it
    print(ensure_demo_key())
