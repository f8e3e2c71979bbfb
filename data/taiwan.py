"""Map the UCI "default of credit card clients" file (Taiwan, 2005) onto `configs/contract/taiwan.yaml`.

One applicant per card holder; the six monthly statements (September back to April 2005) become the
`statements` monthly table, so the same feature and model code runs on real data as on the synthetic
county. See data/real/taiwan/README.md for the source and its quirks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from govrisk.core.errors import InvalidInput
from govrisk.core.hashing import sha256_file
from govrisk.data.contract import MONTH, load_contract
from govrisk.data.store import DatasetWriter
from govrisk.data.validate import validate_tables

PUBLISHED_SHA256 = "420f0278ba235d05b0402a298a3c1e007bbb6bd722c8b234bb3b226847695244"
APPLICATION_DATE = pd.Timestamp("2005-10-01")  # the label is the October 2005 payment
LABEL = "default.payment.next.month"
# Statement k (1 = newest) is month 2005-(10-k); its repayment status is PAY_0, PAY_2, ..., PAY_6
# (the original file has no PAY_1).
STATEMENTS = [
    (pd.Timestamp(2005, 10 - k, 1), f"PAY_{0 if k == 1 else k}", f"BILL_AMT{k}", f"PAY_AMT{k}")
    for k in range(1, 7)
]
SEX = {1: "male", 2: "female"}
# 0, 5 and 6 are undocumented in the original and are kept as "unknown" rather than dropped.
EDUCATION = {
    1: "graduate_school",
    2: "university",
    3: "high_school",
    4: "other",
    0: "unknown",
    5: "unknown",
    6: "unknown",
}
MARRIAGE = {1: "married", 2: "single", 3: "other", 0: "unknown"}
DEFAULT = {0: False, 1: True}
COLUMNS = [  # in the file's order
    "ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE",
    *(pay for _, pay, _, _ in STATEMENTS),
    *(bill for _, _, bill, _ in STATEMENTS),
    *(amt for _, _, _, amt in STATEMENTS),
    LABEL,
]  # fmt: skip
# Codes, counts and ages are whole numbers; money may have cents.
INT_COLUMNS = {"ID", "SEX", "EDUCATION", "MARRIAGE", "AGE", LABEL, *(pay for _, pay, _, _ in STATEMENTS)}
META = {
    "source": "UCI Machine Learning Repository, 'default of credit card clients' (Kaggle column naming), "
    "https://archive.ics.uci.edu/dataset/350/default+of+credit+card+clients",
    "citation": "Yeh, I. C. & Lien, C. H. (2009). The comparisons of data mining techniques for the "
    "predictive accuracy of probability of default of credit card clients. Expert Systems with "
    "Applications, 36(2), 2473-2480. doi:10.1016/j.eswa.2007.12.010",
    "license": "CC BY 4.0",
}


def _where(raw: pd.DataFrame, col: str, bad: pd.Series) -> str:
    """The first bad value with its row ID, and its line in case the ID itself is the bad value."""
    i = int(np.flatnonzero(bad.to_numpy())[0])
    return f"{raw[col].iloc[i]!r} at row ID {raw['ID'].iloc[i]} (line {i + 2})"


def _numbers(raw: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """Every column as numbers; integer-coded columns must hold whole numbers."""
    out = pd.DataFrame(index=raw.index)
    for col in COLUMNS:
        values = pd.to_numeric(raw[col], errors="coerce").astype("float64")
        bad = ~np.isfinite(values)
        if col in INT_COLUMNS:
            bad |= values != np.round(values)
        if bad.any():
            kind = "an integer" if col in INT_COLUMNS else "a number"
            raise InvalidInput(f"{csv}: column {col} must be {kind}, found {_where(raw, col, bad)}")
        out[col] = values.astype("int64") if col in INT_COLUMNS else values
    return out


def _decode(raw: pd.DataFrame, num: pd.DataFrame, col: str, codes: dict[int, Any], csv: Path) -> pd.Series:
    known = num[col].isin(list(codes))
    if not known.all():
        raise InvalidInput(
            f"{csv}: column {col} has undocumented code {_where(raw, col, ~known)}; "
            f"known codes: {sorted(codes)}"
        )
    return num[col].map(codes)


def import_taiwan(csv: Path, *, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Map UCI_Credit_Card.csv onto the taiwan contract and write it to `out`; returns the manifest.

    Refuses (ValueError) a file with a missing column, an undocumented code or any value that breaks
    the contract, naming the column, the value and the row ID. A file whose sha256 differs from the
    published one is imported, with a warning and `sha256_matches_published: false` in the manifest.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"Taiwan credit-card file not found: {csv}")
    sha256 = sha256_file(csv)
    if sha256 != PUBLISHED_SHA256:
        warnings.warn(f"{csv}: sha256 {sha256} differs from the published {PUBLISHED_SHA256}", stacklevel=2)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)  # text first, so bad cells are shown as found
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise InvalidInput(f"{csv}: missing columns {missing}; expected {COLUMNS}")
    num = _numbers(raw, csv)
    ids = "TW" + num["ID"].astype(str).str.zfill(5)
    if ids.duplicated().any():
        raise InvalidInput(f"{csv}: duplicate ID {_where(raw, 'ID', ids.duplicated())}")

    applicants = pd.DataFrame(
        {
            "applicant_id": ids,
            "credit_limit": num["LIMIT_BAL"],
            "sex": _decode(raw, num, "SEX", SEX, csv),
            "education": _decode(raw, num, "EDUCATION", EDUCATION, csv),
            "marriage": _decode(raw, num, "MARRIAGE", MARRIAGE, csv),
            "age": num["AGE"],
            "application_date": APPLICATION_DATE,
            "default_12m": _decode(raw, num, LABEL, DEFAULT, csv),
        }
    )
    statements = pd.concat(
        [
            pd.DataFrame(
                {
                    "applicant_id": ids,
                    MONTH: month,
                    "repayment_status": num[pay],
                    "bill_amount": num[bill],
                    "payment_amount": num[amt],
                }
            )
            for month, pay, bill, amt in STATEMENTS
        ]
    )
    statements = statements.sort_values(["applicant_id", MONTH], kind="stable").reset_index(drop=True)
    applicants = applicants.sort_values("applicant_id", kind="stable").reset_index(drop=True)

    contract = load_contract("taiwan")
    # Check before writing, so a file that breaks the contract (e.g. AGE 12, PAY_3 = 11) never
    # becomes a dataset; the error names the applicant, i.e. the row ID.
    report = validate_tables({"applicants": applicants, "statements": statements}, contract)
    if not report.ok:
        # one line: the first offending value of each failed check, and how many more there are
        shown = "; ".join(
            f"{g.table}.{g.column} {g.check}: {g.examples[0].value!r} (applicant {g.examples[0].applicant})"
            + (f" and {g.count - 1:,} more" if g.count > 1 else "")
            for g in report.groups(examples=1)[:5]
        )
        raise InvalidInput(f"{csv} breaks the {contract.name} contract: {shown}")

    with DatasetWriter(out, contract=contract, overwrite=overwrite) as writer:
        writer.write("applicants", applicants)
        writer.write("statements", statements)
        return writer.close(
            meta={
                **META,
                "input_file": csv.name,
                "input_sha256": sha256,
                "published_sha256": PUBLISHED_SHA256,
                "sha256_matches_published": sha256 == PUBLISHED_SHA256,
            }
        )
