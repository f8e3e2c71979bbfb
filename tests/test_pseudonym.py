"""Applicant pseudonyms (issue 14, item 9): HMAC-SHA256 under a secret key, not reversible by
enumerating the id space; no key, no start; rotation keeps the outcome joins working."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.core import pseudonym
from govrisk.core.pseudonym import Pseudonymizer, load_pseudonymizer
from govrisk.core.signing import SigningKeyError
from govrisk.data.outcomes import play_forward, read_outcomes
from govrisk.data.store import read_dataset
from govrisk.serving.config import load_serving_config
from govrisk.serving.engine import applicant_hash

OLD_SALT = "govrisk-applicant-v1"  # the public salt of the salted sha256 the log used to store


def test_logged_pseudonyms_are_not_reversed_by_enumerating_the_ids() -> None:
    """5,000 pseudonyms, the whole id space (C00000001..C00010000) enumerated: with the public salt
    every one was found in 0.16 s; under the key, none is (the attacker holds no key)."""
    ids = [f"C{i:08d}" for i in range(1, 5001)]
    logged = {applicant_hash(i, load_pseudonymizer_key()) for i in ids}
    guesses = {hashlib.sha256(f"{OLD_SALT}:C{i:08d}".encode()).hexdigest() for i in range(1, 10_001)}
    guesses |= {Pseudonymizer(b"guessed-key-0123456789")(f"C{i:08d}") for i in range(1, 10_001)}
    assert not logged & guesses
    key = load_pseudonymizer_key()
    expected = hmac.new(key, b"govrisk-applicant-v2:C00000001", hashlib.sha256).hexdigest()
    assert applicant_hash("C00000001", key) == expected == load_pseudonymizer()("C00000001")
    assert "applicant_hash_salt" not in type(load_serving_config("default").decision_log).model_fields


def load_pseudonymizer_key() -> bytes:
    return pseudonym.load_applicant_key()


def test_no_key_is_refused_in_one_line_and_keys_come_from_env_or_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(pseudonym.KEY_ENV)
    with pytest.raises(SigningKeyError) as e:
        load_pseudonymizer()
    assert "\n" not in str(e.value) and pseudonym.KEY_FILE_ENV in str(e.value)
    (tmp_path / "k").write_text("file-key-0123456789abcdef\n")
    monkeypatch.setenv(pseudonym.KEY_FILE_ENV, str(tmp_path / "k"))
    assert load_pseudonymizer()("C1") == Pseudonymizer(b"file-key-0123456789abcdef")("C1")
    (tmp_path / "old").write_text("old-key-one-0123456789\nold-key-two-0123456789\n")
    monkeypatch.setenv(pseudonym.OLD_KEY_FILE_ENV, str(tmp_path / "old"))
    assert len(load_pseudonymizer().every("C1")) == 3
    monkeypatch.setenv(pseudonym.KEY_ENV, "short")
    with pytest.raises(SigningKeyError, match="shorter than 16 bytes"):
        load_pseudonymizer()


def test_the_demo_key_file_is_generated_once_with_mode_0600() -> None:
    path = pseudonym.ensure_demo_key()
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first.strip()) == 64
    assert pseudonym.ensure_demo_key().read_bytes() == first  # created once, then reused


def test_join_commands_refuse_without_a_key_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(pseudonym.KEY_ENV)
    result = CliRunner().invoke(app, ["data", "outcomes", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "no applicant pseudonym key" in result.output and "Traceback" not in result.output


def test_outcomes_join_decisions_logged_before_and_after_a_key_rotation(
    tiny_county_path: Path, tmp_path: Path
) -> None:
    old, new = b"old-applicant-key-0123456789", b"new-applicant-key-0123456789"
    ds = read_dataset(tiny_county_path)
    c = ds.contract
    picked = ds.applicants.iloc[[3, 50, 700, 1200, 2000, 2999]]
    ids = picked[c.key].astype(str).tolist()
    logged = [Pseudonymizer(old)(i) for i in ids[:3]] + [Pseudonymizer(new)(i) for i in ids[3:]]
    applications = pd.DataFrame(
        {"applicant_hash": logged, "application_date": picked[c.applicants.application_date]}
    )

    rotated = Pseudonymizer(new, [old])
    manifest = play_forward(
        tiny_county_path, out=tmp_path / "out", hash_of=rotated, applications=applications
    )
    assert manifest["meta"]["applications"] == 6
    got = read_outcomes(tmp_path / "out").set_index("applicant_hash")["default_12m"]
    assert [bool(got[h]) for h in logged] == picked[c.applicants.label].astype(bool).tolist()  # as logged

    only_new = play_forward(
        tiny_county_path, out=tmp_path / "new", hash_of=Pseudonymizer(new), applications=applications
    )
    assert only_new["meta"]["applications"] == 3  # without the old key, the older decisions are lost

    from govrisk.monitoring.live import application_index, application_keys

    pos = application_index(ds, rotated).get_indexer(
        application_keys(np.array(logged), applications["application_date"])
    )
    assert pos.tolist() == [3, 50, 700, 1200, 2000, 2999]
