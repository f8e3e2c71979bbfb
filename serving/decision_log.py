"""The decision log: every decision, committed before its response is sent.

SQLAlchemy 2 Core over SQLite (the embedded default, WAL mode) or PostgreSQL (production, by URL).
Writes go through one writer thread that commits whatever has queued up in one transaction
(group commit): under load many decisions share one fsync, and each caller still waits for the
commit of its own rows before it answers, so an acknowledged response implies a committed record.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)
GROUP_MAX = 512  # rows per transaction at most


def _columns() -> list[sa.Column]:
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
    """Durable decision records with group commit; `write` returns once its rows are committed."""

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
        self._queue: queue.Queue[tuple[list[dict[str, Any]], Future[None]] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._writer.start()

    @property
    def where(self) -> str:
        """The log's location, without a password."""
        return f"{self.engine.url.render_as_string(hide_password=True)} table {self.table.fullname}"

    def submit(self, rows: Sequence[dict[str, Any]]) -> Future[None]:
        """Queue rows; the future completes when they are committed (or carries the error)."""
        fut: Future[None] = Future()
        self._queue.put((list(rows), fut))
        return fut

    def write(self, rows: Sequence[dict[str, Any]], timeout: float = 30.0) -> None:
        self.submit(rows).result(timeout=timeout)

    def _run(self) -> None:
        # The writer thread owns one connection for its lifetime (no pool check-out per commit) and
        # one insert statement, compiled once and cached by SQLAlchemy: each group is one executemany.
        insert = self.table.insert()
        conn: sa.Connection | None = None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                group = [item]
                n = len(item[0])
                while n < GROUP_MAX:  # take whatever else is already waiting: one commit for all of it
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    group.append(nxt)
                    n += len(nxt[0])
                rows = [r for batch, _ in group for r in batch]
                try:
                    if conn is None:
                        conn = self.engine.connect()
                    with conn.begin():
                        conn.execute(insert, rows)
                except Exception as e:  # a failed group: each caller gets the error, none is acknowledged
                    log.exception("decision log commit of %d rows failed", len(rows))
                    if conn is not None:  # a broken connection is replaced for the next group
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    for _, fut in group:
                        fut.set_exception(e)
                else:
                    for _, fut in group:
                        fut.set_result(None)
        finally:
            if conn is not None:
                conn.close()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    def ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(self.table.c.request_id))}

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)
        self.engine.dispose()


def export_parquet(*, url: str, out: Path, table: str = "decisions", schema: str | None = None) -> int:
    """Write the whole log to a Parquet file (for the governance report); returns the row count."""
    import pandas as pd

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
