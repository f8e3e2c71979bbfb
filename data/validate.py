"""Validate a dataset against its record contract with pandera.

One `pandera.DataFrameSchema` per table is derived from the contract, so a new column or range in the
YAML is validated without code changes. Validation is lazy: every failure is collected, mapped back to
the applicant it belongs to and reported with the offending value.

Contract types are pandera dtypes of their own (`_ContractType`) rather than fixed numpy dtypes,
because the contract is about values, not storage: an int column may arrive as float64 (Parquet
turns nullable ints into floats), a float column may hold ints, and a date may arrive as ISO text.
Each type check returns a per-element mask, so a bad value is reported with its row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.parquet as pq
from pandera.api.pandas.types import is_field
from pandera.backends.pandas.error_formatters import reshape_failure_cases
from pandera.engines import pandas_engine
from pandera.errors import ParserError, SchemaErrorReason, SchemaErrors

from govrisk.data.contract import MONTH, ColumnSpec, ColumnType, Contract, load_contract
from govrisk.data.store import MANIFEST, changed_files, read_manifest

MAX_ERRORS_PER_CHECK = 1000  # per (table, column, check); the total is still counted
EXAMPLES_PER_CHECK = 5  # examples a grouped report shows per (table, column, check)
_TYPE_REASONS = {SchemaErrorReason.WRONG_DATATYPE, SchemaErrorReason.DATATYPE_COERCION}
_VALUE_REASONS = {SchemaErrorReason.DATAFRAME_CHECK, SchemaErrorReason.CHECK_ERROR}


@dataclass(frozen=True)
class ContractViolation:
    table: str
    column: str
    check: str
    applicant: str | None  # key of the failing row, when the failure belongs to a row
    value: object


@dataclass(frozen=True)
class ViolationGroup:
    """Every violation of one check in one column: how many, and the first few."""

    table: str
    column: str
    check: str
    count: int
    examples: list[ContractViolation]  # at most EXAMPLES_PER_CHECK


@dataclass
class ValidationReport:
    errors: list[ContractViolation]  # at most MAX_ERRORS_PER_CHECK per (table, column, check)
    summary: str
    n_errors: int = 0  # every violation, including those beyond the per-check cap
    rows: dict[str, int] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # per (table, column, check)

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and not self.errors

    def groups(self, examples: int = EXAMPLES_PER_CHECK) -> list[ViolationGroup]:
        """One entry per (table, column, check), in the order found, with its exact count and at
        most `examples` of its violations: a wrong type in one column is one entry, not one per row."""
        first: dict[tuple[str, str, str], list[ContractViolation]] = {}
        for e in self.errors:
            shown = first.setdefault((e.table, e.column, e.check), [])
            if len(shown) < examples:
                shown.append(e)
        counts = self.counts or Counter(first.keys())
        return [ViolationGroup(*g, count=counts.get(g, len(v)), examples=v) for g, v in first.items()]


def _all(s: pd.Series, value: bool) -> pd.Series:
    return pd.Series(value, index=s.index)


def _elementwise(s: pd.Series, ok: Any) -> pd.Series:
    """Per-value test for object columns (mixed Python values); only such columns pay a Python loop."""
    return s.map(lambda x: x is None or (isinstance(x, float) and np.isnan(x)) or bool(ok(x))).astype(bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def _is_integral(x: object) -> bool:
    return _is_number(x) and (not np.isfinite(x) or float(x).is_integer())


def _string_ok(s: pd.Series) -> pd.Series:
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _all(s, pd.api.types.is_string_dtype(dtype.categories.dtype))
    if pd.api.types.is_object_dtype(dtype):
        return _elementwise(s, lambda x: isinstance(x, str))
    return _all(s, pd.api.types.is_string_dtype(dtype))


def _float_ok(s: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(s.dtype):
        return _elementwise(s, _is_number)
    return _all(s, pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype))


def _int_ok(s: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(s.dtype):
        return _elementwise(s, _is_integral)
    if pd.api.types.is_float_dtype(s.dtype):
        # Parquet stores a nullable int as float; accept it when every value is whole. NaN is left to
        # the null check and inf to the finite check, so neither is reported twice.
        return ~np.isfinite(s) | (s == np.floor(s))
    return _all(s, pd.api.types.is_integer_dtype(s.dtype))


def _bool_ok(s: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(s.dtype):
        return _elementwise(s, lambda x: isinstance(x, bool | np.bool_))
    return _all(s, pd.api.types.is_bool_dtype(s.dtype))


def _date_ok(s: pd.Series) -> pd.Series:
    # Text dates were coerced before this runs; text still here failed coercion and was reported then.
    return _all(s, pd.api.types.is_datetime64_any_dtype(s.dtype) or _is_text(s))


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)


_TYPE_CHECKS = {
    "string": _string_ok,
    "category": _string_ok,
    "float": _float_ok,
    "int": _int_ok,
    "bool": _bool_ok,
    "date": _date_ok,
}


class _ContractType(pandas_engine.DataType):
    """A contract column type as a pandera dtype (see the module docstring)."""

    def __init__(self, kind: ColumnType) -> None:
        object.__setattr__(self, "type", np.dtype(object))
        object.__setattr__(self, "kind", kind)

    def check(self, pandera_dtype: Any, data_container: pd.Series | None = None) -> bool | pd.Series:
        if data_container is None or not is_field(data_container):
            return False
        # Nullable dtypes give NA for missing values; those are the null check's to report.
        return _TYPE_CHECKS[self.kind](data_container).fillna(True).astype(bool)

    def try_coerce(self, data_container: pd.Series) -> pd.Series:
        """Dates given as ISO text become datetimes; each unparseable value is a failure case."""
        if self.kind != "date" or not _is_text(data_container):
            return data_container
        parsed = pd.to_datetime(data_container, errors="coerce", format="ISO8601")
        bad = parsed.isna() & data_container.notna()
        if bad.any():
            raise ParserError(
                f"{int(bad.sum())} values are not ISO dates",
                failure_cases=reshape_failure_cases(data_container[bad], ignore_na=False),
            )
        return parsed

    def __str__(self) -> str:
        return self.kind

    def __hash__(self) -> int:
        return hash(("contract", self.kind))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ContractType) and other.kind == self.kind


def _finite(s: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(s.astype("float64")), index=s.index)


def _not_finite(s: pd.Series) -> pd.Series:
    return ~_finite(s)


def _first_of_month(s: pd.Series) -> pd.Series:
    return (s.dt.day == 1) & (s == s.dt.normalize())


def _column(spec: ColumnSpec, *, nullable: bool = False, required: bool = True) -> pa.Column:
    checks: list[pa.Check] = []
    if spec.type in {"float", "int"}:
        checks.append(pa.Check(_finite, name="finite"))
    # Checks are named in the contract's own words ("min 0"), which is what a user fixes.
    # Range checks pass NaN and infinities: the null and finite checks report them, once.
    if spec.min is not None:
        lo = spec.min
        if spec.exclusive_min:
            checks.append(pa.Check(lambda s: _not_finite(s) | (s > lo), error=f"exclusive_min {lo:g}"))
        else:
            checks.append(pa.Check(lambda s: _not_finite(s) | (s >= lo), error=f"min {lo:g}"))
    if spec.max is not None:
        hi = spec.max
        checks.append(pa.Check(lambda s: _not_finite(s) | (s <= hi), error=f"max {hi:g}"))
    if spec.min_date is not None:  # dates are coerced to datetimes before checks run
        checks.append(pa.Check.ge(pd.Timestamp(spec.min_date), error=f"min_date {spec.min_date}"))
    if spec.max_date is not None:
        checks.append(pa.Check.le(pd.Timestamp(spec.max_date), error=f"max_date {spec.max_date}"))
    if spec.type == "category" and not spec.open:
        checks.append(pa.Check.isin(list(spec.categories or ()), error="categories"))
    return pa.Column(
        _ContractType(spec.type),
        checks=checks,
        nullable=nullable,
        required=required,
        coerce=spec.type == "date",
    )


def table_schema(contract: Contract, table: str, known_keys: pd.Series | None = None) -> pa.DataFrameSchema:
    """The pandera schema of one contract table.

    `known_keys` (the applicants' keys) adds the check that every monthly row belongs to an applicant.
    """
    key = contract.key
    if table == "applicants":
        apps = contract.applicants
        columns = {
            name: _column(spec, nullable=name == apps.label, required=name != apps.label)
            for name, spec in apps.columns.items()
        }
        columns[key] = pa.Column(
            _ContractType("string"), unique=True, report_duplicates="exclude_first", nullable=False
        )
        return pa.DataFrameSchema(columns, name=table)
    key_checks = []
    if known_keys is not None:
        keys = pd.Index(known_keys.dropna().unique())
        key_checks.append(pa.Check(lambda s: s.isin(keys), name="known_applicant"))
    columns = {
        key: pa.Column(_ContractType("string"), checks=key_checks),
        MONTH: pa.Column(
            _ContractType("date"), checks=pa.Check(_first_of_month, name="first_of_month"), coerce=True
        ),
    }
    columns.update({name: _column(spec) for name, spec in contract.monthly[table].columns.items()})
    return pa.DataFrameSchema(columns, name=table, unique=[key, MONTH], report_duplicates="exclude_first")


def _plain(value: object) -> object:
    """numpy/pandas scalars as plain Python values, so reports print `-1.0`, not `np.float64(-1.0)`."""
    if isinstance(value, pd.Timestamp):
        return value.date() if value == value.normalize() else value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Collector:
    """Violations, capped per (table, column, check); the counts stay exact."""

    def __init__(self) -> None:
        self.errors: list[ContractViolation] = []
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def add(
        self,
        table: str,
        column: str,
        check: str,
        positions: pd.Series | list[Any],
        values: pd.Series | list[Any],
        keys: np.ndarray | None,
    ) -> None:
        group = (table, column, check)
        room = max(MAX_ERRORS_PER_CHECK - self.counts[group], 0)
        self.counts[group] += len(values)
        for pos, value in zip(_head(positions, room), _head(values, room), strict=True):
            applicant = None
            if keys is not None and pos is not None and not pd.isna(pos) and not pd.isna(keys[int(pos)]):
                applicant = str(keys[int(pos)])
            self.errors.append(ContractViolation(table, column, check, applicant, _plain(value)))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _head(items: pd.Series | list[Any], n: int) -> list[Any]:
    return items.iloc[:n].tolist() if isinstance(items, pd.Series) else list(items)[:n]


def _check_name(check: object) -> str:
    if isinstance(check, pa.Check):
        return str(check.error or check.name)
    return str(check)


def _validate_table(
    df: pd.DataFrame, table: str, schema: pa.DataFrameSchema, key: str, out: _Collector
) -> None:
    df = df.reset_index(drop=True)  # failure-case indexes are then row positions into `keys`
    keys = df[key].to_numpy() if key in df.columns else None
    try:
        schema.validate(df, lazy=True)
    except SchemaErrors as exc:
        errors = exc.schema_errors
    else:
        return
    # Once a column has the wrong type its range/category checks only repeat that, or crash on it.
    mistyped = {
        e.schema.name for e in errors if isinstance(e.schema, pa.Column) and e.reason_code in _TYPE_REASONS
    }
    for err in errors:
        column = err.schema.name if isinstance(err.schema, pa.Column) else None
        cases = err.failure_cases
        if err.reason_code == SchemaErrorReason.COLUMN_NOT_IN_DATAFRAME:
            out.add(table, str(cases), "column_in_dataframe", [None], [None], keys)
        elif err.reason_code == SchemaErrorReason.DUPLICATES and column is None:
            # (key, month) duplicates come as one row per column; report each repeated row's month
            months = cases[cases["column"] == MONTH]
            out.add(table, MONTH, f"unique({key}, {MONTH})", months["index"], months["failure_case"], keys)
        elif column in mistyped and err.reason_code in _VALUE_REASONS:
            continue
        elif isinstance(cases, pd.DataFrame):
            if err.reason_code in _TYPE_REASONS:
                name = f"type {err.schema.dtype}"  # the contract type, e.g. "type date"
            elif err.reason_code == SchemaErrorReason.SERIES_CONTAINS_DUPLICATES:
                name = "unique"
            else:
                name = _check_name(err.check)
            out.add(table, str(column), name, cases["index"], cases["failure_case"], keys)
        else:  # a check that failed as a whole (or raised): the message is all there is
            out.add(table, str(column), _check_name(err.check), [None], [cases], keys)


def _check_not_after(df: pd.DataFrame, contract: Contract, out: _Collector) -> None:
    """The contract's cross-field date rules (`not_after`): a row whose date follows the other one.

    Values that are not dates were reported by the type check; they are left out here."""
    df = df.reset_index(drop=True)
    keys = df[contract.key].to_numpy() if contract.key in df.columns else None
    for col, spec in contract.applicants.columns.items():
        if not spec.not_after or col not in df.columns or spec.not_after not in df.columns:
            continue
        this, other = (
            pd.to_datetime(df[c], errors="coerce", format="ISO8601") for c in (col, spec.not_after)
        )
        late = (this > other).to_numpy()
        if late.any():
            positions = np.flatnonzero(late).tolist()
            out.add("applicants", col, f"not_after {spec.not_after}", positions, this[late], keys)


def validate_tables(
    tables: dict[str, pd.DataFrame], contract: Contract, *, changed: dict[str, str] | None = None
) -> ValidationReport:
    """Validate in-memory tables (raw, not yet cast to the contract types) against `contract`.

    A table missing from `tables` is a violation; tables not in the contract are ignored. `changed`
    (table -> file) lists files whose bytes no longer match their manifest: one violation each.
    """
    out = _Collector()
    for table, file in (changed or {}).items():  # from validate_dataset: the manifest's content hash
        message = f"{file} changed after the dataset was written (sha256 differs from manifest.json)"
        out.add(table, "*", "content_hash", [None], [message], None)
    rows: dict[str, int] = {}
    applicants = tables.get("applicants")
    known = None
    if applicants is not None and contract.key in applicants.columns:
        known = applicants[contract.key]
    for table in contract.tables:
        df = tables.get(table)
        if df is None:
            out.add(table, "*", "table_present", [None], [f"{table}.parquet"], None)
            continue
        rows[table] = len(df)
        _validate_table(df, table, table_schema(contract, table, known), contract.key, out)
        if table == "applicants":
            _check_not_after(df, contract, out)
    summary = "; ".join(f"{t} {n:,} rows" for t, n in rows.items())
    if out.total:
        summary += f"; {out.total:,} violation{'s' if out.total > 1 else ''}"
        if out.total > len(out.errors):
            summary += f" ({len(out.errors):,} listed, at most {MAX_ERRORS_PER_CHECK:,} per check)"
    return ValidationReport(
        errors=out.errors, summary=summary, n_errors=out.total, rows=rows, counts=dict(out.counts)
    )


def validate_dataset(path: Path, *, contract: str | Path | None = None) -> ValidationReport:
    """Validate a dataset folder against `contract` (name or YAML path) or, by default, the contract
    embedded in its manifest. A folder without a manifest validates when `contract` is given."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    manifest = read_manifest(path) if (path / MANIFEST).exists() or contract is None else None
    spec = (
        load_contract(contract)
        if contract is not None
        else Contract.model_validate(manifest["contract_spec"])
    )
    files = {t: m["file"] for t, m in manifest["tables"].items()} if manifest else {}
    changed = {}
    if manifest:  # bytes that no longer match the manifest (a missing file is `table_present`'s)
        _, names = changed_files(path, manifest)
        changed = {t: f for t, f in files.items() if f in names and (path / f).is_file()}
    tables = {}
    for table in spec.tables:
        file = path / files.get(table, f"{table}.parquet")
        if file.exists():
            # raw Arrow types, not the contract's: a wrongly typed column must reach the checks as it is
            tables[table] = pq.read_table(file).to_pandas(date_as_object=False)
    return validate_tables(tables, spec, changed=changed)
