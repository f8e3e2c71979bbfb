"""Request records -> contract-checked columns, or a 4xx error naming the field and the value.

The checks are derived from the record contract (`configs/contract/*.yaml`), the same one
`data.validate.validate_tables` turns into pandera schemas for offline data: types, ranges, closed
categories, finiteness, first-of-month months and unique (applicant, month). Serving does not call
pandera itself because it costs ~0.3 s for one applicant against a 5 ms budget;
`tests/test_serving_input.py` checks that both accept and reject the same records.

On top of the contract, a request must be scoreable now: months must lie inside the feature
lookback window before the application month, nothing may be dated in the future, and the label is
not an input.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.contract import MONTH, ColumnSpec, Contract

MAX_ERRORS = 20  # listed per response; enough to fix a request, bounded for a hostile one
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}(-01)?$")
_MAX_STRING = 256


@dataclass(frozen=True)
class FieldError:
    field: str  # JSON path, e.g. "tax_monthly[3].declared_sales"
    value: Any  # the offending value, JSON-safe
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "value": self.value, "message": self.message}


class BadInput(Exception):
    """Raised with every field error found (at most MAX_ERRORS)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}={e.value!r}: {e.message}" for e in errors[:3]))
        self.errors = errors

    def body(self) -> dict[str, Any]:
        first = self.errors[0]
        return {
            "error": "bad_input",
            "field": first.field,
            "value": first.value,
            "message": f"{first.field}: {first.message} (got {_show(first.value)})",
            "errors": [e.as_dict() for e in self.errors[:MAX_ERRORS]],
        }


def _json_safe(value: Any) -> Any:
    """The value as it can be echoed back in a JSON error (NaN and infinities as text, long text cut)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:77] + "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _show(value: Any) -> str:
    return repr(value)


@dataclass
class Applicants:
    """Checked records of one or more applicants, as column arrays `FeatureBuilder.transform` takes."""

    applicants: dict[str, np.ndarray]
    monthly: dict[str, dict[str, np.ndarray]]
    records: list[dict[str, Any]] = field(default_factory=list)  # the checked input of each applicant

    @property
    def ids(self) -> list[str]:
        return [str(x) for x in self.applicants["applicant_id"]]

    def __len__(self) -> int:
        return len(self.records)


class RequestParser:
    """Checks request records against a contract and the scoring window."""

    def __init__(self, *, contract: Contract, lookback_months: int) -> None:
        self.contract = contract
        self.lookback = lookback_months
        a = contract.applicants
        self.applicant_columns = {c: s for c, s in a.columns.items() if c != a.label}

    # --- one value ------------------------------------------------------------------------------
    def _value(self, path: str, spec: ColumnSpec, v: Any, errors: list[FieldError]) -> Any:
        """The checked value (dates as datetime.date), or None after appending an error."""

        def bad(message: str) -> None:
            errors.append(FieldError(path, _json_safe(v), message))

        if v is None:
            bad("is required and may not be null")
            return None
        t = spec.type
        if t in {"string", "category"}:
            if not isinstance(v, str):
                bad(f"must be a string ({t})")
                return None
            if not v or len(v) > _MAX_STRING:
                bad(f"must have 1..{_MAX_STRING} characters")
                return None
            if t == "category" and not spec.open and v not in (spec.categories or ()):
                bad(f"unknown category; allowed: {list(spec.categories or ())}")
                return None
            return v
        if t == "bool":
            if not isinstance(v, bool):
                bad("must be true or false")
                return None
            return v
        if t == "date":
            if not isinstance(v, str) or not _DATE.match(v):
                bad("must be an ISO date YYYY-MM-DD")
                return None
            try:
                return dt.date.fromisoformat(v)
            except ValueError:
                bad("is not a calendar date")
                return None
        # float / int
        if isinstance(v, bool) or not isinstance(v, int | float):
            bad(f"must be a number ({t})")
            return None
        x = float(v)
        if not math.isfinite(x):
            bad("must be finite (no NaN or infinity)")
            return None
        if t == "int" and not x.is_integer():
            bad("must be a whole number")
            return None
        if spec.min is not None:
            if spec.exclusive_min and not x > spec.min:
                bad(f"must be > {spec.min:g}")
                return None
            if not spec.exclusive_min and x < spec.min:
                bad(f"must be >= {spec.min:g}")
                return None
        if spec.max is not None and x > spec.max:
            bad(f"must be <= {spec.max:g}")
            return None
        return x

    def _month(self, path: str, v: Any, errors: list[FieldError]) -> int | None:
        """A month as months since 1970-01, from 'YYYY-MM' or 'YYYY-MM-01'."""
        if not isinstance(v, str) or not _MONTH.match(v):
            errors.append(FieldError(path, _json_safe(v), "must be a month 'YYYY-MM' or 'YYYY-MM-01'"))
            return None
        year, month = int(v[:4]), int(v[5:7])
        if not 1 <= month <= 12:
            errors.append(FieldError(path, v, "is not a calendar month"))
            return None
        return (year - 1970) * 12 + month - 1

    # --- one applicant --------------------------------------------------------------------------
    def _applicant(
        self, body: Any, prefix: str, today: dt.date, errors: list[FieldError]
    ) -> tuple[dict[str, Any], dict[str, list[tuple[int, dict[str, Any]]]]] | None:
        if not isinstance(body, Mapping):
            errors.append(FieldError(prefix.rstrip(".") or "body", _json_safe(body), "must be a JSON object"))
            return None
        allowed = {"applicant", *self.contract.monthly}
        for k in body:
            if k not in allowed:
                errors.append(
                    FieldError(
                        f"{prefix}{k}", _json_safe(body[k]), f"unknown field; expected {sorted(allowed)}"
                    )
                )
        a = body.get("applicant")
        if not isinstance(a, Mapping):
            errors.append(FieldError(f"{prefix}applicant", _json_safe(a), "must be a JSON object"))
            return None
        label = self.contract.applicants.label
        row: dict[str, Any] = {}
        for k in a:
            if k == label:
                errors.append(
                    FieldError(f"{prefix}applicant.{k}", _json_safe(a[k]), "the label is not an input")
                )
            elif k not in self.applicant_columns:
                errors.append(
                    FieldError(f"{prefix}applicant.{k}", _json_safe(a[k]), "unknown field of the applicant")
                )
        for col, spec in self.applicant_columns.items():
            if col not in a:
                errors.append(FieldError(f"{prefix}applicant.{col}", None, "missing field"))
                continue
            row[col] = self._value(f"{prefix}applicant.{col}", spec, a[col], errors)

        date_col = self.contract.applicants.application_date
        app_date = row.get(date_col)
        app_month = None
        if isinstance(app_date, dt.date):
            if app_date > today:
                errors.append(
                    FieldError(
                        f"{prefix}applicant.{date_col}", a[date_col], f"is in the future (today {today})"
                    )
                )
            app_month = (app_date.year - 1970) * 12 + app_date.month - 1
        for col, spec in self.applicant_columns.items():
            v = row.get(col)
            if spec.type == "date" and col != date_col and isinstance(v, dt.date) and v > today:
                errors.append(
                    FieldError(f"{prefix}applicant.{col}", a[col], f"is in the future (today {today})")
                )

        now_month = (today.year - 1970) * 12 + today.month - 1
        monthly: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        key = self.contract.key
        for table, tspec in self.contract.monthly.items():
            rows = body.get(table, [])
            path = f"{prefix}{table}"
            if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
                errors.append(FieldError(path, _json_safe(rows), "must be a JSON array of monthly records"))
                continue
            if len(rows) > self.lookback:
                errors.append(
                    FieldError(
                        path, len(rows), f"has more than {self.lookback} records (the lookback window)"
                    )
                )
                continue
            out: list[tuple[int, dict[str, Any]]] = []
            seen: dict[int, int] = {}
            for i, r in enumerate(rows):
                rp = f"{path}[{i}]"
                if not isinstance(r, Mapping):
                    errors.append(FieldError(rp, _json_safe(r), "must be a JSON object"))
                    continue
                for k in r:
                    if k == key:
                        if r[k] != a.get(key):
                            errors.append(
                                FieldError(
                                    f"{rp}.{k}", _json_safe(r[k]), "differs from applicant.applicant_id"
                                )
                            )
                    elif k != MONTH and k not in tspec.columns:
                        errors.append(FieldError(f"{rp}.{k}", _json_safe(r[k]), f"unknown field of {table}"))
                if MONTH not in r:
                    errors.append(FieldError(f"{rp}.{MONTH}", None, "missing field"))
                    m = None
                else:
                    m = self._month(f"{rp}.{MONTH}", r[MONTH], errors)
                values: dict[str, Any] = {}
                for col, cspec in tspec.columns.items():
                    if col not in r:
                        errors.append(FieldError(f"{rp}.{col}", None, "missing field"))
                        continue
                    values[col] = self._value(f"{rp}.{col}", cspec, r[col], errors)
                if m is None:
                    continue
                if m > now_month:
                    errors.append(FieldError(f"{rp}.{MONTH}", r[MONTH], f"is in the future (today {today})"))
                elif app_month is not None and m >= app_month:
                    errors.append(
                        FieldError(
                            f"{rp}.{MONTH}",
                            r[MONTH],
                            f"is not before the application month ({app_date:%Y-%m})",
                        )
                    )
                elif app_month is not None and m < app_month - self.lookback:
                    errors.append(
                        FieldError(
                            f"{rp}.{MONTH}",
                            r[MONTH],
                            f"is outside the {self.lookback}-month lookback window before {app_date:%Y-%m}",
                        )
                    )
                if m in seen:
                    errors.append(
                        FieldError(f"{rp}.{MONTH}", r[MONTH], f"duplicates {path}[{seen[m]}].{MONTH}")
                    )
                seen.setdefault(m, i)
                out.append((m, values))
            monthly[table] = out
        return row, monthly

    def parse(self, bodies: Sequence[Any], *, prefix: str = "", today: dt.date | None = None) -> Applicants:
        """Check every applicant's records; raise BadInput listing the errors of all of them.

        `prefix` names each applicant in error paths: "" for /score, "applicants[i]." for a batch
        (where `{i}` is filled in).
        """
        today = today or dt.date.today()
        errors: list[FieldError] = []
        parsed = []
        key = self.contract.key
        seen_ids: dict[str, int] = {}
        for i, body in enumerate(bodies):
            p = prefix.format(i=i)
            before = len(errors)
            res = self._applicant(body, p, today, errors)
            if res is not None:
                applicant_id = res[0].get(key)
                if isinstance(applicant_id, str):
                    if applicant_id in seen_ids:
                        errors.append(
                            FieldError(
                                f"{p}applicant.{key}",
                                applicant_id,
                                f"duplicates applicant {seen_ids[applicant_id]} of the batch",
                            )
                        )
                    seen_ids.setdefault(applicant_id, i)
            if len(errors) == before and res is not None:
                parsed.append((body, res))
            if len(errors) >= MAX_ERRORS:
                break
        if errors:
            raise BadInput(errors)
        return self._columns(parsed)

    def _columns(self, parsed: list[tuple[Any, tuple[dict[str, Any], dict[str, list]]]]) -> Applicants:
        """Checked records -> column arrays in contract order (dates as datetime64[D])."""
        n = len(parsed)
        applicants: dict[str, np.ndarray] = {}
        for col, spec in self.applicant_columns.items():
            vals = [res[0][col] for _, res in parsed]
            applicants[col] = _array(vals, spec.type, n)
        key = self.contract.key
        monthly: dict[str, dict[str, np.ndarray]] = {}
        for table, tspec in self.contract.monthly.items():
            ids: list[str] = []
            months: list[int] = []
            cols: dict[str, list[Any]] = {c: [] for c in tspec.columns}
            for _, (row, tables) in parsed:
                for m, values in tables.get(table, []):
                    ids.append(row[key])
                    months.append(m)
                    for c in tspec.columns:
                        cols[c].append(values[c])
            out = {
                key: np.array(ids, dtype=object),
                MONTH: np.array(months, dtype="datetime64[M]").astype("datetime64[D]"),
            }
            for c, cspec in tspec.columns.items():
                out[c] = _array(cols[c], cspec.type, len(ids))
            monthly[table] = out
        return Applicants(applicants=applicants, monthly=monthly, records=[body for body, _ in parsed])


def _array(values: list[Any], kind: str, n: int) -> np.ndarray:
    if kind in {"string", "category"}:
        return np.array(values, dtype=object) if n else np.zeros(0, dtype=object)
    if kind == "date":
        return np.array(values, dtype="datetime64[D]") if n else np.zeros(0, dtype="datetime64[D]")
    if kind == "bool":
        return np.array(values, dtype=bool)
    return np.array(values, dtype=np.float64)
