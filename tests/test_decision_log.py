"""The decision log under a locked, stalled or refusing database, and idempotent requests.

Unit checks of `DecisionLog` (bounded writes, no late commit, the readiness probe, client-keyed rows)
run against SQLite and the PostgreSQL of tests/test_serving.py (skipped where none answers, failed
under CI=true). A stalled PostgreSQL is simulated without touching the shared server: a TCP relay
between the log and the server holds the bytes of every connection, or of a connection from its
COMMIT on, and delivers them later (what the kernel does for a SIGSTOPped server).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_URL, need_postgres

from devtools.relay import StallingRelay
from govrisk.serving.decision_log import WATCHDOG_GRACE_S, DecisionLog

WRITE_MS, READY_MS, CACHE_S = 800, 300, 0.2
# a write answers within its timeout plus the watchdog's grace and tick; scheduling slack on top
WRITE_BOUND_S = WRITE_MS / 1000 + WATCHDOG_GRACE_S + 0.5


def row(decision_id: str, request_id: str | None = None, digest: str = "b" * 64) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "request_id": request_id or decision_id,
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "endpoint": "score",
        "applicant_hash": "a" * 64,
        "input_digest": digest,
        "application_date": dt.date(2025, 12, 1),
        "routing_mode": "shadow",
        "arm": "champion",
        "decided_by": "champion",
        "decision": "refer",
        "hard_rule": None,
        "pd": 0.04123456789,
        "grade": "B",
        "rate": 0.09,
        "credit_limit": 20_000.0,
        "reason_codes": "[]",
        "champion_model": "county-scorecard:v1",
        "champion_pd": 0.04123456789,
        "champion_score": 612.5,
        "champion_grade": "B",
        "challenger_model": None,
        "challenger_status": "off",
        "challenger_pd": None,
        "challenger_grade": None,
        "challenger_decision": None,
        "policy": "county-policy@1.0.0",
        "features_ms": 1.0,
        "champion_ms": 1.0,
        "challenger_ms": None,
        "total_ms": 2.0,
    }


def open_log(url: str, table: str = "decisions") -> DecisionLog:
    return DecisionLog(
        url=url, table=table, write_timeout_ms=WRITE_MS, ready_timeout_ms=READY_MS, ready_cache_s=CACHE_S
    )


def count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def ready_within(log: DecisionLog, expected: bool, seconds: float) -> float:
    """Seconds until `log.ready()` is `expected` (polled), failing after `seconds`; each call must
    answer within the probe timeout (never hang)."""
    t0 = time.monotonic()
    while True:
        c0 = time.monotonic()
        got = log.ready()
        assert time.monotonic() - c0 <= READY_MS / 1000 + 0.3, "ready() blocked past its probe timeout"
        if got is expected:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < seconds, f"ready() still {got} after {seconds} s"
        time.sleep(0.05)


@pytest.fixture
def relay() -> Iterator[StallingRelay]:
    need_postgres()
    url = sa.engine.make_url(PG_URL)
    r = StallingRelay((url.host or "127.0.0.1", url.port or 5432))
    yield r
    r.close()


@pytest.fixture
def pg_table() -> Iterator[str]:
    need_postgres()
    table = f"decisions_dl_{uuid.uuid4().hex[:10]}"
    yield table
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def relay_url(relay: StallingRelay) -> str:
    return sa.engine.make_url(PG_URL).set(host="127.0.0.1", port=relay.port).render_as_string(False)


# --- SQLite ---------------------------------------------------------------------------------------
def test_sqlite_locked_write_fails_in_time_without_parameters_and_readiness_follows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    log = open_log(url)
    try:
        log.write([row("before")])
        ready_within(log, True, 5)
        holder = sqlite3.connect(tmp_path / "decisions.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write lock
        try:
            t0 = time.monotonic()
            with pytest.raises(sa.exc.OperationalError) as err:
                log.write([row("locked", digest="c" * 64)])
            assert time.monotonic() - t0 <= WRITE_BOUND_S
            assert "c" * 64 not in str(err.value) and "locked" not in str(err.value).split("[SQL")[-1]
            assert not log.ready()  # a failed write: not ready at once
            time.sleep(CACHE_S + 0.05)
            ready_within(log, False, 0)  # and the probe agrees while the lock is held
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        ready_within(log, True, CACHE_S + READY_MS / 1000 + 1)
        log.write([row("after")])
        assert count(url, "decisions") == 2
    finally:
        log.close()


def test_keyed_rows_already_on_record_are_skipped_and_concurrent_duplicates_write_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    logs = [open_log(url) for _ in range(2)]  # two workers
    try:
        assert logs[0].write([row("plain")], keyed=[row("k1")]) == set()
        assert logs[1].write([], keyed=[row("k1"), row("k2")]) == {"k1"}
        barrier = threading.Barrier(8)
        skipped: list[set[str]] = []

        def one(i: int) -> None:
            barrier.wait()
            skipped.append(logs[i % 2].write([], keyed=[row("race")]))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(len(s) for s in skipped) == [0] + [1] * 7
        assert count(url, "decisions") == 4
        assert [r["decision_id"] for r in logs[0].find("request_id", ["k2"])] == ["k2"]
    finally:
        for log in logs:
            log.close()


# --- PostgreSQL -----------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_table_lock_write_fails_in_time_and_readiness_follows(pg_table: str) -> None:
    log = open_log(PG_URL, pg_table)
    try:
        log.write([row("before")])
        ready_within(log, True, 5)
        engine = sa.create_engine(PG_URL)
        with engine.connect() as holder:
            holder.execute(sa.text(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE"))
            t0 = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as err:
                log.write([row("locked", digest="c" * 64)])
            assert time.monotonic() - t0 <= WRITE_BOUND_S
            assert "c" * 64 not in str(err.value)
            assert not log.ready()
            time.sleep(CACHE_S + 0.05)
            ready_within(log, False, 0)
            holder.rollback()
        engine.dispose()
        ready_within(log, True, CACHE_S + READY_MS / 1000 + 1)
        log.write([row("after")])
        assert count(PG_URL, pg_table) == 2
    finally:
        log.close()


@pytest.mark.postgres
def test_postgres_stalled_at_commit_fails_in_time_and_never_commits_later(
    relay: StallingRelay, pg_table: str
) -> None:
    log = open_log(relay_url(relay), pg_table)
    try:
        log.write([row("before")])
        relay.stall_from(b"COMMIT")  # the INSERT reaches the server; the COMMIT is held
        t0 = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError):
            log.write([row("stalled")])
        assert time.monotonic() - t0 <= WRITE_BOUND_S
        time.sleep(0.5)
        relay.release()  # the held COMMIT arrives after the client gave up: it must not commit
        time.sleep(1.0)
        assert count(PG_URL, pg_table) == 1
        log.write([row("after")])  # a new connection
        assert count(PG_URL, pg_table) == 2
    finally:
        relay.release()
        log.close()


@pytest.mark.postgres
def test_postgres_stalled_server_readiness_false_in_time_never_hangs_and_recovers(
    relay: StallingRelay, pg_table: str
) -> None:
    log = open_log(relay_url(relay), pg_table)
    try:
        log.write([row("before")])  # the writing thread holds its connection
        ready_within(log, True, 5)
        relay.stall_all()
        waited = ready_within(log, False, CACHE_S + READY_MS / 1000 + 0.5)
        assert waited <= CACHE_S + READY_MS / 1000 + 0.5
        t0 = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError):
            log.write([row("stalled")])
        assert time.monotonic() - t0 <= WRITE_BOUND_S
        t0 = time.monotonic()  # the next write must open a connection: the connect timeout bounds it
        with pytest.raises(sa.exc.DBAPIError):
            log.write([row("stalled-2")])
        assert time.monotonic() - t0 <= 3 + WRITE_BOUND_S
        for _ in range(5):
            ready_within(log, False, 0)
            time.sleep(0.1)
        relay.release()
        ready_within(log, True, 5)
        time.sleep(0.5)
        assert count(PG_URL, pg_table) == 1
    finally:
        relay.release()
        log.close()


# --- the endpoint: 503 bodies, /readyz, idempotent retries ----------------------------------------
SERVER_WRITE_MS = 1000
SERVER_BOUND_S = SERVER_WRITE_MS / 1000 + 2.0  # + scoring and HTTP on a shared 2-core machine
LEAKS = (
    "INSERT",
    "SELECT",
    "parameters",
    "sqlite",
    "postgres",
    "127.0.0.1",
    "5432",
    "Traceback",
    "decisions",
)


@pytest.fixture(scope="module")
def champion(tiny_county_path: Path) -> str:
    from govrisk.training.config import load_experiment
    from govrisk.training.train import train

    base = [f"data.dataset={tiny_county_path}", "data.generate=null", "parity_rows=500"]
    cfg, params = load_experiment("county_scorecard", [*base, "name=decision-log-test-scorecard"])
    tag = train(cfg, params).tag
    assert tag
    return tag


@pytest.fixture(scope="module")
def bodies(tiny_county) -> list[dict[str, Any]]:
    from devtools.client import request_bodies

    return request_bodies(tiny_county)


@pytest.fixture(scope="module")
def server(champion: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two workers (concurrent duplicates reach both) on SQLite, with short log timeouts."""
    from devtools.launcher import Server

    folder = tmp_path_factory.mktemp("decision-log-server")
    cfg = {
        "champion": champion,
        "challenger": {"tag": None},
        "workers": 2,
        "decision_log": {
            "url": f"sqlite:///{folder / 'decisions.db'}",
            "write_timeout_ms": SERVER_WRITE_MS,
            "ready_timeout_ms": READY_MS,
            "ready_cache_s": CACHE_S,
        },
    }
    s = Server(folder, cfg).start()
    try:
        yield s
    finally:
        s.stop()


def db_url(server: Any) -> str:
    return f"sqlite:///{server.folder / 'decisions.db'}"


def readyz_within(server: Any, status: int, seconds: float) -> float:
    import httpx

    t0 = time.monotonic()
    while True:
        c0 = time.monotonic()
        got = httpx.get(f"{server.url}/readyz", timeout=5).status_code
        assert time.monotonic() - c0 <= READY_MS / 1000 + 1.0, "/readyz took longer than its probe bound"
        if got == status:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < seconds, f"/readyz still {got} after {seconds} s"
        time.sleep(0.05)


def post(server: Any, path: str, body: Any, key: str | None = None, timeout: float = 30) -> Any:
    import httpx

    from devtools.launcher import API_KEY

    headers = {"X-API-Key": API_KEY}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=timeout)


def test_locked_log_answers_a_503_in_time_without_sql_or_parameters_and_readyz_follows(
    server: Any, bodies: list[dict[str, Any]]
) -> None:
    assert post(server, "/score", bodies[0]).status_code == 200
    readyz_within(server, 200, 10)
    before = count(db_url(server), "decisions")
    holder = sqlite3.connect(server.folder / "decisions.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    try:
        key = f"locked-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        r = post(server, "/score", bodies[1], key=key)
        assert time.monotonic() - t0 <= SERVER_BOUND_S
        assert r.status_code == 503, r.text
        body = r.json()
        assert set(body) == {"error", "message", "error_id"} and body["error"] == "decision_log_unavailable"
        for leak in LEAKS:
            assert leak.lower() not in r.text.lower(), leak
        assert bodies[1]["applicant"]["applicant_id"] not in r.text
        log_text = server.log_path.read_text(errors="replace")
        assert body["error_id"] in log_text  # the detail is in the server log, under the error id
        assert "[parameters" not in log_text
        batch = post(server, "/score_batch", {"applicants": bodies[2:4]})
        assert batch.status_code == 503 and "INSERT" not in batch.text
        readyz_within(server, 503, CACHE_S + READY_MS / 1000 + 1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    readyz_within(server, 200, CACHE_S + READY_MS / 1000 + 2.0)
    assert count(db_url(server), "decisions") == before  # nothing answered 503 was committed
    again = post(server, "/score", bodies[1], key=key)  # the client's retry, same key
    assert again.status_code == 200 and again.json()["request_id"] == key
    assert count(db_url(server), "decisions") == before + 1


def test_idempotent_retry_returns_the_first_decision_and_logs_once(server: Any, bodies) -> None:
    key = str(uuid.uuid4())
    first = post(server, "/score", bodies[5], key=key)
    assert first.status_code == 200, first.text
    assert first.json()["request_id"] == key and first.json()["decision_id"] == key
    for _ in range(3):
        again = post(server, "/score", bodies[5], key=key)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        a, b = first.json(), again.json()
        assert (a["decision_id"], a["pd"], a["decision"], a["reason_codes"], a["applicant_id"]) == (
            b["decision_id"],
            b["pd"],
            b["decision"],
            b["reason_codes"],
            b["applicant_id"],
        )
    rows = [r for r in _rows(server) if r["request_id"] == key]
    assert len(rows) == 1 and rows[0]["pd"] == first.json()["pd"]
    other = post(server, "/score", bodies[6], key=key)  # the same key, another body
    assert other.status_code == 409, other.text
    assert other.json()["error"] == "idempotency_conflict" and other.json()["field"] == "Idempotency-Key"
    assert len([r for r in _rows(server) if r["request_id"] == key]) == 1
    bad = post(server, "/score", bodies[6], key="no spaces allowed")
    assert bad.status_code == 422 and bad.json()["field"] == "Idempotency-Key"


def test_concurrent_duplicates_are_decided_once(server: Any, bodies) -> None:
    import asyncio

    import httpx

    from devtools.launcher import API_KEY

    key = str(uuid.uuid4())
    headers = {"X-API-Key": API_KEY, "Idempotency-Key": key}

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as c:
            return await asyncio.gather(*(c.post("/score", json=bodies[7]) for _ in range(12)))

    answers = asyncio.run(send_all())
    assert {r.status_code for r in answers} == {200}
    assert len({(r.json()["decision_id"], r.json()["pd"]) for r in answers}) == 1
    assert len([r for r in _rows(server) if r["request_id"] == key]) == 1


def test_batch_with_a_key_replays_per_applicant_ids_and_refuses_another_body(server: Any, bodies) -> None:
    key = f"batch-{uuid.uuid4().hex[:12]}"
    first = post(server, "/score_batch", {"applicants": bodies[10:13]}, key=key)
    assert first.status_code == 200, first.text
    ids = [d["decision_id"] for d in first.json()["decisions"]]
    assert ids == [f"{key}-0", f"{key}-1", f"{key}-2"] and first.json()["request_id"] == key
    again = post(server, "/score_batch", {"applicants": bodies[10:13]}, key=key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert [(d["decision_id"], d["pd"]) for d in again.json()["decisions"]] == [
        (d["decision_id"], d["pd"]) for d in first.json()["decisions"]
    ]
    grown = post(server, "/score_batch", {"applicants": bodies[10:14]}, key=key)
    assert grown.status_code == 409 and grown.json()["error"] == "idempotency_conflict"
    assert len([r for r in _rows(server) if r["request_id"] == key]) == 3


def _rows(server: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url(server))
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM decisions"))]
    finally:
        engine.dispose()
