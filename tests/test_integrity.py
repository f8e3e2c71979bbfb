"""Integrity of registered models and of the audit log (issue 14, items 8 and 10).

Models: every file of a registered model is in a manifest of sha256 digests signed with HMAC-SHA256
under a key the store does not hold; `govrisk models verify` and `LoadedModel` refuse any change and
name the file. Audit: every line is signed and the head of the chain is signed beside the log, so any
edit, deletion, truncation or emptying, the last line included, is found and named by line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import tiny_experiment
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.core import signing
from govrisk.core.hashing import sha256_bytes
from govrisk.core.registry import MANIFEST, OPTIONAL_FILES, STORE_FILES, TamperedModelError, model_path

runner = CliRunner()
OTHER_KEY = "another-key-entirely-" + "1" * 32


@pytest.fixture(scope="module")
def scorecard(tiny_county_path: Path) -> str:
    from govrisk.training.config import experiment_from_dict
    from govrisk.training.train import train

    cfg, params = experiment_from_dict(tiny_experiment(tiny_county_path, "scorecard", name="integrity-sc"))
    return train(cfg, params).tag


@pytest.fixture
def folder(scorecard: str, tmp_path: Path) -> Iterator[Path]:
    """The model's store folder, restored byte for byte after the test."""
    path, _ = model_path(scorecard, verify=False)
    backup = tmp_path / "backup"
    shutil.copytree(path, backup)
    yield path
    shutil.rmtree(path)
    shutil.copytree(backup, path)


def one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_every_file_is_in_the_signed_manifest(scorecard: str) -> None:
    from govrisk.serving.models import LoadedModel

    path, _ = model_path(scorecard)
    manifest = json.loads((path / MANIFEST).read_text())
    present = {f for f in (*STORE_FILES, *OPTIONAL_FILES) if (path / f).exists()}
    assert {"reason_codes.json", "scorecard.csv"} <= present
    assert set(manifest["files"]) == present
    assert all(manifest["files"][f] == sha256_bytes((path / f).read_bytes()) for f in present)
    assert manifest["key_id"] == signing.key_id(signing.load_key())
    assert len(manifest["hmac_sha256"]) == 64
    assert signing.load_key() not in (path / MANIFEST).read_bytes()  # the key is not in the store
    ok = runner.invoke(app, ["models", "verify", scorecard])
    assert ok.exit_code == 0 and "ok" in ok.output, ok.output
    assert LoadedModel(tag=scorecard).reason_table


def reverse_vocabulary(path: Path) -> None:
    schema = json.loads((path / "feature_schema.json").read_text())
    schema["fitted"]["vocab"]["industry"].reverse()
    (path / "feature_schema.json").write_text(json.dumps(schema))


def rename_reason(path: Path) -> None:
    reasons = json.loads((path / "reason_codes.json").read_text())
    reasons["characteristics"][0]["characteristic"] = "years_in_business"
    (path / "reason_codes.json").write_text(json.dumps(reasons))


def garbage_onnx_with_updated_hash(path: Path) -> None:
    garbage = b"\x08\x07" + os.urandom(256)
    (path / "model.onnx").write_bytes(garbage)
    meta = yaml.safe_load((path / "model.yaml").read_text())
    meta["metadata"]["onnx_sha256"] = sha256_bytes(garbage)
    (path / "model.yaml").write_text(yaml.safe_dump(meta))


def schema_and_manifest_edited(path: Path) -> None:
    reverse_vocabulary(path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["feature_schema.json"] = sha256_bytes((path / "feature_schema.json").read_bytes())
    (path / MANIFEST).write_text(json.dumps(manifest))


def metadata_edited(path: Path) -> None:
    meta = yaml.safe_load((path / "model.yaml").read_text())
    meta["metadata"]["kind"] = "cnn"
    (path / "model.yaml").write_text(yaml.safe_dump(meta))


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "schema edited": (reverse_vocabulary, "feature_schema.json sha256"),
    "reason codes edited": (rename_reason, "reason_codes.json sha256"),
    "onnx replaced, hash updated in model.yaml": (garbage_onnx_with_updated_hash, "model.onnx sha256"),
    "manifest edited": (schema_and_manifest_edited, "manifest signature does not match"),
    "file added": (lambda p: (p / "extra.json").write_text("{}"), "extra.json is not in the signed manifest"),
    "file removed": (lambda p: (p / "reason_codes.json").unlink(), "reason_codes.json is missing"),
    "metadata edited": (metadata_edited, "model.yaml metadata sha256"),
    "manifest deleted": (lambda p: (p / MANIFEST).unlink(), "register it again: govrisk train --config"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_refused_by_verify_and_by_loading(scorecard: str, folder: Path, case: str) -> None:
    from govrisk.serving.models import LoadedModel

    tamper, message = TAMPERING[case]
    tamper(folder)
    refused = runner.invoke(app, ["models", "verify", scorecard])
    assert refused.exit_code == 1, refused.output
    line = one_line(refused.output)
    assert line.startswith("refused: ") and message in line and scorecard in line, line
    with pytest.raises(TamperedModelError, match=message):
        LoadedModel(tag=scorecard)
    with pytest.raises(TamperedModelError, match=message):
        model_path(scorecard)


def test_a_different_key_is_refused(scorecard: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from govrisk.serving.models import LoadedModel

    monkeypatch.setenv("GOVRISK_MODEL_KEY", OTHER_KEY)
    refused = runner.invoke(app, ["models", "verify", scorecard])
    assert refused.exit_code == 1
    assert "manifest signature does not match: the manifest was edited or the key differs" in one_line(
        refused.output
    )
    with pytest.raises(TamperedModelError, match="the key differs"):
        LoadedModel(tag=scorecard)


def test_resign_rotates_the_key_after_verifying_with_the_old_one(
    scorecard: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = os.environ["GOVRISK_MODEL_KEY"]
    # No old key: refused before anything is touched.
    monkeypatch.delenv("GOVRISK_MODEL_KEY_OLD", raising=False)
    no_old = runner.invoke(app, ["models", "resign", scorecard])
    assert no_old.exit_code == 2 and "GOVRISK_MODEL_KEY_OLD" in no_old.output
    # A wrong old key: nothing is re-signed.
    before = (folder / MANIFEST).read_bytes()
    monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", OTHER_KEY)
    wrong = runner.invoke(app, ["models", "resign", scorecard])
    assert wrong.exit_code == 1 and "signature does not match" in wrong.output
    assert (folder / MANIFEST).read_bytes() == before

    monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", current)
    monkeypatch.setenv("GOVRISK_MODEL_KEY", OTHER_KEY)
    rotated = runner.invoke(app, ["models", "resign", scorecard])
    assert rotated.exit_code == 0, rotated.output
    assert runner.invoke(app, ["models", "verify", scorecard]).exit_code == 0
    monkeypatch.setenv("GOVRISK_MODEL_KEY", current)  # the old key no longer verifies
    assert "the key differs" in runner.invoke(app, ["models", "verify", scorecard]).output

    # A tampered model is not re-signed: rotation cannot launder a change.
    monkeypatch.setenv("GOVRISK_MODEL_KEY", current)
    monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", OTHER_KEY)
    rename_reason(folder)
    laundered = runner.invoke(app, ["models", "resign", scorecard])
    assert laundered.exit_code == 1 and "reason_codes.json sha256" in laundered.output


def test_resign_all_covers_models_and_audit_log(
    scorecard: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from govrisk.research.governance import append_audit

    current = os.environ["GOVRISK_MODEL_KEY"]
    # A governance folder of its own; the key does not depend on the work folder while it is set.
    monkeypatch.setenv("GOVRISK_WORK", str(tmp_path / "work"))
    for i in range(2):
        append_audit(audit_entry(i))
    try:
        monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", current)
        monkeypatch.setenv("GOVRISK_MODEL_KEY", OTHER_KEY)
        rotated = runner.invoke(app, ["models", "resign", "--all"])
        assert rotated.exit_code == 0, rotated.output
        assert scorecard in rotated.output and "audit log, 2 entries" in rotated.output
        assert runner.invoke(app, ["models", "audit"]).exit_code == 0
        assert runner.invoke(app, ["models", "verify", scorecard]).exit_code == 0
    finally:  # back to the session's key for the other tests
        monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", OTHER_KEY)
        monkeypatch.setenv("GOVRISK_MODEL_KEY", current)
        back = runner.invoke(app, ["models", "resign", "--all"])
        assert back.exit_code == 0, back.output
    assert runner.invoke(app, ["models", "audit"]).exit_code == 0


def test_default_key_file_is_created_once_private_and_outside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOVRISK_MODEL_KEY", raising=False)
    monkeypatch.delenv("GOVRISK_MODEL_KEY_FILE", raising=False)
    monkeypatch.setenv("GOVRISK_WORK", str(tmp_path / "work"))
    key = signing.load_key()
    path = tmp_path / "work" / "secrets" / "model.key"
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.load_key() == key and len(key) >= 32
    path.chmod(0o644)
    with pytest.raises(signing.SigningKeyError, match="chmod 600"):
        signing.load_key()
    secret = tmp_path / "mounted.key"
    secret.write_text("k" * 40 + "\n")
    monkeypatch.setenv("GOVRISK_MODEL_KEY_FILE", str(secret))
    assert signing.load_key() == b"k" * 40
    monkeypatch.setenv("GOVRISK_MODEL_KEY", "too-short")
    with pytest.raises(signing.SigningKeyError, match="shorter"):
        signing.load_key()


# --- the audit log ------------------------------------------------------------------------------------


def audit_entry(i: int) -> dict:
    return {"action": "promote", "at": f"2026-01-0{i + 1}T00:00:00+00:00", "by": f"reviewer-{i}",
            "host": "test", "model": f"county-cnn:v{i}", "previous_champion": None, "report": "/r",
            "report_sha256": "0" * 64, "recommendation": "promote", "override": False,
            "reason": f"reason {i}", "overridden": [], "git_commit": "x"}  # fmt: skip


def drop_line(n: int) -> Callable[[list[str]], list[str]]:
    return lambda lines: lines[: n - 1] + lines[n:]


def edit_line(n: int) -> Callable[[list[str]], list[str]]:
    return lambda lines: [ln.replace("reviewer-", "reviewer-x") if i == n else ln
                          for i, ln in enumerate(lines, start=1)]  # fmt: skip


def rewrite_chain_after_edit(lines: list[str]) -> list[str]:
    """An attacker without the key: edit line 2, then recompute every later line's previous-line hash."""
    out = edit_line(2)(lines)
    for i in range(2, len(out)):
        rec = json.loads(out[i])
        rec["prev_sha256"] = sha256_bytes(out[i - 1].encode())
        out[i] = json.dumps(rec, sort_keys=True)
    return out


AUDIT_TAMPERING: dict[str, tuple[Callable[[list[str]], list[str]] | str, str]] = {
    "middle line edited": (edit_line(2), "line 2"),
    "middle line deleted": (drop_line(2), "line 2"),
    "middle line edited, chain recomputed": (rewrite_chain_after_edit, "line 2"),
    "last line edited": (edit_line(3), "line 3"),
    "last line deleted": (drop_line(3), "line 3"),
    "last two lines deleted": (lambda lines: lines[:1], "line 2"),
    "truncated inside the last line": ("truncate", "line 3"),
    "emptied": (lambda lines: [], "line 1"),
    "deleted": ("delete", "line 1"),
    "head edited": ("head", "line 3"),
    "head deleted": ("head-deleted", "line 3"),
}


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from govrisk.research.governance import append_audit, audit_file

    monkeypatch.setenv("GOVRISK_WORK", str(tmp_path / "work"))
    for i in range(3):
        append_audit(audit_entry(i))
    return audit_file()


@pytest.mark.parametrize("case", list(AUDIT_TAMPERING))
def test_audit_detects_every_tampering_with_the_line(audit_log: Path, case: str) -> None:
    from govrisk.research.governance import AuditTampered, append_audit, audit_head_file

    intact = runner.invoke(app, ["models", "audit"])
    assert intact.exit_code == 0, intact.output
    change, line = AUDIT_TAMPERING[case]
    if change == "truncate":
        data = audit_log.read_bytes()
        audit_log.write_bytes(data[: len(data) - 40])
    elif change == "delete":
        audit_log.unlink()
    elif change == "head":
        head = json.loads(audit_head_file().read_text())
        head["seq"] = 2
        audit_head_file().write_text(json.dumps(head))
    elif change == "head-deleted":
        audit_head_file().unlink()
    else:
        assert callable(change)
        lines = audit_log.read_text().splitlines()
        audit_log.write_text("".join(ln + "\n" for ln in change(lines)))
    tampered = runner.invoke(app, ["models", "audit"])
    assert tampered.exit_code != 0, tampered.output
    found = [ln for ln in tampered.output.splitlines() if ln.startswith("tampered: ")]
    assert found and found[0].startswith(f"tampered: {line}"), tampered.output
    with pytest.raises(AuditTampered, match="nothing appended"):  # never signed over
        append_audit(audit_entry(9))


def _append_many(work: str, key: str, worker: int) -> None:
    os.environ["GOVRISK_WORK"] = work
    os.environ["GOVRISK_MODEL_KEY"] = key
    from govrisk.research.governance import append_audit

    for i in range(5):
        append_audit(audit_entry(i) | {"by": f"worker-{worker}"})


def test_concurrent_appends_keep_the_chain_and_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from govrisk.research.governance import read_audit

    work = str(tmp_path / "work")
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_append_many, args=(work, os.environ["GOVRISK_MODEL_KEY"], w)) for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    monkeypatch.setenv("GOVRISK_WORK", work)
    entries, problems = read_audit()
    assert not problems and [e["seq"] for e in entries] == list(range(1, 21))
