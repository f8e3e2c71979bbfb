"""The typed decision record against the decision-log table and monitoring's reader, and one name per
concept (issue #13, item 4)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from govrisk.core.records import FIELDS, LOG_COLUMNS, RESPONSE_ONLY, DecisionRecord, Outcome, reason_codes
from govrisk.monitoring.decisions import NEEDED
from govrisk.serving.decision_log import DecisionLog, decisions_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def record(**over: object) -> DecisionRecord:
    values: dict[str, object] = {
        "decision_id": "d1",
        "request_id": "r1",
        "applicant_id": "A-1",
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "endpoint": "score",
        "applicant_hash": "a" * 64,
        "input_digest": "b" * 64,
        "application_date": dt.date(2025, 12, 1),
        "routing_mode": "shadow",
        "arm": "champion",
        "decided_by": "champion",
        "decision": "refer",
        "hard_rule": "abnormal_operation",
        "hard_rule_reason": "tax office flag",
        "pd": 0.04,
        "grade": "B",
        "rate": 0.09,
        "credit_limit": 20_000.0,
        "reason_codes": ["abnormal_operation", "low_sales"],
        "champion_model": "county-scorecard:v1",
        "champion_pd": 0.04,
        "champion_score": 612.5,
        "champion_grade": "B",
        "challenger_model": "county-cnn:v1",
        "challenger_status": "ok",
        "challenger_error": None,
        "challenger_pd": 0.05,
        "challenger_grade": "C",
        "challenger_decision": "refer",
        "policy": "county@1",
        "features_ms": 1.23456,
        "champion_ms": 0.5,
        "challenger_ms": 2.0,
        "total_ms": 3.0,
        "batch_size": 1,
    }
    return DecisionRecord(**(values | over))  # type: ignore[arg-type]


def test_the_log_table_has_a_column_for_every_logged_field_and_no_other() -> None:
    """Adding a field to the record without a column (or a column without a field) fails here."""
    columns = [c.name for c in decisions_table().columns]
    assert columns == list(LOG_COLUMNS)
    assert set(columns) | RESPONSE_ONLY == set(FIELDS) and not set(columns) & RESPONSE_ONLY


def test_monitoring_reads_only_logged_fields() -> None:
    assert set(NEEDED) <= set(LOG_COLUMNS), set(NEEDED) - set(LOG_COLUMNS)


def test_log_row_is_every_logged_field_with_reason_codes_as_json() -> None:
    r = record()
    row = r.log_row()
    assert list(row) == list(LOG_COLUMNS)
    assert json.loads(row["reason_codes"]) == r.reason_codes
    for name in LOG_COLUMNS:
        if name != "reason_codes":
            assert row[name] == getattr(r, name), name
    assert "applicant_id" not in row and "A-1" not in map(str, row.values())  # no raw id in the log


def test_the_log_accepts_a_record_row(tmp_path: Path) -> None:
    log = DecisionLog(url=f"sqlite:///{tmp_path}/decisions.db")
    try:
        log.write([record().log_row(), record(decision_id="d2", challenger_pd=None).log_row()])
        assert log.count() == 2
    finally:
        log.close()


def test_response_is_what_a_decision_system_reads() -> None:
    r = record(total_ms=3.14159, challenger_ms=None)
    d = r.response()
    assert d["applicant_id"] == "A-1" and d["hard_rule_reason"] == "tax office flag"
    assert d["score"] == d["champion"]["score"] == 612.5
    assert d["champion"] == {"model": "county-scorecard:v1", "pd": 0.04, "score": 612.5, "grade": "B"}
    assert d["challenger"] == {
        "model": "county-cnn:v1",
        "status": "ok",
        "pd": 0.05,
        "grade": "C",
        "decision": "refer",
    }
    assert d["timings_ms"] == {
        "features": 1.235,
        "champion": 0.5,
        "challenger": None,
        "scoring": 3.142,
        "batch_size": 1,
    }
    json.dumps(d)  # plain JSON values only (orjson serves it)


def test_set_decision_replaces_every_decision_field() -> None:
    r = record()
    r.set_decision(Outcome("approve", None, None, 0.07, 5000.0), pd=0.01, grade="A", reasons=["x"])
    assert (r.decision, r.hard_rule, r.hard_rule_reason, r.pd, r.grade) == ("approve", None, None, 0.01, "A")
    assert (r.rate, r.credit_limit, r.reason_codes) == (0.07, 5000.0, ["x"])
    assert r.champion_pd == 0.04  # the champion's own answer stays
    r.set_decision(Outcome("decline", "arrears", "tax arrears", None, None), pd=0.2, grade="E", reasons=["x"])
    assert r.reason_codes == ["arrears", "x"] and r.rate is None and r.hard_rule_reason == "tax arrears"


def test_a_hard_rule_leads_the_reason_codes() -> None:
    reasons = ["low_sales", "young"]
    assert reason_codes(Outcome("refer", "flag", "why", 0.1, 1.0), reasons) == ["flag", *reasons]
    codes = reason_codes(Outcome("approve", None, None, 0.1, 1.0), reasons)
    assert codes == reasons and codes is not reasons  # a record's list is its own


def test_the_record_is_slotted_and_refuses_unknown_fields() -> None:
    r = record()
    assert not hasattr(r, "__dict__")
    with pytest.raises(AttributeError):
        r.champoin_pd = 0.1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        record(surprise=1)
    assert [f.name for f in dataclasses.fields(DecisionRecord)] == list(FIELDS)


# --- one name per concept --------------------------------------------------------------------------
SOURCES = ["govrisk", "data", "training", "serving", "research", "monitoring", "devtools", "bench", "tests"]
RETIRED = [
    (r"\bclass Policy\b", "CreditPolicy or GovernancePolicy"),
    (
        r"\bdef load_policy\b|\bimport load_policy\b|\bload_policy\(",
        "load_credit_policy or load_governance_policy",
    ),
    (r"(?<!Credit)\bPolicyConfig\b", "CreditPolicyConfig"),
    (r"-\s*1970\)\s*\*\s*12", "govrisk.data.months"),
]


@pytest.mark.parametrize(("pattern", "use"), RETIRED)
def test_retired_names_and_duplicated_arithmetic_are_gone(pattern: str, use: str) -> None:
    this = Path(__file__).resolve()
    hits = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for folder in SOURCES
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if path != this and path.name != "months.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not hits, f"use {use}: {hits}"
