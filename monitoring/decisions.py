"""The decision log as monitoring reads it: from the database (any SQLAlchemy URL) or from the Parquet
file `govrisk decisions export` writes, checked for the columns monitoring needs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# What the live report and the book read from each decision: logged fields of govrisk.core.records.DecisionRecord
# (serving/decision_log.py writes them; tests/test_records.py checks each is one).
NEEDED = (
    "decision_id", "created_at", "applicant_hash", "application_date", "routing_mode", "arm",
    "decided_by", "decision", "hard_rule", "pd", "grade", "champion_model", "champion_pd",
    "challenger_model", "challenger_status", "challenger_pd", "challenger_decision", "policy",
    "features_ms", "champion_ms", "challenger_ms", "total_ms",
)  # fmt: skip


def read_decisions(
    source: str | Path, *, table: str = "decisions", schema: str | None = None
) -> pd.DataFrame:
    """Every logged decision, oldest first. `source` is a Parquet file or a database URL
    (`sqlite:///...`, `postgresql+psycopg://...`)."""
    text = str(source)
    if "://" in text:
        # Imported here: reading an exported Parquet log needs no database driver (the [serve] extra).
        import sqlalchemy as sa

        from govrisk.serving.decision_log import decisions_table, make_engine

        engine = make_engine(text)
        try:
            t = decisions_table(table, schema)
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(table, schema=schema):
                    raise ValueError(f"decision log {text}: no table {table!r}")
                df = pd.read_sql(sa.select(t).order_by(t.c.created_at, t.c.decision_id), conn)
        finally:
            engine.dispose()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"decision log not found: {path} (a Parquet file or a database URL)")
        if path.suffix != ".parquet":
            raise ValueError(f"decision log {path}: expected a .parquet file or a database URL")
        df = pd.read_parquet(path)
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"decision log {text}: missing columns {missing}")
    if df.empty:
        raise ValueError(f"decision log {text}: no decisions")
    df["application_date"] = pd.to_datetime(df["application_date"])
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df.sort_values(["created_at", "decision_id"], kind="stable").reset_index(drop=True)


def first_decisions(log: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One decision per application (applicant hash and application date): the first one; a repeat
    is a retry or a re-submission of the same application. Returns the rows and how many were
    dropped."""
    first = log.drop_duplicates(["applicant_hash", "application_date"], keep="first").reset_index(drop=True)
    return first, len(log) - len(first)
