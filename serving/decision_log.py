"""The decision log: every decision, committed before its response is sent.

SQLAlchemy 2 Core over SQLite (the embedded default, WAL mode) or PostgreSQL (production, by URL).
`write` commits in the calling thread, on that thread's own connection, and returns once the rows
are committed, so an acknowledged response implies a committed record. The service calls it once
per batch from the thread that decided the batch (a /score micro-batch of concurrent requests, or
one /score_batch request): concurrent requests of a worker still share one transaction and one
fsync. A hand-off to a writer thread cost more than the commit itself (one row: 160 us through a
writer thread, 57 us in the caller).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


def _columns() -> list[sa.Column]:
    """One column per logged field of `govrisk.core.records.DecisionRecord` (its `LOG_COLUMNS`, in
    order; tests/test_records.py fails if the two differ), each with its SQL type."""
    return [
        sa.Column("decision_id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("applicant_hash", sa.String(64), nullable=False, index=True),
        sa.Column("input_digest", sa.String(64), nullable=False),
        sa.Column("application_date", sa.Date, nullable=True),
        sa.Column("routing_mode", sa.String(16), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("hard_rule", sa.String(64), nullable=True),
        sa.Column("pd", sa.Float, nullable=False),
        sa.Column("grade", sa.String(8), nullable=False),
        sa.Column("rate", sa.Float, nullable=True),
        sa.Column("credit_limit", sa.Float, nullable=True),
        sa.Column("reason_codes", sa.Text, nullable=False),  # JSON list
        sa.Column("champion_model", sa.String(128), nullable=False),
        sa.Column("champion_pd", sa.Float, nullable=False),
        sa.Column("champion_score", sa.Float, nullable=True),
        sa.Column("champion_grade", sa.String(8), nullable=False),
        sa.Column("challenger_model", sa.String(128), nullable=True),
        sa.Column("challenger_status", sa.String(16), nullable=False),
        sa.Column("challenger_pd", sa.Float, nullable=True),
        sa.Column("challenger_grade", sa.String(8), nullable=True),
        sa.Column("challenger_decision", sa.String(8), nullable=True),  # what it would have decided
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("features_ms", sa.Float, nullable=False),
        sa.Column("champion_ms", sa.Float, nullable=False),
        sa.Column("challenger_ms", sa.Float, nullable=True),
        sa.Column("total_ms", sa.Float, nullable=False),
    ]


def decisions_table(name: str = "decisions", schema: str | None = None) -> sa.Table:
    return sa.Table(name, sa.MetaData(schema=schema), *_columns())


def make_engine(url: str, *, sqlite_synchronous: str = "full") -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout (several workers share the file) and the
    chosen fsync level on every connection."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class DecisionLog:
    """Durable decision records; `write` returns once its rows are committed (see the module doc)."""

    def __init__(
        self,
        *,
        url: str,
        table: str = "decisions",
        schema: str | None = None,
        sqlite_synchronous: str = "full",
    ) -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
        self.table = decisions_table(table, schema)
        self.table.metadata.create_all(self.engine, checkfirst=True)
        self._insert = self.table.insert()  # compiled once, cached by SQLAlchemy
        self._local = threading.local()  # each writing thread's connection, held for its lifetime
        self._open: set[sa.Connection] = set()  # every thread's connection, for `close`
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """The log's location, without a password."""
        return f"{self.engine.url.render_as_string(hide_password=True)} table {self.table.fullname}"

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Commit `rows` in one transaction; raises (nothing committed) if the database refuses."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = self.engine.connect()
                with self._lock:
                    self._open.add(conn)
            with conn.begin():
                conn.execute(self._insert, list(rows))
        except Exception:
            if conn is not None:  # a broken connection is replaced at this thread's next write
                self._local.conn = None
                with self._lock:
                    self._open.discard(conn)
                with contextlib.suppress(Exception):
                    conn.close()
            raise

    def reachable(self) -> bool:
        """Whether the database answers now (the readiness probe: no decision can be acknowledged
        without it)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as e:
            log.warning("decision log %s unreachable: %s", self.where, e)
            return False
        return True

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    def ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(self.table.c.request_id))}

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(Exception):
                    conn.close()
            self._open.clear()
        self.engine.dispose()


def export_parquet(*, url: str, out: Path, table: str = "decisions", schema: str | None = None) -> int:
    """Write the whole log to a Parquet file (for the governance report); returns the row count."""

    engine = make_engine(url)
    try:
        t = decisions_table(table, schema)
        with engine.connect() as conn:
            df = pd.read_sql(sa.select(t).order_by(t.c.created_at, t.c.decision_id), conn)
    finally:
        engine.dispose()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return len(df)
