"""Contract validation: a tiny hand-built county dataset, valid, then broken one way per test."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.data import store
from govrisk.data import validate as validate_module
from govrisk.data.contract import load_contract
from govrisk.data.store import MANIFEST, DatasetWriter
from govrisk.data.validate import ContractViolation, ValidationReport, validate_dataset, validate_tables

COUNTY = load_contract("county")
IDS = ["A001", "A002", "A003"]
MONTHS = pd.to_datetime(["2019-10-01", "2019-11-01", "2019-12-01"])


def county_tables() -> dict[str, pd.DataFrame]:
    """Three applicants with three months of tax and social-security records each, all valid."""
    applicants = pd.DataFrame(
        {
            "applicant_id": IDS,
            "entity_type": ["micro_enterprise", "sole_proprietor", "family_farm"],
            "industry": ["tcm_herbs", "retail", "agriculture"],
            "township": ["T01", "T02", "T-new"],  # open category: any code is fine
            "registration_date": pd.to_datetime(["2012-03-15", "2018-07-01", "2005-01-20"]),
            "registered_capital": [500_000.0, 30_000.0, 0.0],
            "legal_rep_age": [45, 33, 61],
            "property_count": [1, 0, 3],
            "property_value": [800_000.0, 0.0, 1_200_000.0],
            "has_mortgage": [True, False, True],
            "abnormal_operation_flag": [False, False, True],
            "admin_penalties": [0, 0, 2],
            "application_date": pd.to_datetime(["2020-01-10", "2020-02-03", "2020-01-20"]),
            "requested_amount": [200_000.0, 50_000.0, 300_000.0],
            "default_12m": [False, False, True],
        }
    )
    n = len(IDS) * len(MONTHS)
    keys = {"applicant_id": np.repeat(IDS, len(MONTHS)), "month": np.tile(MONTHS, len(IDS))}
    tax = pd.DataFrame(
        {
            **keys,
            "taxpayer_type": ["general"] * 3 + ["small_scale"] * 6,
            "declared_sales": np.linspace(10_000.0, 90_000.0, n),
            "vat_paid": np.linspace(100.0, 900.0, n),
            "income_tax_paid": [0.0] * n,
            "invoice_count": np.arange(n),
            "invoice_amount": np.linspace(5_000.0, 45_000.0, n),
            "filed_on_time": [True] * (n - 1) + [False],
            "zero_declaration": [False] * n,
            "tax_arrears": [0.0] * (n - 1) + [1_500.0],
            "penalty_flag": [False] * n,
        }
    )
    social = pd.DataFrame(
        {
            **keys,
            "insured_headcount": [3] * n,
            "contribution_base": [4_000.0] * n,
            "contributions_paid": [1_200.0] * n,
            "arrears_flag": [False] * n,
            "new_hires": [0] * n,
            "separations": [0] * n,
        }
    )
    return {"applicants": applicants, "tax_monthly": tax, "social_security_monthly": social}


def write_county(path: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write valid tables with DatasetWriter (which casts to the contract types)."""
    with DatasetWriter(path, contract=COUNTY) as w:
        for table, df in tables.items():
            w.write(table, df)
        w.close()
    return path


def break_table(path: Path, table: str, df: pd.DataFrame) -> None:
    """Replace one table's Parquet file by hand, bypassing the writer's casts (as a foreign tool would).

    The manifest's hashes are recorded again, so only the contract breaks (changed bytes are a
    violation of their own: tests/test_cli_errors.py)."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path / f"{table}.parquet")
    manifest = json.loads((path / MANIFEST).read_text())
    files = [m["file"] for m in manifest["tables"].values()]
    manifest["content_hash"], digests = store._digests(path, files)
    for m in manifest["tables"].values():
        m["sha256"] = digests[m["file"]]
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def county(tmp_path: Path) -> Path:
    return write_county(tmp_path / "county", county_tables())


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def find(report: ValidationReport, table: str, column: str) -> list[ContractViolation]:
    return [e for e in report.errors if e.table == table and e.column == column]


def test_valid_dataset(county: Path) -> None:
    report = validate_dataset(county)
    assert report.ok, report.errors
    for part in ("applicants 3 rows", "tax_monthly 9 rows", "social_security_monthly 9 rows"):
        assert part in report.summary
    code, output = cli("data", "validate", str(county))
    assert code == 0, output
    assert "valid" in output


def _duplicate_month(t: dict[str, pd.DataFrame]) -> None:
    t["tax_monthly"] = pd.concat([t["tax_monthly"], t["tax_monthly"].iloc[[4]]], ignore_index=True)


def _negative_amount(t: dict[str, pd.DataFrame]) -> None:
    t["tax_monthly"].loc[4, "declared_sales"] = -50.0


def _unknown_applicant(t: dict[str, pd.DataFrame]) -> None:
    t["social_security_monthly"].loc[0, "applicant_id"] = "Z999"


def _unparseable_date(t: dict[str, pd.DataFrame]) -> None:
    t["applicants"]["registration_date"] = ["2012-03-15", "2018-07-01", "2005-13-45"]


def _missing_column(t: dict[str, pd.DataFrame]) -> None:
    t["tax_monthly"] = t["tax_monthly"].drop(columns="vat_paid")


def _unknown_category(t: dict[str, pd.DataFrame]) -> None:
    t["applicants"].loc[1, "industry"] = "mining"


def _nan_float(t: dict[str, pd.DataFrame]) -> None:
    t["applicants"].loc[0, "property_value"] = np.nan


def _mid_month(t: dict[str, pd.DataFrame]) -> None:
    t["social_security_monthly"].loc[8, "month"] = pd.Timestamp("2019-12-15")


def _same(a: object, b: object) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


# (break, table, column, check contains, applicant, value)
BREAKS: dict[str, tuple[Callable[[dict[str, pd.DataFrame]], None], str, str, str, str | None, object]] = {
    "duplicate_month": (_duplicate_month, "tax_monthly", "month", "unique", "A002", date(2019, 11, 1)),
    "negative_amount": (_negative_amount, "tax_monthly", "declared_sales", "min 0", "A002", -50.0),
    "unknown_applicant": (_unknown_applicant, "social_security_monthly", "applicant_id", "known_applicant", "Z999", "Z999"),
    "unparseable_date": (_unparseable_date, "applicants", "registration_date", "type", "A003", "2005-13-45"),
    "missing_column": (_missing_column, "tax_monthly", "vat_paid", "column_in_dataframe", None, None),
    "unknown_category": (_unknown_category, "applicants", "industry", "categories", "A002", "mining"),
    "nan_float": (_nan_float, "applicants", "property_value", "not_nullable", "A001", float("nan")),
    "mid_month": (_mid_month, "social_security_monthly", "month", "first_of_month", "A003", date(2019, 12, 15)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BREAKS))
def test_broken_dataset(county: Path, case: str) -> None:
    mutate, table, column, check, applicant, value = BREAKS[case]
    tables = county_tables()
    mutate(tables)
    break_table(county, table, tables[table])

    report = validate_dataset(county)
    assert not report.ok
    assert len(report.errors) == report.n_errors == 1, report.errors
    (error,) = report.errors
    assert (error.table, error.column, error.applicant) == (table, column, applicant)
    assert check in error.check
    assert _same(error.value, value), error.value
    assert report.summary.endswith("; 1 violation")

    code, output = cli("data", "validate", str(county))
    assert code == 1
    assert column in output


def test_string_dates_that_parse_are_accepted(county: Path) -> None:
    tables = county_tables()
    tables["tax_monthly"]["month"] = tables["tax_monthly"]["month"].dt.strftime("%Y-%m-%d")
    break_table(county, "tax_monthly", tables["tax_monthly"])
    assert validate_dataset(county).ok


def test_type_rules() -> None:
    tables = county_tables()
    apps = tables["applicants"]
    apps["legal_rep_age"] = [45.0, 33.5, 61.0]  # float storage is fine when whole
    apps["registered_capital"] = [1, 2, 3]  # ints in a float column are fine
    apps["requested_amount"] = [1.0, np.inf, 2.0]
    apps["has_mortgage"] = ["yes", "no", "yes"]
    apps["extra_column"] = 1  # extra columns are allowed
    report = validate_tables(tables, COUNTY)
    got = {(e.column, e.check, e.applicant, e.value) for e in report.errors}
    assert got == {
        ("legal_rep_age", "type int", "A002", 33.5),
        ("requested_amount", "finite", "A002", math.inf),
        ("has_mortgage", "type bool", "A001", "yes"),
        ("has_mortgage", "type bool", "A002", "no"),
        ("has_mortgage", "type bool", "A003", "yes"),
    }


def test_label_is_optional_and_nullable() -> None:
    tables = county_tables()
    tables["applicants"]["default_12m"] = [True, None, False]
    assert validate_tables(tables, COUNTY).ok
    tables["applicants"] = tables["applicants"].drop(columns="default_12m")  # scoring data
    assert validate_tables(tables, COUNTY).ok


def test_outcome_period_records_are_valid() -> None:
    """Monthly rows after the application date are outcome-period data, not errors."""
    tables = county_tables()
    tables["applicants"]["application_date"] = pd.Timestamp("2019-10-15")
    assert validate_tables(tables, COUNTY).ok


def test_duplicate_applicant_and_missing_table(county: Path) -> None:
    tables = county_tables()
    tables["applicants"].loc[2, "applicant_id"] = "A001"
    break_table(county, "applicants", tables["applicants"])
    (county / "social_security_monthly.parquet").unlink()
    report = validate_dataset(county)
    got = {(e.table, e.column, e.check, e.applicant) for e in report.errors}
    assert ("applicants", "applicant_id", "unique", "A001") in got
    # A003's monthly rows now belong to no applicant
    assert ("tax_monthly", "applicant_id", "known_applicant", "A003") in got
    assert any(e.table == "social_security_monthly" and e.check == "table_present" for e in report.errors)


def test_folder_without_manifest_needs_a_contract(county: Path) -> None:
    (county / "manifest.json").unlink()
    assert validate_dataset(county, contract="county").ok
    with pytest.raises(FileNotFoundError, match="manifest"):
        validate_dataset(county)


def test_errors_are_capped_but_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_module, "MAX_ERRORS_PER_CHECK", 2)
    tables = county_tables()
    tables["tax_monthly"]["vat_paid"] = -1.0
    report = validate_tables(tables, COUNTY)
    assert report.n_errors == 9 and len(report.errors) == 2
    assert "9 violations" in report.summary


def test_input_frames_are_not_modified() -> None:
    tables = county_tables()
    tables["tax_monthly"]["month"] = tables["tax_monthly"]["month"].dt.strftime("%Y-%m-%d")
    before = tables["tax_monthly"].copy()
    assert validate_tables(tables, COUNTY).ok
    pd.testing.assert_frame_equal(tables["tax_monthly"], before)
