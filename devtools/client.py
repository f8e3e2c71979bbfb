"""Request bodies from a dataset, and a small HTTP client: what a decision system sends.

Used by the simulated decision system (`python -m devtools.decision_system`), the tests and the bench.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

from govrisk.data.contract import MONTH
from govrisk.data.store import Dataset


def _json_value(v: Any) -> Any:
    if isinstance(v, pd.Timestamp | dt.datetime | dt.date | np.datetime64):
        return pd.Timestamp(v).strftime("%Y-%m-%d")
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def request_bodies(
    ds: Dataset, ids: list[str] | None = None, *, lookback_months: int = 24
) -> list[dict[str, Any]]:
    """One /score body per applicant: its fields (no label) and its records inside the lookback window.

    Records outside the window (or at/after the application month) are left out, as a decision
    system would: the endpoint rejects them as bad input.
    """
    c = ds.contract
    key, date_col, label = c.key, c.applicants.application_date, c.applicants.label
    apps = ds.applicants if ids is None else ds.applicants.set_index(key).loc[ids].reset_index()
    wanted = set(apps[key])
    app_month = {k: pd.Timestamp(d).to_period("M") for k, d in zip(apps[key], apps[date_col], strict=True)}
    rows_by_table: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table, df in ds.monthly.items():
        df = df[df[key].isin(wanted)]
        months = df[MONTH].dt.to_period("M")
        am = df[key].map(app_month)
        keep = (months < am) & (months >= am - lookback_months)
        df = df[keep.to_numpy()].sort_values([key, MONTH])
        cols = [col for col in df.columns if col != key]
        grouped: dict[str, list[dict[str, Any]]] = {}
        for rec in df.to_dict("records"):
            grouped.setdefault(rec[key], []).append({col: _json_value(rec[col]) for col in cols})
        rows_by_table[table] = grouped
    bodies = []
    for rec in apps.to_dict("records"):
        applicant = {k: _json_value(v) for k, v in rec.items() if k != label}
        body: dict[str, Any] = {"applicant": applicant}
        for table in ds.monthly:
            body[table] = rows_by_table[table].get(rec[key], [])
        bodies.append(body)
    return bodies


def headers(api_key: str) -> dict[str, str]:
    return {"X-API-Key": api_key, "Content-Type": "application/json"}
