"""The request parser: fast in-process checks, and agreement with the offline pandera validation."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.contract import load_contract
from data.validate import validate_tables
from serving.client import request_bodies
from serving.request import BadInput, RequestParser

CONTRACT = load_contract("county")
PARSER = RequestParser(contract=CONTRACT, lookback_months=24)
TODAY = dt.date(2026, 1, 15)

CANDIDATES: dict[str, list[Any]] = {
    "string": ["X1", 5, None, True],
    "category": ["retail", "micro_enterprise", "general", "nonsense", 3, None],
    "float": [0.0, 12.5, -1.0, 7, "7", None, True, float("nan"), float("inf")],
    "int": [0, 3, 3.0, 3.5, -2, 5000, "3", None, False, float("nan")],
    "bool": [True, False, 0, 1, "true", None],
    "date": ["2019-06-01", "2023-02-30", "yesterday", 20190601, None],
}


@pytest.fixture(scope="module")
def bodies(tiny_county) -> list[dict[str, Any]]:
    return [b for b in request_bodies(tiny_county)[:40] if b["tax_monthly"] and b["social_security_monthly"]]


def _tables(body: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The body as the raw tables `validate_tables` checks offline (values untouched)."""
    key = CONTRACT.key
    applicant = body["applicant"]
    tables = {"applicants": pd.DataFrame({k: pd.Series([v], dtype=object) for k, v in applicant.items()})}
    for table in CONTRACT.monthly:
        rows = [{key: applicant[key], **r} for r in body[table]]
        cols = CONTRACT.table_columns(table)
        tables[table] = pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=object) for c in cols})
    return tables


def test_valid_bodies_parse_to_columns(bodies) -> None:
    parsed = PARSER.parse(bodies, prefix="applicants[{i}].", today=TODAY)
    assert len(parsed) == len(bodies) and parsed.ids == [b["applicant"]["applicant_id"] for b in bodies]
    n_tax = sum(len(b["tax_monthly"]) for b in bodies)
    assert len(parsed.monthly["tax_monthly"]["month"]) == n_tax
    assert str(parsed.monthly["tax_monthly"]["month"].dtype) == "datetime64[D]"


def test_batch_errors_name_the_applicant(bodies) -> None:
    bad = json.loads(json.dumps(bodies[:3]))
    bad[2]["applicant"]["industry"] = "piracy"
    bad[1]["applicant"]["applicant_id"] = bad[0]["applicant"]["applicant_id"]
    with pytest.raises(BadInput) as e:
        PARSER.parse(bad, prefix="applicants[{i}].", today=TODAY)
    fields = {x.field for x in e.value.errors}
    assert {"applicants[1].applicant.applicant_id", "applicants[2].applicant.industry"} <= fields


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_parser_and_pandera_contract_check_agree(bodies, data) -> None:
    """One contract, two checks: a value edit is accepted by serving iff `validate_tables` accepts it."""
    body = json.loads(json.dumps(bodies[data.draw(st.integers(0, len(bodies) - 1))]))
    where = data.draw(st.sampled_from(["applicant", *CONTRACT.monthly]))
    if where == "applicant":
        col = data.draw(st.sampled_from([c for c in PARSER.applicant_columns if c != "application_date"]))
        spec = CONTRACT.applicants.columns[col]
        if col == CONTRACT.key:
            return  # the key also ties monthly rows to the applicant; its checks are tested above
        body["applicant"][col] = data.draw(st.sampled_from(CANDIDATES[spec.type]))
    else:
        row = body[where][data.draw(st.integers(0, len(body[where]) - 1))]
        col = data.draw(st.sampled_from(list(CONTRACT.monthly[where].columns)))
        row[col] = data.draw(st.sampled_from(CANDIDATES[CONTRACT.monthly[where].columns[col].type]))
    try:
        PARSER.parse([body], today=TODAY)
        served = True
    except BadInput:
        served = False
    offline = validate_tables(_tables(body), CONTRACT)
    assert served == offline.ok, (where, col, offline.errors[:3])
