"""The decision log: every decision, committed before its response is sent.

SQLAlchemy 2 Core over SQLite (the embedded default, WAL mode) or PostgreSQL (production, by URL).
`write` commits in the calling thread, on that thread's own connection, and returns once the rows
are committed, so an acknowledged response implies a committed record. The service calls it once
per batch from the thread that decided the batch (a /score micro-batch of concurrent requests, or
one /score_batch request): concurrent requests of a worker still share one transaction and one
fsync. A hand-off to a writer thread cost more than the commit itself (one row: 160 us through a
writer thread, 57 us in the caller).

Bounds (`decision_log.*` in the serving config): every write either commits or fails within
`write_timeout_ms` (plus `connect_timeout_s` when the thread must open a new connection), and a write
that failed is never committed later:

- SQLite: the busy timeout is `write_timeout_ms`; a commit happens in this process or not at all.
- PostgreSQL: `connect_timeout`, and `statement_timeout` and `lock_timeout` of `write_timeout_ms` on
  every connection, bound a database that answers. One that stops answering (a stalled server, a
  network that drops packets) is cut by a watchdog thread, which shuts the connection's socket
  `WATCHDOG_GRACE_S` after the deadline. The COMMIT is sent in one message with a guard that fails
  the transaction once the server's clock is past the client's deadline (measured from the
  transaction's start, which the server saw before the client could send the COMMIT): a COMMIT held
  up in a stalled server or network and delivered after the client gave up rolls back.

`ready()` (the service's /readyz) runs a cheap write probe that writes nothing (SQLite: BEGIN
IMMEDIATE then ROLLBACK; PostgreSQL: the insert's table lock, then ROLLBACK) in a thread of its own,
waits for it at most `ready_timeout_ms` and reuses its answer for `ready_cache_s`; a failed write
marks the log not ready at once. /readyz therefore never hangs and turns false within
`ready_cache_s + ready_timeout_ms` of the log refusing writes.

Database errors are logged as one line without SQL parameters (engines hide them): a caller must
never echo them to a client.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

WATCHDOG_GRACE_S = 0.2  # the watchdog cuts a PostgreSQL connection this long after a write's deadline
_WATCHDOG_TICK_S = 0.05


def describe_error(e: BaseException) -> str:
    """One line for the server log: the driver's exception type and first message line, without the
    SQL statement or its parameters (SQLAlchemy's own message carries both)."""
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first[:300]}"


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


def make_engine(
    url: str,
    *,
    sqlite_synchronous: str = "full",
    connect_timeout_s: int | None = None,
    statement_timeout_ms: int | None = None,
    pool: bool = True,
) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout (several workers share the file; default
    30 s, else `statement_timeout_ms`) and the chosen fsync level on every connection; PostgreSQL gets
    `connect_timeout` and, when given, `statement_timeout` and `lock_timeout` on every connection.
    Statement parameters never appear in error messages (`hide_parameters`). `pool=False`: a fresh
    connection each time (the readiness probe)."""
    extra: dict[str, Any] = {"hide_parameters": True}
    if not pool:
        extra["poolclass"] = NullPool
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        busy_ms = 30_000 if statement_timeout_ms is None else int(statement_timeout_ms)
        engine = sa.create_engine(
            url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False}, **extra
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        if connect_timeout_s is not None:
            connect_args["connect_timeout"] = max(2, math.ceil(connect_timeout_s))  # libpq's minimum
        if statement_timeout_ms is not None:
            ms = int(statement_timeout_ms)
            connect_args["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    return sa.create_engine(url, pool_pre_ping=pool, connect_args=connect_args, **extra)


class _Watchdog:
    """Cuts PostgreSQL connections whose operation is past its deadline: shutting the socket down
    wakes the thread blocked on it (psycopg raises) and sends the server an end of stream, whatever
    state the server is in. One thread per log, started at the first watched operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, key: int, deadline: float, driver_conn: Any) -> None:
        with self._lock:
            self._watched[key] = (deadline + WATCHDOG_GRACE_S, driver_conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decision-log-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, key: int) -> None:
        with self._lock:  # under the lock: the watchdog never cuts a socket its owner has moved on from
            self._watched.pop(key, None)

    def _run(self) -> None:
        while not self._closed:
            time.sleep(_WATCHDOG_TICK_S)
            now = time.monotonic()
            with self._lock:
                for key, (deadline, driver_conn) in list(self._watched.items()):
                    if now >= deadline:
                        del self._watched[key]
                        _cut(driver_conn)

    def close(self) -> None:
        self._closed = True


def _cut(driver_conn: Any) -> None:
    with contextlib.suppress(Exception):
        fd = driver_conn.pgconn.socket
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()
        log.error("decision log: a PostgreSQL operation passed its deadline; its connection was cut")


class DecisionLog:
    """Durable decision records; `write` returns once its rows are committed (see the module doc)."""

    def __init__(
        self,
        *,
        url: str,
        table: str = "decisions",
        schema: str | None = None,
        sqlite_synchronous: str = "full",
        connect_timeout_s: int = 3,
        write_timeout_ms: int = 2000,
        ready_timeout_ms: int = 500,
        ready_cache_s: float = 1.0,
    ) -> None:
        self.url = url
        self.write_timeout_s = write_timeout_ms / 1000
        self.ready_timeout_s = ready_timeout_ms / 1000
        self.ready_cache_s = ready_cache_s
        # No pool: each writing thread holds its connection, and a fresh one (bounded by the connect
        # timeout) replaces a failed one; a pooled one would need a ping that nothing bounds.
        self.engine = make_engine(
            url,
            sqlite_synchronous=sqlite_synchronous,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_ms=write_timeout_ms,
            pool=False,
        )
        self._probe_engine = make_engine(
            url,
            sqlite_synchronous=sqlite_synchronous,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_ms=ready_timeout_ms,
            pool=False,
        )
        self._pg = self.engine.dialect.name == "postgresql"
        self.table = decisions_table(table, schema)
        self.table.metadata.create_all(self.engine, checkfirst=True)
        self._insert = self.table.insert()  # compiled once, cached by SQLAlchemy
        # rows whose decision id may already be on record (client-chosen ids): skipped, not refused
        dialect_insert = postgresql.insert if self._pg else sqlite.insert
        self._insert_new = (
            dialect_insert(self.table)
            .on_conflict_do_nothing(index_elements=["decision_id"])
            .returning(self.table.c.decision_id)
            if self.engine.dialect.name in ("postgresql", "sqlite")
            else None
        )
        self._local = threading.local()  # each writing thread's connection, held for its lifetime
        self._open: set[sa.Connection] = set()  # every thread's connection, for `close`
        self._lock = threading.Lock()
        self._watchdog = _Watchdog()
        # readiness: the last probe's answer, valid until `_ready_until` (monotonic); a probe in flight
        self._ready_lock = threading.Lock()
        self._ready = False
        self._ready_until = 0.0
        self._probe_done: threading.Event | None = None
        self._probe_started = 0.0

    @property
    def where(self) -> str:
        """The log's location, without a password."""
        return f"{self.engine.url.render_as_string(hide_password=True)} table {self.table.fullname}"

    # --- writes ------------------------------------------------------------------------------------
    def write(self, rows: Sequence[dict[str, Any]], *, keyed: Sequence[dict[str, Any]] = ()) -> set[str]:
        """Commit `rows` and `keyed` in one transaction; raises (nothing committed) if the database
        refuses or does not answer within the write timeout (see the module doc).

        `keyed`: rows whose decision id a client chose (idempotency keys): one already on record is
        skipped, not an error. Returns the decision ids of the skipped ones. A duplicate id in `rows`
        refuses the whole transaction (sqlalchemy IntegrityError)."""
        if keyed and self._insert_new is None:  # another database: plain inserts, refused on conflict
            rows, keyed = [*rows, *keyed], ()
        skipped: set[str] = set()

        def run(conn: sa.Connection, deadline: float) -> None:
            with conn.begin() as trans:
                if rows:
                    conn.execute(self._insert, list(rows))
                if keyed:
                    inserted = {r[0] for r in conn.execute(self._insert_new, list(keyed))}
                    skipped.update(r["decision_id"] for r in keyed if r["decision_id"] not in inserted)
                if self._pg:
                    self._guarded_commit(conn, deadline)
                trans.commit()

        self._run(run, "write")
        return skipped

    def find(self, column: str, values: Sequence[str]) -> list[dict[str, Any]]:
        """The logged rows whose `column` (decision_id or request_id) is one of `values`, within the
        same bounds as a write (the idempotency look-up)."""
        out: list[dict[str, Any]] = []
        c = self.table.c[column]

        def run(conn: sa.Connection, _deadline: float) -> None:
            with conn.begin():
                out.extend(dict(r._mapping) for r in conn.execute(sa.select(self.table).where(c.in_(values))))

        self._run(run, "read")
        return out

    @staticmethod
    def _guarded_commit(conn: sa.Connection, deadline: float) -> None:
        """PostgreSQL: COMMIT only while the server's clock is within the client's remaining time,
        counted from the transaction's start; in one message with the COMMIT (simple query protocol),
        so a COMMIT delivered late (a stalled server) fails instead of committing after a 503."""
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise TimeoutError("decision log write passed its deadline before COMMIT")
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "SELECT 1 / (clock_timestamp() < transaction_timestamp() + "
            f"interval '{remaining_ms} milliseconds')::int; COMMIT"
        )

    def _run(self, fn: Any, what: str) -> None:
        """`fn(conn, deadline)` on this thread's connection, watched (PostgreSQL) until the deadline;
        on failure the connection is dropped (replaced at the next call) and the log marked not ready.
        A unique-key refusal keeps the connection."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        key = threading.get_ident()
        try:
            if conn is None:
                conn = self._local.conn = self.engine.connect()
                with self._lock:
                    self._open.add(conn)
            deadline = time.monotonic() + self.write_timeout_s
            if self._pg:
                self._watchdog.watch(key, deadline, conn.connection.driver_connection)
            try:
                fn(conn, deadline)
            finally:
                if self._pg:
                    self._watchdog.unwatch(key)
        except sa.exc.IntegrityError:
            raise
        except Exception as e:
            log.error("decision log %s failed: %s", what, describe_error(e))
            self._not_ready()
            if conn is not None:
                self._local.conn = None
                with self._lock:
                    self._open.discard(conn)
                with contextlib.suppress(Exception):
                    conn.invalidate()
                with contextlib.suppress(Exception):
                    conn.close()
            raise

    # --- readiness ---------------------------------------------------------------------------------
    def _not_ready(self) -> None:
        with self._ready_lock:
            self._ready, self._ready_until = False, time.monotonic() + self.ready_cache_s

    def ready(self) -> bool:
        """Whether the log takes writes now: the probe's answer (see the module doc); never blocks
        longer than `ready_timeout_ms`."""
        now = time.monotonic()
        with self._ready_lock:
            if now < self._ready_until:
                return self._ready
            done = self._probe_done
            if done is None:
                done = self._probe_done = threading.Event()
                self._probe_started = now
                threading.Thread(
                    target=self._run_probe, args=(done,), name="decision-log-probe", daemon=True
                ).start()
            wait = self._probe_started + self.ready_timeout_s - now
        if done.wait(max(0.0, wait)):
            with self._ready_lock:
                return self._ready
        log.warning(
            "decision log %s: readiness probe unanswered after %.0f ms",
            self.where,
            self.ready_timeout_s * 1000,
        )
        self._not_ready()
        return False

    def _run_probe(self, done: threading.Event) -> None:
        started = time.monotonic()
        try:
            self._probe()
            ok = time.monotonic() - started <= self.ready_timeout_s
        except Exception as e:
            log.warning("decision log %s refuses writes: %s", self.where, describe_error(e))
            ok = False
        with self._ready_lock:
            self._ready, self._ready_until = ok, time.monotonic() + self.ready_cache_s
            self._probe_done = None
        done.set()

    def _probe(self) -> None:
        """Take the lock an insert needs, write nothing, roll back."""
        with self._probe_engine.connect() as conn:
            raw = conn.connection.driver_connection
            if self._pg:
                key = -threading.get_ident()
                self._watchdog.watch(key, time.monotonic() + self.ready_timeout_s, raw)
                try:
                    with conn.begin() as trans:
                        name = self.engine.dialect.identifier_preparer.format_table(self.table)
                        conn.exec_driver_sql(f"LOCK TABLE {name} IN ROW EXCLUSIVE MODE")
                        trans.rollback()
                finally:
                    self._watchdog.unwatch(key)
            else:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute("ROLLBACK")

    def reachable(self) -> bool:
        """Whether the database takes writes now (`ready`)."""
        return self.ready()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    def ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(self.table.c.request_id))}

    def close(self) -> None:
        self._watchdog.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(Exception):
                    conn.close()
            self._open.clear()
        self.engine.dispose()
        self._probe_engine.dispose()


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
