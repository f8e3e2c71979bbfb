"""Request records -> contract-checked columns, or a 4xx error naming the field and the value.

The checks are derived from the record contract (`configs/contract/*.yaml`), the same one
`data.validate.validate_tables` turns into pandera schemas for offline data: types, ranges, closed
categories, finiteness, first-of-month months and unique (applicant, month). Serving does not call
pandera itself because it costs ~0.3 s for one applicant against a 5 ms budget;
`tests/test_serving_input.py` checks that both accept and reject the same records.

On top of the contract, a request must be scoreable now: months must lie inside the feature
lookback window before the application month, nothing may be dated in the future, and the label is
not an input.

Two paths, one answer: `parse` first tries a column-wise check of the whole request (a few numpy
and C-level passes per column, ~10x cheaper than checking value by value). It accepts only
input that the value-by-value checks accept, and builds the same columns from it; anything it does
not accept outright goes to the value-by-value checks, which are the reference and name every error.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from govrisk.data.contract import MONTH, ColumnSpec, Contract
from govrisk.data.months import month_number, month_of, months_since_1970

MAX_ERRORS = 20  # listed per response; enough to fix a request, bounded for a hostile one
# ASCII digits only: `\d` also matches full-width and other Unicode digits, which `int` reads
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}(-01)?$")
_MAX_STRING = 256
_ECHO = reprlib.Repr()  # a bounded summary of a container, whatever its size or depth
_ECHO.maxlevel, _ECHO.maxdict, _ECHO.maxlist, _ECHO.maxstring, _ECHO.maxother = 2, 4, 4, 60, 60


@dataclass(frozen=True)
class FieldError:
    field: str  # JSON path, e.g. "tax_monthly[3].declared_sales"
    value: Any  # the offending value, JSON-safe
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": safe_text(self.field), "value": self.value, "message": safe_text(self.message)}


class BadInput(Exception):
    """Raised with every field error found (at most MAX_ERRORS)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{safe_text(e.field)}={e.value!r}: {e.message}" for e in errors[:3]))
        self.errors = errors

    def body(self) -> dict[str, Any]:
        first = self.errors[0].as_dict()
        return {
            "error": "bad_input",
            "field": first["field"],
            "value": first["value"],
            "message": f"{first['field']}: {first['message']} (got {_show(first['value'])})",
            "errors": [e.as_dict() for e in self.errors[:MAX_ERRORS]],
        }


def valid_text(text: str) -> bool:
    """True unless `text` holds a lone surrogate (json.loads reads `"\\ud800"` into one): such text has
    no UTF-8 form, so it could be neither hashed, digested, logged nor echoed back."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(text: str) -> str:
    """`text` with any lone surrogate written as its escape (`\\ud800`), so it renders as UTF-8."""
    return text if valid_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any) -> Any:
    """The value as it can be echoed back in a JSON error (NaN and infinities as text, long text cut,
    lone surrogates escaped, containers summarised at bounded cost whatever their size or depth)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        value = safe_text(value)
        return value if len(value) <= 80 else value[:77] + "..."
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return f"{value:.6e}" if value.bit_length() < 1000 else "an integer of more than 300 digits"
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        text = _ECHO.repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}>"
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
        # The fast path's per-schema plan: exact key sets, and a getter per column for row values.
        self._applicant_keys = frozenset(self.applicant_columns)
        self._top_keys = frozenset({"applicant", *contract.monthly})
        self._row_keys = {
            t: (frozenset({MONTH, *s.columns}), frozenset({MONTH, contract.key, *s.columns}))
            for t, s in contract.monthly.items()
        }
        self._row_getters = {
            t: [operator.itemgetter(c) for c in (MONTH, *s.columns)] for t, s in contract.monthly.items()
        }
        self._numeric = {
            "applicant": _NumericPlan.of(self.applicant_columns),
            **{t: _NumericPlan.of(ts.columns) for t, ts in contract.monthly.items()},
        }
        self._not_after = [(c, s.not_after) for c, s in self.applicant_columns.items() if s.not_after]
        self._categories = {
            c: frozenset(s.categories or ())
            for c, s in [*self.applicant_columns.items()]
            + [(f"{t}.{c}", s) for t, ts in contract.monthly.items() for c, s in ts.columns.items()]
            if s.type == "category" and not s.open
        }

    # --- one value ------------------------------------------------------------------------------
    def _value(self, path: str, spec: ColumnSpec, v: Any, errors: list[FieldError]) -> Any:
        """The checked value (dates as datetime.date), or None after appending an error."""

        def bad(message: str) -> None:
            errors.append(FieldError(path, json_safe(v), message))

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
            if not valid_text(v):
                bad("must be valid Unicode text (no lone surrogate such as \\ud800)")
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
                d = dt.date.fromisoformat(v)
            except ValueError:
                bad("is not a calendar date")
                return None
            if spec.min_date is not None and d < spec.min_date:
                bad(f"must be on or after {spec.min_date} (the contract's plausible range)")
                return None
            if spec.max_date is not None and d > spec.max_date:
                bad(f"must be on or before {spec.max_date} (the contract's plausible range)")
                return None
            return d
        # float / int
        if isinstance(v, bool) or not isinstance(v, int | float):
            bad(f"must be a number ({t})")
            return None
        try:
            x = float(v)
        except OverflowError:  # an integer beyond float range, e.g. 1 followed by 400 zeros
            x = math.inf
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
            errors.append(FieldError(path, json_safe(v), "must be a month 'YYYY-MM' or 'YYYY-MM-01'"))
            return None
        year, month = int(v[:4]), int(v[5:7])
        if not 1 <= month <= 12:
            errors.append(FieldError(path, v, "is not a calendar month"))
            return None
        return months_since_1970(year, month)

    # --- one applicant --------------------------------------------------------------------------
    def _applicant(
        self, body: Any, prefix: str, today: dt.date, errors: list[FieldError]
    ) -> tuple[dict[str, Any], dict[str, list[tuple[int, dict[str, Any]]]]] | None:
        if not isinstance(body, Mapping):
            errors.append(FieldError(prefix.rstrip(".") or "body", json_safe(body), "must be a JSON object"))
            return None
        allowed = {"applicant", *self.contract.monthly}
        for k in body:
            if k not in allowed:
                errors.append(
                    FieldError(
                        f"{prefix}{k}", json_safe(body[k]), f"unknown field; expected {sorted(allowed)}"
                    )
                )
        a = body.get("applicant")
        if not isinstance(a, Mapping):
            errors.append(FieldError(f"{prefix}applicant", json_safe(a), "must be a JSON object"))
            return None
        label = self.contract.applicants.label
        row: dict[str, Any] = {}
        for k in a:
            if k == label:
                errors.append(
                    FieldError(f"{prefix}applicant.{k}", json_safe(a[k]), "the label is not an input")
                )
            elif k not in self.applicant_columns:
                errors.append(
                    FieldError(f"{prefix}applicant.{k}", json_safe(a[k]), "unknown field of the applicant")
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
            app_month = month_of(app_date)
        for col, spec in self.applicant_columns.items():
            v = row.get(col)
            if spec.type == "date" and col != date_col and isinstance(v, dt.date) and v > today:
                errors.append(
                    FieldError(f"{prefix}applicant.{col}", a[col], f"is in the future (today {today})")
                )
            elif spec.not_after and isinstance(v, dt.date) and v > (row.get(spec.not_after) or v):
                later = f"is after {spec.not_after} ({row[spec.not_after]})"
                errors.append(FieldError(f"{prefix}applicant.{col}", a[col], later))

        now_month = month_of(today)
        monthly: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        key = self.contract.key
        for table, tspec in self.contract.monthly.items():
            rows = body.get(table, [])
            path = f"{prefix}{table}"
            if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
                errors.append(FieldError(path, json_safe(rows), "must be a JSON array of monthly records"))
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
                    errors.append(FieldError(rp, json_safe(r), "must be a JSON object"))
                    continue
                for k in r:
                    if k == key:
                        if r[k] != a.get(key):
                            errors.append(
                                FieldError(
                                    f"{rp}.{k}", json_safe(r[k]), "differs from applicant.applicant_id"
                                )
                            )
                    elif k != MONTH and k not in tspec.columns:
                        errors.append(FieldError(f"{rp}.{k}", json_safe(r[k]), f"unknown field of {table}"))
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
        fast = self.parse_columns(bodies, today=today)
        return fast if fast is not None else self.parse_values(bodies, prefix=prefix, today=today)

    def parse_values(self, bodies: Sequence[Any], *, prefix: str = "", today: dt.date) -> Applicants:
        """The reference checks, value by value: every error found, or the columns."""
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

    # --- the column-wise fast path ----------------------------------------------------------------
    def parse_columns(self, bodies: Sequence[Any], *, today: dt.date) -> Applicants | None:
        """The columns of `bodies` when every check passes column-wise, else None (never an error).

        Accepts a subset of what `parse_values` accepts (exact JSON types, exact key sets) and builds
        the same arrays; `tests/test_serving_input.py` checks both on valid and mutated requests.
        """
        if not bodies:
            return None
        top, app_keys = self._top_keys, self._applicant_keys
        apps = []
        for body in bodies:
            if type(body) is not dict or not body.keys() <= top:
                return None
            a = body.get("applicant")
            if type(a) is not dict or a.keys() != app_keys:
                return None
            apps.append(a)
        key = self.contract.key
        date_col = self.contract.applicants.application_date
        columns = {col: [a[col] for a in apps] for col in self.applicant_columns}
        applicants = self._checked_columns(columns, self.applicant_columns, "applicant", "", today)
        if applicants is None:
            return None
        for col, other in self._not_after:
            if (applicants[col] > applicants[other]).any():
                return None
        ids = applicants[key]
        if len(set(ids.tolist())) != len(ids):
            return None
        app_month = month_number(applicants[date_col])
        now_month = month_of(today)

        monthly: dict[str, dict[str, np.ndarray]] = {}
        for table, tspec in self.contract.monthly.items():
            plain, keyed = self._row_keys[table]
            rows: list[dict[str, Any]] = []
            counts = np.zeros(len(apps), dtype=np.int64)
            for i, body in enumerate(bodies):
                recs = body.get(table, [])
                if type(recs) is not list or len(recs) > self.lookback:
                    return None
                rows.extend(recs)
                counts[i] = len(recs)
            if rows and set(map(type, rows)) != {dict}:
                return None
            if sum(map(len, rows)) != len(rows) * len(plain):
                # some record has other keys: only the applicant's own key (matching) is allowed
                owners = np.repeat(np.arange(len(apps)), counts).tolist()
                for r, i in zip(rows, owners, strict=True):
                    ks = r.keys()
                    if ks != plain and (ks != keyed or r[key] != apps[i][key]):
                        return None
            # Rows -> columns in C, one list per column (no tuple per row for the collector to track).
            # Every row holding every key (else KeyError) and no more keys in all than that (the sum
            # above) means each row has exactly the contract's keys.
            try:
                values = [list(map(get, rows)) for get in self._row_getters[table]]
            except KeyError:
                return None
            months = self._checked_months(values[0])
            if months is None:
                return None
            am = np.repeat(app_month, counts)
            m = months.astype(np.int64)
            if not ((m <= now_month) & (m < am) & (m >= am - self.lookback)).all():
                return None
            owner = np.repeat(np.arange(len(apps), dtype=np.int64), counts)
            # one record per applicant and month: a count per (applicant, months before), a cell each
            # (1..lookback months before, as checked above)
            if len(m) and np.bincount(owner * self.lookback + (am - m - 1)).max() > 1:
                return None
            columns = {col: values[j] for j, col in enumerate(tspec.columns, start=1)}
            checked = self._checked_columns(columns, tspec.columns, table, f"{table}.", today)
            if checked is None:
                return None
            monthly[table] = {key: np.repeat(ids, counts), MONTH: months.astype("datetime64[D]"), **checked}
        return Applicants(applicants=applicants, monthly=monthly, records=list(bodies))

    def _checked_columns(
        self,
        columns: dict[str, Sequence[Any]],
        specs: Mapping[str, ColumnSpec],
        table: str,
        prefix: str,
        today: dt.date,
    ) -> dict[str, np.ndarray] | None:
        """The columns of one table, in contract order; None if any value fails its check.

        The numeric columns are checked together as one [C, M] matrix: a few numpy calls per table
        instead of per column (one applicant's request costs mostly call overhead).
        """
        plan = self._numeric[table]
        x = plan.check([columns[c] for c in plan.names])
        if x is None:
            return None
        out: dict[str, np.ndarray] = {}
        for col, spec in specs.items():
            if col in plan.row:
                out[col] = x[plan.row[col]]
                continue
            arr = self._checked_column(list(columns[col]), spec, f"{prefix}{col}", today)
            if arr is None:
                return None
            out[col] = arr
        return out

    def _checked_column(
        self, vals: list[Any], spec: ColumnSpec, name: str, today: dt.date
    ) -> np.ndarray | None:
        """One column checked as `_value` checks each value, as `_array` builds it; None if any fails."""
        t = spec.type
        types = set(map(type, vals))
        if t in {"string", "category"}:
            if vals and types != {str}:
                return None
            if vals and not (min(map(len, vals)) >= 1 and max(map(len, vals)) <= _MAX_STRING):
                return None
            allowed = self._categories.get(name)
            if allowed is not None and not allowed.issuperset(vals):
                return None
            if allowed is None and not all(map(valid_text, vals)):  # a closed set holds valid text
                return None
            return _array(vals, t, len(vals))
        if t == "bool":
            return _array(vals, t, len(vals)) if not vals or types == {bool} else None
        if t == "date":
            if vals and types != {str}:
                return None
            dates = []
            for v in vals:
                if not _DATE.match(v):
                    return None
                try:
                    d = dt.date.fromisoformat(v)
                except ValueError:
                    return None
                if d > today:  # no date of the applicant may lie in the future
                    return None
                if (spec.min_date is not None and d < spec.min_date) or (
                    spec.max_date is not None and d > spec.max_date
                ):
                    return None
                dates.append(d)
            return _array(dates, t, len(dates))
        if vals and not types <= {int, float}:  # bool is a type of its own here: refused, as by `_value`
            return None
        try:
            x = np.fromiter(map(float, vals), dtype=np.float64, count=len(vals))  # float(v), as `_value`
        except OverflowError:
            return None
        if not np.isfinite(x).all():
            return None
        if t == "int" and not (np.floor(x) == x).all():
            return None
        if spec.min is not None and not (x > spec.min if spec.exclusive_min else x >= spec.min).all():
            return None
        if spec.max is not None and not (x <= spec.max).all():
            return None
        return x

    @staticmethod
    def _checked_months(vals: list[Any]) -> np.ndarray | None:
        """'YYYY-MM' or 'YYYY-MM-01' strings -> datetime64[M], as `_month` reads them; None if any fails."""
        if not vals:
            return np.zeros(0, dtype="datetime64[M]")
        # A batch names a few dozen distinct months thousands of times: each is checked and read once.
        try:
            distinct = list(dict.fromkeys(vals))  # in first-seen order
        except TypeError:  # a list or an object is no month
            return None
        if any(type(v) is not str for v in distinct) or not all(map(_MONTH.match, distinct)):
            return None
        try:  # numpy refuses months outside 1..12 and digits other than ASCII ones: the slow path decides
            months = np.array([v[:7] for v in distinct], dtype="datetime64[M]")
        except (ValueError, TypeError, OverflowError):
            return None
        if len(distinct) == len(vals):  # no month twice (one applicant): already in order
            return months
        index = {v: i for i, v in enumerate(distinct)}
        return months[np.fromiter(map(index.__getitem__, vals), dtype=np.intp, count=len(vals))]


@dataclass(frozen=True)
class _NumericPlan:
    """The numeric columns of one table and their contract bounds, as arrays for a [C, M] check."""

    names: list[str]
    row: dict[str, int]
    whole: np.ndarray  # [C] bool: type int
    lo: np.ndarray  # [C, 1], -inf without a minimum
    hi: np.ndarray  # [C, 1], +inf without a maximum
    exclusive: np.ndarray  # [C, 1] bool: the minimum is exclusive

    @classmethod
    def of(cls, specs: Mapping[str, ColumnSpec]) -> _NumericPlan:
        num = {c: s for c, s in specs.items() if s.type in {"float", "int"}}
        return cls(
            names=list(num),
            row={c: k for k, c in enumerate(num)},
            whole=np.array([s.type == "int" for s in num.values()], dtype=bool),
            lo=np.array([[-np.inf if s.min is None else s.min] for s in num.values()], dtype=np.float64),
            hi=np.array([[np.inf if s.max is None else s.max] for s in num.values()], dtype=np.float64),
            exclusive=np.array([[s.exclusive_min] for s in num.values()], dtype=bool),
        )

    def check(self, columns: list[Sequence[Any]]) -> np.ndarray | None:
        """[C, M] float64 of `float(v)`, as `_value` converts, or None unless every value is an exact
        JSON number (bool is a type of its own here, refused as by `_value`), finite, whole where the
        type is int, and within the bounds."""
        m = len(columns[0]) if columns else 0
        if not m:
            return np.zeros((len(columns), m), dtype=np.float64)
        types: set[type] = set()
        for column in columns:
            types.update(map(type, column))
        if not types <= {int, float}:
            return None
        try:  # numpy converts each int and float as float(v) does, in one C pass over all of them
            x = np.array(columns, dtype=np.float64)
        except OverflowError:
            return None
        if not np.isfinite(x).all():
            return None
        if self.whole.any() and not (np.floor(x[self.whole]) == x[self.whole]).all():
            return None
        above = np.where(self.exclusive, x > self.lo, x >= self.lo)
        return x if (above & (x <= self.hi)).all() else None


def _array(values: list[Any], kind: str, n: int) -> np.ndarray:
    if kind in {"string", "category"}:
        return np.array(values, dtype=object) if n else np.zeros(0, dtype=object)
    if kind == "date":
        return np.array(values, dtype="datetime64[D]") if n else np.zeros(0, dtype="datetime64[D]")
    if kind == "bool":
        return np.array(values, dtype=bool)
    return np.array(values, dtype=np.float64)
