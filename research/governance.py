"""Governance: the promotion policy, the recommendation it gives, the champion record and the audit log.

Files, all under `$GOVRISK_WORK/governance/`:

- `champion.json` — the current champion: `{"tag": "county-cnn:<version>", "promoted_at", "by",
  "report", ...}`. Serving and monitoring read the tag from here (`current_champion()`); before any
  promotion there is no file and callers use their own default.
- `audit.jsonl` — one JSON object per line, appended and never rewritten: who, what, when, why, the
  report (folder, sha256 of its report.json, its recommendation), override or not. Each entry carries
  its sequence number (`seq`), the sha256 of the previous line (`prev_sha256`) and an HMAC-SHA256 of
  all that (`hmac_sha256`) under the integrity key of `govrisk.core.signing`, which is not kept here.
- `audit.head.json` — the signed head of the chain: `{"seq": <entries>, "last_sha256": <sha256 of the
  last line>, "key_id", "hmac_sha256"}`, replaced atomically after each append under the same lock.
  The per-line MACs name an edited, inserted or deleted line even when the chain hashes are recomputed;
  the head names the end: a deleted or edited last line, a truncated or emptied file. `champion.json`'s
  `audit_seq` is checked against the log too. `govrisk models audit` reports every problem by line.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from govrisk.core import signing
from govrisk.core.config import StrictModel, load_config, work_dir
from govrisk.core.hashing import sha256_bytes, sha256_file
from govrisk.core.registry import git_commit, model_path

SPLITS = ("train", "val", "oot")


class BootstrapPolicy(StrictModel):
    n_boot: int = Field(ge=50, le=100_000)
    level: float = Field(gt=0.5, lt=1)
    seed: int = Field(ge=0)


class SegmentPolicy(StrictModel):
    columns: list[str]
    thin_file_months_registered: int = Field(ge=0, le=600)
    thin_file_months_with_records: int = Field(ge=0, le=600)
    lookback_months: int = Field(ge=1, le=600)
    min_count: int = Field(ge=1)
    min_defaults: int = Field(ge=1)


class Thresholds(StrictModel):
    auc_gain_alpha: float = Field(gt=0, lt=1)
    min_auc_gain: float = Field(ge=-1, le=1)
    max_psi: float = Field(gt=0)
    calibration_alpha: float = Field(gt=0, lt=1)
    max_rejected_grades: int = Field(ge=0)
    require_monotone_grades: bool
    max_segment_auc_loss: float = Field(ge=0, le=1)


class GovernancePolicy(StrictModel):
    approval_rate: float = Field(gt=0, lt=1)
    development: list[Literal["train", "val", "oot"]] = Field(min_length=1)
    evaluation: Literal["train", "val", "oot"]
    bootstrap: BootstrapPolicy
    reliability_bins: int = Field(ge=2, le=100)
    hosmer_lemeshow_groups: int = Field(ge=3, le=100)
    psi_bins: int = Field(ge=2, le=100)
    csi_characteristics: int = Field(ge=0, le=200)
    min_grade_count: int = Field(ge=1)
    segments: SegmentPolicy
    thresholds: Thresholds

    @model_validator(mode="after")
    def _disjoint(self) -> GovernancePolicy:
        if self.evaluation in self.development:
            raise ValueError(
                f"evaluation split {self.evaluation!r} must not be among development {self.development}"
            )
        return self


def load_governance_policy(name_or_path: str | Path = "default") -> GovernancePolicy:
    """`configs/governance/<name>.yaml` (or a path), validated; errors name the key."""
    return load_config("governance", name_or_path, GovernancePolicy)


# --- the recommendation -------------------------------------------------------------------------------


def check_row(name: str, passed: bool, value: Any, threshold: str, detail: str) -> dict[str, Any]:
    """One row of a recommendation's or an alert list's checks: what was tested, against what, and why."""
    return {"check": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def recommend(report: dict[str, Any], policy: GovernancePolicy) -> dict[str, Any]:
    """Promote or hold, from the report's figures and the policy's thresholds, with every reason."""
    t = policy.thresholds
    checks = []

    d = report["discrimination"]["delong"]
    gain_ok = d["p_value"] < t.auc_gain_alpha and d["diff"] > t.min_auc_gain
    checks.append(check_row(
        "AUC gain significant", gain_ok, {"diff": d["diff"], "p_value": d["p_value"]},
        f"p < {t.auc_gain_alpha} and gain > {t.min_auc_gain}",
        f"challenger - champion AUC {d['diff']:+.4f} (95 % CI {d['ci_low']:+.4f} .. {d['ci_high']:+.4f}), "
        f"DeLong two-sided p = {d['p_value']:.3g}",
    ))  # fmt: skip

    psi = report["stability"]["score_psi"]["challenger"]["value"]
    checks.append(check_row(
        "challenger score stable", psi < t.max_psi, psi, f"PSI < {t.max_psi}",
        f"PSI of the challenger's PD, development -> evaluation: {psi:.4f}",
    ))  # fmt: skip

    hl = report["calibration"]["challenger"]["hosmer_lemeshow"]
    checks.append(check_row(
        "calibration not rejected (Hosmer-Lemeshow)", hl["p_value"] >= t.calibration_alpha, hl["p_value"],
        f"p >= {t.calibration_alpha}",
        f"HL statistic {hl['statistic']:.2f} on {hl['df']} df, p = {hl['p_value']:.3g}",
    ))  # fmt: skip

    grades = report["grades"]["challenger"]
    rejected = [g["grade"] for g in grades["table"] if g.get("jeffreys_rejected")]
    checks.append(check_row(
        "grade PDs not rejected (Jeffreys)", len(rejected) <= t.max_rejected_grades, len(rejected),
        f"<= {t.max_rejected_grades} grades with p < {t.calibration_alpha}",
        f"grades whose observed default rate is significantly above their PD: {rejected or 'none'}",
    ))  # fmt: skip

    if t.require_monotone_grades:
        checks.append(check_row(
            "grade bad rates monotone", grades["monotone"], grades["monotone"], "monotone",
            "bad rate falls from a grade to a worse one at: "
            + (", ".join(grades["violations"]) if grades["violations"] else "nowhere"),
        ))  # fmt: skip

    judged = [s for s in report["segments"]["rows"] if s["judged"] and s["auc_delta"] is not None]
    losing = [s for s in judged
              if -s["auc_delta"] > t.max_segment_auc_loss and s["p_worse"] < t.auc_gain_alpha]  # fmt: skip
    worst = min(judged, key=lambda s: s["auc_delta"], default=None)
    checks.append(check_row(
        "no segment loses discrimination", not losing, [f"{s['dimension']}={s['segment']}" for s in losing],
        f"no judged segment with AUC loss > {t.max_segment_auc_loss} and DeLong p < {t.auc_gain_alpha}",
        (f"worst judged segment: {worst['dimension']}={worst['segment']} (champion {worst['champion_auc']:.4f}, "
         f"challenger {worst['challenger_auc']:.4f}, one-sided p {worst['p_worse']:.3g})")
        if worst else "no segment large enough to judge",
    ))  # fmt: skip

    decision = "promote" if all(c["passed"] for c in checks) else "hold"
    failed = [c["check"] for c in checks if not c["passed"]]
    summary = "every policy check passes" if decision == "promote" else "fails: " + "; ".join(failed)
    return {"decision": decision, "summary": summary, "checks": checks}


# --- champion record and audit log --------------------------------------------------------------------


def governance_dir() -> Path:
    return work_dir() / "governance"


def champion_file() -> Path:
    return governance_dir() / "champion.json"


def audit_file() -> Path:
    return governance_dir() / "audit.jsonl"


def current_champion() -> dict[str, Any] | None:
    """The champion record (`tag`, `promoted_at`, `by`, `report`, ...) or None before any promotion."""
    path = champion_file()
    return json.loads(path.read_text()) if path.exists() else None


def whoami() -> str:
    """The reviewer: `$GOVRISK_USER` when set (a service account acting for a person), else the OS user."""
    return os.environ.get("GOVRISK_USER") or getpass.getuser()


_lock_depth = threading.local()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One promotion at a time: read champion, append audit, write champion under one file lock
    (re-entrant within a thread, so `append_audit` takes it too)."""
    depth = getattr(_lock_depth, "n", 0)
    if depth:
        _lock_depth.n = depth + 1
        try:
            yield
        finally:
            _lock_depth.n = depth
        return
    governance_dir().mkdir(parents=True, exist_ok=True)
    with open(governance_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _lock_depth.n = 1
        try:
            yield
        finally:
            _lock_depth.n = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


AUDIT_PURPOSE = "audit-entry"
HEAD_PURPOSE = "audit-head"


def audit_head_file() -> Path:
    return governance_dir() / "audit.head.json"


def _audit_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()] if path.exists() else []


def _write_synced(path: Path, data: bytes, flags: int) -> None:
    """Write `data` through a file opened with `flags` and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, data, os.O_TRUNC)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _signed_line(body: dict[str, Any], key: bytes) -> bytes:
    record = body | {"hmac_sha256": signing.sign(body, key, purpose=AUDIT_PURPOSE)}
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def _write_head(lines: list[bytes], key: bytes) -> None:
    body = {
        "seq": len(lines),
        "last_sha256": sha256_bytes(lines[-1]) if lines else None,
        "key_id": signing.key_id(key),
    }
    head = body | {"hmac_sha256": signing.sign(body, key, purpose=HEAD_PURPOSE)}
    _write_atomic(audit_head_file(), (json.dumps(head, sort_keys=True) + "\n").encode())


def _check_audit(
    lines: list[bytes], head_raw: bytes | None, key: bytes, *, signed: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries and problems of a log's lines against its head (`signed=False`: only the hash chain and
    the sequence, for adopting a log written before signatures)."""
    entries, problems, prev = [], [], None
    for i, raw in enumerate(lines, start=1):
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            problems.append(f"line {i}: not a JSON object")
            prev = sha256_bytes(raw)
            continue
        if signed:
            body = {k: v for k, v in entry.items() if k != "hmac_sha256"}
            if "hmac_sha256" not in entry:
                problems.append(f"line {i} (seq {entry.get('seq')}): unsigned entry")
            elif not signing.signature_ok(body, entry["hmac_sha256"], key, purpose=AUDIT_PURPOSE):
                problems.append(
                    f"line {i} (seq {entry.get('seq')}): signature does not match: the line was edited "
                    "or the key differs"
                )
        if entry.get("prev_sha256") != prev:
            problems.append(f"line {i} (seq {entry.get('seq')}): previous-line hash does not match")
        if entry.get("seq") != i:
            problems.append(f"line {i}: sequence number {entry.get('seq')} out of order")
        entries.append(entry)
        prev = sha256_bytes(raw)
    if not signed:
        return entries, problems
    n = len(lines)
    if head_raw is None:
        if n:
            problems.append(
                f"line {n}: {audit_head_file().name} is missing, so the end of the log cannot be checked"
            )
        return entries, problems
    try:
        head = json.loads(head_raw)
        head_body = {k: v for k, v in head.items() if k != "hmac_sha256"}
        ok = signing.signature_ok(head_body, head.get("hmac_sha256"), key, purpose=HEAD_PURPOSE)
        expected_n = head_body["seq"]
    except (ValueError, AttributeError, KeyError):
        ok, expected_n = False, None
    if not ok or not isinstance(expected_n, int):
        problems.append(
            f"line {n}: {audit_head_file().name} signature does not match: the head was edited or the "
            "key differs, so the end of the log cannot be checked"
        )
    elif n < expected_n:
        problems.append(
            f"line {n + 1}: missing: the signed head records {expected_n} entries, the file holds {n} "
            "(deleted or truncated)"
        )
    elif n > expected_n:
        problems.append(
            f"line {expected_n + 1}: after the signed head, which ends at line {expected_n} "
            "(inserted, or an append was interrupted)"
        )
    if (
        ok
        and isinstance(expected_n, int)
        and 0 < expected_n <= n
        and sha256_bytes(lines[expected_n - 1]) != head_body.get("last_sha256")
    ):
        problems.append(f"line {expected_n}: differs from the signed head's hash of the last line")
    return entries, problems


def _champion_problems(n_lines: int) -> list[str]:
    champ = current_champion()
    seq = champ.get("audit_seq") if champ else None
    if isinstance(seq, int) and seq > n_lines:
        return [
            f"line {seq}: missing: champion.json was promoted by audit entry {seq}, the log holds {n_lines}"
        ]
    return []


def append_audit(entry: dict[str, Any]) -> dict[str, Any]:
    """Append one signed entry (it gets a sequence number, the previous line's hash and an HMAC) and
    replace the signed head, under the governance lock. Refuses (AuditTampered) to extend a log that
    does not verify: appending would sign over the damage."""
    key = signing.load_key()
    path = audit_file()
    with _locked():
        lines = _audit_lines(path)
        head = audit_head_file().read_bytes() if audit_head_file().exists() else None
        _, problems = _check_audit(lines, head, key)
        if problems:
            raise AuditTampered(
                f"{path} does not verify, nothing appended: {'; '.join(problems)} (see govrisk models audit)"
            )
        body = {"seq": len(lines) + 1, **entry, "prev_sha256": sha256_bytes(lines[-1]) if lines else None}
        line = _signed_line(body, key)
        # O_APPEND: the line lands at the end even if the file is opened elsewhere; never rewritten.
        _write_synced(path, line, os.O_APPEND)
        _write_head([*lines, line.rstrip(b"\n")], key)
    return json.loads(line)


def read_audit() -> tuple[list[dict[str, Any]], list[str]]:
    """Every audit entry, and the problems found (empty when intact): per line its signature, the hash
    chain and the sequence; at the end the signed head (so a deleted, edited or truncated last line, or
    an emptied file, is found); and the champion record's audit entry."""
    path, head_path = audit_file(), audit_head_file()
    if not path.exists() and not head_path.exists():
        return [], _champion_problems(0)
    try:
        key = signing.load_key()
    except signing.SigningKeyError as e:
        return [], [f"line 1: cannot check the signatures: {e}"]
    lines = _audit_lines(path)
    entries, problems = _check_audit(lines, head_path.read_bytes() if head_path.exists() else None, key)
    return entries, problems + _champion_problems(len(lines))


def resign_audit(*, old_key: bytes | None, new_key: bytes) -> int:
    """Key rotation for the audit log: verify every line and the head with `old_key` (None: adopt a log
    written before signatures, checking only its hash chain and sequence), then rewrite it signed with
    `new_key`: same entries, new MACs, the chain hashes recomputed, and a new head. Atomic (a reader sees
    the old or the new file) and under the governance lock. Returns the number of entries."""
    path = audit_file()
    with _locked():
        lines = _audit_lines(path)
        if not lines and not audit_head_file().exists():
            return 0
        head = audit_head_file().read_bytes() if audit_head_file().exists() else None
        entries, problems = _check_audit(lines, head, old_key or b"", signed=old_key is not None)
        if problems:
            raise AuditTampered(f"{path} does not verify with the old key: {'; '.join(problems)}")
        out: list[bytes] = []
        for entry in entries:
            body = {k: v for k, v in entry.items() if k != "hmac_sha256"}
            body["prev_sha256"] = sha256_bytes(out[-1].rstrip(b"\n")) if out else None
            out.append(_signed_line(body, new_key))
        _write_atomic(path, b"".join(out))
        _write_head([ln.rstrip(b"\n") for ln in out], new_key)
    return len(entries)


class PromotionRefused(RuntimeError):
    """The report does not support the promotion, and no override was given."""


class AuditTampered(PromotionRefused):
    """The audit log or its head does not verify: nothing is appended to it (so no promotion is
    recorded) until that is resolved."""


def promote(
    tag: str, report_dir: Path, *, override: bool = False, reason: str | None = None
) -> dict[str, Any]:
    """Make `tag` the champion if the report in `report_dir` recommends it (or with an override and a
    reason); returns the audit entry. Refusals raise PromotionRefused and are not logged as promotions."""

    if override and not (reason and reason.strip()):
        raise PromotionRefused("--override needs --reason TEXT: the audit log must say why")
    report_json = Path(report_dir) / "report.json"
    if not report_json.exists():
        raise FileNotFoundError(f"--report {report_dir}: no report.json; run `govrisk report` first")
    report = json.loads(report_json.read_text())
    folder, _ = model_path(tag, verify=True)  # a registered, untampered model only
    resolved = f"{folder.parent.name}:{folder.name}"
    reported = report["models"]["challenger"].get("tag")
    if reported != resolved:
        raise PromotionRefused(
            f"the report in {report_dir} is about challenger {reported!r}, not {tag!r} ({resolved})"
        )
    decision = report["recommendation"]["decision"]
    problems = []
    if decision != "promote":
        problems.append(f"the report recommends {decision!r}: {report['recommendation']['summary']}")
    with _locked():
        current = current_champion()
        if current and current["tag"] == resolved:
            raise PromotionRefused(f"{resolved} is already the champion (since {current['promoted_at']})")
        compared = report["models"]["champion"].get("tag")
        if current and compared != current["tag"]:
            problems.append(
                f"the report compares against {compared!r} but the champion is {current['tag']!r}"
            )
        if problems and not override:
            raise PromotionRefused("; ".join(problems) + " (use --override --reason TEXT to promote anyway)")

        now = datetime.now(UTC).isoformat(timespec="seconds")
        entry = append_audit({
            "action": "promote",
            "at": now,
            "by": whoami(),
            "host": socket.gethostname(),
            "model": resolved,
            "previous_champion": current["tag"] if current else None,
            "report": str(Path(report_dir).resolve()),
            "report_sha256": sha256_file(report_json),
            "recommendation": decision,
            "override": bool(problems) and override,
            "reason": reason or report["recommendation"]["summary"],
            "overridden": problems if override else [],
            "git_commit": git_commit(),
        })  # fmt: skip
        record = {
            "tag": resolved,
            "promoted_at": now,
            "by": entry["by"],
            "report": entry["report"],
            "recommendation": decision,
            "override": entry["override"],
            "audit_seq": entry["seq"],
        }
        tmp = champion_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(champion_file())  # atomic: a reader sees the old or the new champion, never half
    return entry
