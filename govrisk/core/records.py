"""The decision record: one per applicant decided, built by the scoring engine.

`DecisionRecord` is the one definition of what a decision holds. The decision-log row
(`log_row`) and the JSON answer to a decision system (`response`) are both derived from it here,
and `serving/decision_log.py`'s table has one column per field of `LOG_COLUMNS` (a test checks
both ways). Monitoring reads the logged columns by these names.

A slotted dataclass, not a pydantic model: a batch builds a thousand of them on the scoring path,
and validation would re-check values the engine has just computed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

# Fields the decision system gets but the log does not keep: no raw applicant id is stored (the log
# keeps `applicant_hash`), a rule's reason and a challenger's error text are in the response only,
# and `batch_size` describes the request, not the decision.
RESPONSE_ONLY = frozenset({"applicant_id", "hard_rule_reason", "challenger_error", "batch_size"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the credit policy decides for one PD (`govrisk.serving.policy.CreditPolicy.decide`)."""

    decision: str  # approve | refer | decline
    hard_rule: str | None  # the rule that decided, if any
    hard_rule_reason: str | None
    rate: float | None  # annual rate; None when declined
    credit_limit: float | None  # None when declined


def reason_codes(outcome: Outcome, reasons: list[str]) -> list[str]:
    """A decision's reason codes: a hard rule that decided leads, the scorecard's reasons follow."""
    return [outcome.hard_rule, *reasons] if outcome.hard_rule else list(reasons)


@dataclass(slots=True, kw_only=True)
class DecisionRecord:
    """One applicant's decision: who and what was scored, the deciding model's outcome, both models'
    answers, the policy and the timings."""

    # identity and provenance
    decision_id: str
    request_id: str
    applicant_id: str  # response only (see RESPONSE_ONLY)
    created_at: dt.datetime
    endpoint: str  # score | score_batch
    applicant_hash: str  # HMAC-SHA256(applicant key, id): govrisk.core.pseudonym
    input_digest: str  # sha256 of the request record in canonical JSON
    application_date: dt.date | None
    routing_mode: str  # shadow | split | champion_only
    arm: str  # champion | challenger: the arm the applicant was drawn into
    decided_by: str  # champion | challenger
    # the decision, from the deciding model's PD
    decision: str  # approve | refer | decline
    hard_rule: str | None
    hard_rule_reason: str | None  # response only
    pd: float
    grade: str
    rate: float | None
    credit_limit: float | None
    reason_codes: list[str]  # a hard rule leads, the scorecard's reasons follow; JSON text in the log
    # the champion
    champion_model: str
    champion_pd: float
    champion_score: float | None
    champion_grade: str
    # the challenger, filled in once it has answered (or not)
    challenger_model: str | None
    challenger_status: str | None = None  # ok | error | timeout | missing | busy | off
    challenger_error: str | None = None  # response only
    challenger_pd: float | None = None
    challenger_grade: str | None = None
    challenger_decision: str | None = None  # what it decided, or would have decided
    policy: str  # name@version
    # timings of the batch the applicant was decided in
    features_ms: float
    champion_ms: float
    challenger_ms: float | None = None
    total_ms: float | None = None
    batch_size: int  # response only: applicants decided together

    def set_decision(self, outcome: Outcome, *, pd: float, grade: str, reasons: list[str]) -> None:
        """Replace the decision fields with another model's PD and its policy outcome (an applicant on
        the challenger's arm is decided by the challenger)."""
        self.decision, self.hard_rule, self.hard_rule_reason = (
            outcome.decision,
            outcome.hard_rule,
            outcome.hard_rule_reason,
        )
        self.pd, self.grade, self.rate, self.credit_limit = pd, grade, outcome.rate, outcome.credit_limit
        self.reason_codes = reason_codes(outcome, reasons)

    def log_row(self) -> dict[str, Any]:
        """The decision-log row: every field but RESPONSE_ONLY, reason codes as JSON text."""
        return _log_row(self)

    def response(self) -> dict[str, Any]:
        """The JSON answer for a decision system."""
        return {
            "request_id": self.request_id,
            "decision_id": self.decision_id,
            "applicant_id": self.applicant_id,
            "decision": self.decision,
            "pd": self.pd,
            "grade": self.grade,
            "score": self.champion_score,
            "rate": self.rate,
            "credit_limit": self.credit_limit,
            "reason_codes": self.reason_codes,
            "hard_rule": self.hard_rule,
            "hard_rule_reason": self.hard_rule_reason,
            "arm": self.arm,
            "decided_by": self.decided_by,
            "champion": {
                "model": self.champion_model,
                "pd": self.champion_pd,
                "score": self.champion_score,
                "grade": self.champion_grade,
            },
            "challenger": {
                "model": self.challenger_model,
                "status": self.challenger_status,
                "pd": self.challenger_pd,
                "grade": self.challenger_grade,
                "decision": self.challenger_decision,
            },
            "policy": self.policy,
            "timings_ms": {
                "features": round(self.features_ms, 3),
                "champion": round(self.champion_ms, 3),
                "challenger": None if self.challenger_ms is None else round(self.challenger_ms, 3),
                "scoring": None if self.total_ms is None else round(self.total_ms, 3),
                "batch_size": self.batch_size,  # applicants decided together (see serving.service)
            },
        }


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DecisionRecord))
# The decision log's columns, in record order (serving/decision_log.py declares their SQL types).
LOG_COLUMNS: tuple[str, ...] = tuple(f for f in FIELDS if f not in RESPONSE_ONLY)


def _row_builder() -> Callable[[DecisionRecord], dict[str, Any]]:
    """`log_row`'s body, written out from LOG_COLUMNS: one dict display per record (a row per applicant
    on the scoring path) costs less than a loop over the fields or a zip of their names and values."""
    items = ", ".join(f"{c!r}: dumps(r.{c})" if c == "reason_codes" else f"{c!r}: r.{c}" for c in LOG_COLUMNS)
    namespace: dict[str, Any] = {"dumps": json.dumps}
    exec(f"def log_row(r):\n    return {{{items}}}\n", namespace)
    return namespace["log_row"]


_log_row = _row_builder()
