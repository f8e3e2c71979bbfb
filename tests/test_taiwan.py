"""The Taiwan adapter: the shipped UCI file maps onto the taiwan contract; bad files are refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.data.store import read_dataset
from govrisk.data.taiwan import PUBLISHED_SHA256, import_taiwan
from govrisk.data.validate import validate_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every edited copy differs from the published file; that warning is the subject of one test only.
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published:UserWarning")

SHIPPED = REPO_ROOT / "data" / "real" / "taiwan" / "UCI_Credit_Card.csv"


@pytest.fixture(scope="module")
def taiwan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("taiwan") / "taiwan"
    import_taiwan(SHIPPED, out=out)
    return out


@pytest.fixture
def small_csv(tmp_path: Path) -> pd.DataFrame:
    """The first 20 rows of the shipped file, as text, for breaking."""
    return pd.read_csv(SHIPPED, nrows=20, dtype=str)


def test_shipped_file_imports_and_validates(taiwan: Path) -> None:
    report = validate_dataset(taiwan)
    assert report.ok, report.errors[:5]
    ds = read_dataset(taiwan)
    assert len(ds.applicants) == 30_000
    assert len(ds.tables["statements"]) == 180_000
    assert round(ds.applicants["default_12m"].mean() * 100, 2) == 22.12
    assert ds.manifest["contract"]["name"] == "taiwan"
    meta = ds.manifest["meta"]
    assert meta["input_sha256"] == PUBLISHED_SHA256 and meta["sha256_matches_published"] is True
    assert meta["license"] == "CC BY 4.0" and "Yeh" in meta["citation"]

    code = CliRunner().invoke(app, ["data", "validate", str(taiwan)])
    assert code.exit_code == 0, code.output


def test_applicant_mapping(taiwan: Path) -> None:
    ds = read_dataset(taiwan)
    first = ds.applicants.iloc[0].to_dict()
    # ID 1: LIMIT_BAL 20000, SEX 2, EDUCATION 2, MARRIAGE 1, AGE 24, default 1
    assert first == {
        "applicant_id": "TW00001",
        "credit_limit": 20_000.0,
        "sex": "female",
        "education": "university",
        "marriage": "married",
        "age": 24,
        "application_date": pd.Timestamp("2005-10-01"),
        "default_12m": True,
    }
    st = ds.tables["statements"]
    rows = st[st["applicant_id"] == "TW00001"].set_index("month")
    assert list(rows.index) == list(pd.date_range("2005-04-01", "2005-09-01", freq="MS"))
    # September is PAY_0 / BILL_AMT1 / PAY_AMT1; April is PAY_6 / BILL_AMT6 / PAY_AMT6
    sept, aug, apr = rows.loc["2005-09-01"], rows.loc["2005-08-01"], rows.loc["2005-04-01"]
    assert (sept["repayment_status"], sept["bill_amount"], sept["payment_amount"]) == (2, 3913.0, 0.0)
    assert (aug["repayment_status"], aug["bill_amount"], aug["payment_amount"]) == (2, 3102.0, 689.0)
    assert (apr["repayment_status"], apr["bill_amount"], apr["payment_amount"]) == (-2, 0.0, 0.0)
    # undocumented codes are kept as "unknown"
    assert set(ds.applicants["education"]) == {
        "graduate_school",
        "university",
        "high_school",
        "other",
        "unknown",
    }
    assert set(ds.applicants["marriage"]) == {"married", "single", "other", "unknown"}
    # sorted by applicant, then month
    assert st[["applicant_id", "month"]].equals(
        st[["applicant_id", "month"]].sort_values(["applicant_id", "month"])
    )


def test_reimport_is_byte_identical(taiwan: Path, tmp_path: Path) -> None:
    manifest = import_taiwan(SHIPPED, out=tmp_path / "again")
    assert manifest["content_hash"] == read_dataset(taiwan, tables=["applicants"]).manifest["content_hash"]
    with pytest.raises(FileExistsError):
        import_taiwan(SHIPPED, out=tmp_path / "again")


def test_missing_column_is_refused(small_csv: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "cut.csv"
    small_csv.drop(columns="BILL_AMT3").to_csv(csv, index=False)
    with pytest.raises(ValueError, match="BILL_AMT3"):
        import_taiwan(csv, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_undocumented_code_is_refused(small_csv: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "sex3.csv"
    small_csv.loc[4, "SEX"] = "3"  # row ID 5
    small_csv.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"SEX has undocumented code '3' at row ID 5"):
        import_taiwan(csv, out=tmp_path / "out")


def test_bad_cell_is_refused(small_csv: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    small_csv.loc[2, "BILL_AMT1"] = "n/a"
    small_csv.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"BILL_AMT1 must be a number, found 'n/a' at row ID 3"):
        import_taiwan(csv, out=tmp_path / "out")


def test_contract_break_is_refused(small_csv: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "young.csv"
    small_csv.loc[6, "AGE"] = "12"
    small_csv.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"applicants\.age min 18: 12 \(applicant TW00007\)"):
        import_taiwan(csv, out=tmp_path / "out")


def test_changed_file_is_imported_and_flagged(small_csv: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "small.csv"
    small_csv.to_csv(csv, index=False)
    with pytest.warns(UserWarning, match="differs from the published"):
        manifest = import_taiwan(csv, out=tmp_path / "out")
    assert manifest["meta"]["sha256_matches_published"] is False
    assert manifest["tables"]["statements"]["rows"] == 120
    assert validate_dataset(tmp_path / "out").ok


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        import_taiwan(tmp_path / "nope.csv", out=tmp_path / "out")
