"""The request parser: fast in-process checks, and agreement with the offline pandera validation."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.client import request_bodies
from govrisk.data.contract import load_contract
from govrisk.data.validate import validate_tables
from govrisk.serving.request import Applicants, BadInput, RequestParser

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


def _agree_with_pandera(body: dict[str, Any], where: str, col: str) -> None:
    try:
        PARSER.parse([body], today=TODAY)
        served = True
    except BadInput:
        served = False
    offline = validate_tables(_tables(body), CONTRACT)
    assert served == offline.ok, (where, col, offline.errors[:3])


# One edit per column type and per kind of failure (and a few that must pass): the default tier's
# fast, fixed version of the property test below (pandera costs ~0.2 s per check).
FIXED_EDITS = [
    ("applicant", "requested_amount", 0.0),  # exclusive minimum
    ("applicant", "registered_capital", 0.0),  # inclusive minimum: accepted
    ("applicant", "legal_rep_age", 3.5),
    ("applicant", "legal_rep_age", 30.0),  # a whole float for an int: accepted
    ("applicant", "industry", "nonsense"),
    ("applicant", "township", "T99"),  # open category: accepted
    ("applicant", "has_mortgage", 1),
    ("applicant", "registration_date", "2023-02-30"),
    ("applicant", "entity_type", None),
    ("tax_monthly", "declared_sales", float("nan")),
    ("tax_monthly", "invoice_count", "3"),
    ("tax_monthly", "taxpayer_type", "general"),
    ("social_security_monthly", "insured_headcount", -2),
    ("social_security_monthly", "arrears_flag", True),
]


@pytest.mark.parametrize(
    ("where", "col", "value"), FIXED_EDITS, ids=[f"{w}.{c}={v!r}" for w, c, v in FIXED_EDITS]
)
def test_parser_and_pandera_agree_on_fixed_edits(bodies, where: str, col: str, value: Any) -> None:
    body = json.loads(json.dumps(bodies[0]))
    if where == "applicant":
        body["applicant"][col] = value
    else:
        body[where][0][col] = value
    _agree_with_pandera(body, where, col)


@pytest.mark.slow
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
    _agree_with_pandera(body, where, col)


# --- the column-wise fast path against the value-by-value reference ---------------------------------
def _same_columns(fast: Applicants, slow: Applicants) -> None:
    for got, want in [(fast.applicants, slow.applicants)] + [
        (fast.monthly[t], slow.monthly[t]) for t in CONTRACT.monthly
    ]:
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert fast.records == slow.records


def test_fast_path_takes_valid_requests_and_equals_the_reference(bodies) -> None:
    keyed = json.loads(json.dumps(bodies[:5]))  # a record may name its own applicant (every other one here)
    for body in keyed[:3]:
        for k, records in enumerate(body[t] for t in CONTRACT.monthly):
            for r in records[k::2]:
                r[CONTRACT.key] = body["applicant"][CONTRACT.key]
    for batch in [[b] for b in bodies] + [bodies, keyed]:
        fast = PARSER.parse_columns(batch, today=TODAY)
        assert fast is not None
        _same_columns(fast, PARSER.parse_values(batch, today=TODAY))


EDIT_VALUES = [None, True, 0, 3, 3.5, -1.0, 10**400, float("nan"), float("inf"), "", "x", "retail",
               "2023-01", "2023-01-01", "2023-13", "2023-02-30", "2999-01-01", [], {}, "x" * 300]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_fast_path_accepts_only_what_the_reference_accepts(bodies, data) -> None:
    """Any one or two edits: the fast path either declines (the reference then decides) or equals
    the reference. Two edits can remove a key from one monthly record and add one to another, which
    the fast path's key count alone would not see."""
    body = json.loads(json.dumps(bodies[data.draw(st.integers(0, len(bodies) - 1))]))
    own_id = body["applicant"][CONTRACT.key]
    for _ in range(data.draw(st.integers(1, 2))):
        where = data.draw(st.sampled_from(["top", "applicant", *CONTRACT.monthly]))
        if where == "top":
            node = body
        elif where == "applicant":
            node = body["applicant"]
        elif body.get(where):
            node = body[where][data.draw(st.integers(0, len(body[where]) - 1))]
        else:
            continue
        if not isinstance(node, dict):
            continue
        key = data.draw(st.sampled_from([*node, "unexpected", CONTRACT.key]))
        if key in node and data.draw(st.booleans()):
            del node[key]
        else:  # a record may name its own applicant: the reference accepts that
            node[key] = data.draw(st.sampled_from([*EDIT_VALUES, own_id]))
    fast = PARSER.parse_columns([body], today=TODAY)
    try:
        slow = PARSER.parse_values([body], today=TODAY)
    except BadInput:
        assert fast is None, (where, key)
        return
    if fast is not None:
        _same_columns(fast, slow)


# --- the vectorised monthly aggregates against the column-at-a-time reference -----------------------
def _aggregates_one_column(builder, name: str, spec, present: np.ndarray, v: np.ndarray) -> dict:
    """The aggregates of one monthly column, computed alone (the formulation before vectorising)."""
    from govrisk.data.features import _last_index, _seq_value

    T, W = builder.config.lookback_months, builder.config.trend_window
    out: dict[str, np.ndarray] = {}
    filled = np.where(present, v, 0.0)
    for w in builder.config.windows:
        cnt = present[:, T - w :].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}__mean_{w}m"] = np.where(cnt > 0, filled[:, T - w :].sum(1) / cnt, np.nan)
        if spec.kind == "delinquency":
            out[f"{name}__max_{w}m"] = np.where(
                cnt > 0, np.where(present, v, -np.inf)[:, T - w :].max(1), np.nan
            )
    idx = _last_index(present)
    out[f"{name}__last"] = np.where(idx >= 0, v[np.arange(len(v)), np.maximum(idx, 0)], np.nan)
    if spec.kind == "delinquency":
        li = _last_index(present & (v > 0))
        out[f"{name}__months_since_late"] = np.where(li >= 0, T - li, T + 1).astype(np.float64)
        return out
    p = present[:, T - W :]
    y = np.where(p, _seq_value(spec, filled[:, T - W :]), 0.0)
    x = np.broadcast_to(np.arange(W, dtype=np.float64), p.shape)
    n = p.sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm, ym = (x * p).sum(1) / n, y.sum(1) / n
        dx, dy = np.where(p, x - xm[:, None], 0.0), np.where(p, y - ym[:, None], 0.0)
        sxx = (dx * dx).sum(1)
        out[f"{name}__slope_{W}m"] = np.where((n >= 3) & (sxx > 0), (dx * dy).sum(1) / sxx, np.nan)
        out[f"{name}__volatility_{W}m"] = np.where(n >= 2, np.sqrt((dy * dy).sum(1) / n), np.nan)
    return out


@pytest.mark.parametrize("rows", [slice(0, 1), slice(7, 8), slice(0, 3000)], ids=["one", "another", "all"])
def test_vectorised_aggregates_equal_one_column_at_a_time_bit_for_bit(
    tiny_county, tiny_features, rows
) -> None:
    builder, _ = tiny_features
    apps = tiny_county.applicants.iloc[rows].reset_index(drop=True)
    _, located = builder._locate(apps, tiny_county.monthly)
    dense = builder._dense(located, 0, len(apps))
    for table, (present, cols) in dense.items():
        got = builder._numeric_aggregates(table, present, cols)
        assert got, table
        for col, values in got.items():
            want = _aggregates_one_column(
                builder, f"{table}.{col}", builder.contract.monthly[table].columns[col], present, cols[col]
            )
            assert list(values) == list(want)  # same names, same order: the schema's feature order
            for name, x in want.items():
                assert np.ascontiguousarray(values[name]).tobytes() == x.tobytes(), name


def test_decision_log_commits_in_each_callers_thread_and_recovers_from_a_failed_commit(tmp_path) -> None:
    """Each writing thread commits on its own connection; a refused batch commits none of its rows,
    loses nothing committed before it, and the thread's next write succeeds on a fresh connection."""
    import threading

    from govrisk.serving.decision_log import DecisionLog, decisions_table

    log = DecisionLog(url=f"sqlite:///{tmp_path}/decisions.db")
    now = dt.datetime.now(dt.UTC)
    by_type = {"DATETIME": now, "FLOAT": 0.01}
    required = {c.name: by_type.get(str(c.type), "x") for c in decisions_table().columns if not c.nullable}

    def row(decision_id: str) -> dict[str, Any]:
        return required | {"decision_id": decision_id}

    threads = [
        threading.Thread(target=lambda k=k: [log.write([row(f"t{k}-{i}")]) for i in range(20)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count() == 80 and len(log._open) == 4  # one connection per writing thread
    with pytest.raises(Exception, match="UNIQUE"):
        log.write([row("fresh"), row("t0-0")])  # a duplicate decision id: the whole batch is refused
    assert log.count() == 80  # "fresh" was not committed, and nothing committed before was lost
    log.write([row("fresh")])  # the same thread, a new connection
    assert log.count() == 81 and log.reachable()
    log.close()


# --- hostile input (issue 14, items 1-3): refused with a 4xx naming the field, rendered as UTF-8 -----
SURROGATE_EDITS = [
    ("applicant_id", lambda b: b["applicant"].__setitem__("applicant_id", "A\ud800"), "applicant.applicant_id"),
    ("township", lambda b: b["applicant"].__setitem__("township", "\udfff"), "applicant.township"),
    ("category", lambda b: b["tax_monthly"][0].__setitem__("taxpayer_type", "\ud800"), "tax_monthly[0].taxpayer_type"),
    ("key name", lambda b: b["applicant"].__setitem__("\ud800", 1), "applicant.\\ud800"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "field"), SURROGATE_EDITS, ids=[c for c, _, _ in SURROGATE_EDITS])
def test_a_lone_surrogate_is_refused_naming_the_field_and_the_error_renders(
    bodies, case, edit, field
) -> None:
    body = json.loads(json.dumps(bodies[0]))
    edit(body)
    assert PARSER.parse_columns([body], today=TODAY) is None  # the fast path never takes it
    with pytest.raises(BadInput) as e:
        PARSER.parse([body], today=TODAY)
    err = e.value.body()
    assert err["field"] == field, err
    json.dumps(err, ensure_ascii=False).encode("utf-8")  # raised UnicodeEncodeError before: a 500


@pytest.mark.parametrize(
    ("where", "col", "value", "field"),
    [
        ("tax_monthly", "month", "２０２３-03", "tax_monthly[0].month"),  # full-width digits
        ("applicant", "application_date", "0001-01-01", "applicant.application_date"),
        ("applicant", "application_date", "1900-01-01", "applicant.application_date"),
        ("applicant", "registration_date", "1900-01-01", "applicant.registration_date"),
        ("applicant", "requested_amount", 1e300, "applicant.requested_amount"),
        ("applicant", "property_value", 1e308, "applicant.property_value"),
        (
            "social_security_monthly",
            "contribution_base",
            1e300,
            "social_security_monthly[0].contribution_base",
        ),
    ],
)
def test_implausible_values_are_refused_by_the_parser_and_the_validator(
    bodies, where, col, value, field
) -> None:
    body = json.loads(json.dumps(bodies[0]))
    if where == "applicant":
        body["applicant"][col] = value
    else:
        body[where][0][col] = value
    assert PARSER.parse_columns([body], today=TODAY) is None
    with pytest.raises(BadInput) as e:
        PARSER.parse([body], today=TODAY)
    assert e.value.errors[0].field == field
    if where == "applicant":  # the contract's bounds, so the offline validation agrees
        assert not validate_tables(_tables(body), CONTRACT).ok


def test_registration_after_application_is_refused_by_the_contract_rule(bodies) -> None:
    body = json.loads(json.dumps(bodies[0]))
    app = dt.date.fromisoformat(body["applicant"]["application_date"])
    body["applicant"]["registration_date"] = str(app + dt.timedelta(days=1))
    assert PARSER.parse_columns([body], today=TODAY) is None
    with pytest.raises(BadInput) as e:
        PARSER.parse([body], today=TODAY)
    assert e.value.errors[0].field == "applicant.registration_date"
    assert "after application_date" in e.value.errors[0].message
    report = validate_tables(_tables(body), CONTRACT)
    assert [v.check for v in report.errors] == ["not_after application_date"]
    body["applicant"]["registration_date"] = body["applicant"]["application_date"]  # the same day: fine
    PARSER.parse([body], today=TODAY)


def test_body_parsing_names_huge_integers_and_refuses_deep_nesting(bodies) -> None:
    from govrisk.serving.admission import Malformed, count_applicants, media_type_ok, parse_json

    text = json.dumps(bodies[0]).replace(
        '"requested_amount": ', '"requested_amount": ' + "9" * 5000 + ', "x": ', 1
    )
    body = parse_json(text.encode())
    assert not isinstance(body, Malformed)  # was "not JSON" (Python's 4,300-digit limit)
    body.pop("x", None)
    body["applicant"].pop("x", None)
    with pytest.raises(BadInput) as e:
        PARSER.parse([body], today=TODAY)
    assert e.value.errors[0].field == "applicant.requested_amount"
    for deep in (b"[" * 2000 + b"]" * 2000, b'{"a":' * 1100 + b"1" + b"}" * 1100):
        assert isinstance(parse_json(deep), Malformed)  # was RecursionError: a 500
    surrogate = parse_json(b'{"applicant": {"applicant_id": "\\ud800"}}')
    assert surrogate["applicant"]["applicant_id"] == "\ud800"  # read, then refused by the parser
    batch = json.dumps({"applicants": bodies[:7]}).encode()
    assert count_applicants(batch) == 7 and count_applicants(batch.replace(b": ", b"  :  ")) == 7
    assert media_type_ok("application/json") and media_type_ok("Application/JSON; charset=utf-8")
    for other in (None, "", "text/plain", "application/xml", "application/octet-stream",
                  "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"):  # fmt: skip
        assert not media_type_ok(other)


def test_echoed_values_cost_a_bounded_summary_whatever_their_size_or_depth() -> None:
    from govrisk.serving.request import json_safe

    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    assert len(json_safe(deep)) <= 80 and len(json_safe(list(range(10**6)))) <= 80
    assert json_safe("\ud800x") == "\\ud800x" and isinstance(json_safe(10**5000), str)
