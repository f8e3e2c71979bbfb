"""Faults under load: kills, a locked SQLite log, a stalled and a refusing PostgreSQL (issue #14).

    python bench/faults.py [--rate 40] [--seconds 8] [--fault-seconds 5]

Each scenario runs a server (the county scorecard as champion, two workers), sends /score at a steady
rate (every request a different applicant with its own Idempotency-Key), applies the fault a third of
the way in and lifts it (or restarts the server, as a redeploy would), then retries once, with the
same key, every request that got no decision. Printed per scenario:

- acknowledged: requests answered 200 (first try or retry); on record: those whose decision is in the
  log; duplicates: applicants with more than one decision in the log;
- 5xx: answers in the 500 range (503 from a log that cannot write, say); no answer: connection errors;
- 5xx later committed: requests answered 5xx whose decision the log holds all the same (the retry is
  then a replay): must be 0;
- recovery: from the fault's end (or the kill) until requests succeed again (server ready after a
  restart, or the first decision after the last failure); orphans: workers still alive 10 s after
  their server was killed.

PostgreSQL scenarios put a TCP relay (devtools/relay.py) between the log and the server on
127.0.0.1:5432, so the shared server is never stopped. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.client import request_bodies
from devtools.launcher import API_KEY, Server
from devtools.relay import StallingRelay
from govrisk.core.config import work_dir
from govrisk.data.store import read_dataset
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.serving.supervise import WORKER_MODULE
from govrisk.training.config import load_experiment
from govrisk.training.train import train

PG_URL = os.environ.get("GOVRISK_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RECOVERY_BOUND_S = 30.0  # a restart (models loaded, workers up) or a lifted fault, back to deciding
ORPHAN_WAIT_S = 10.0


@dataclass
class Outcome:
    key: str
    body: dict[str, Any]
    status: int | None = None  # None: no answer (connection refused or reset)
    t: float = 0.0
    retried: int | None = None
    replayed: bool = False


@dataclass
class Run:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    fault_end: float = 0.0
    recovery_s: float = float("nan")
    orphans: int = 0


def post(url: str, o: Outcome, client: httpx.Client) -> tuple[int | None, bool]:
    try:
        r = client.post(
            f"{url}/score",
            json=o.body,
            headers={"X-API-Key": API_KEY, "Idempotency-Key": o.key},
            timeout=30,
        )
    except httpx.HTTPError:
        return None, False
    return r.status_code, r.headers.get("Idempotent-Replayed") == "true"


def load(
    url: Callable[[], str], bodies: list[dict], rate: float, seconds: float, run: Run
) -> threading.Thread:
    """Send `rate` requests a second for `seconds` in a background thread; outcomes go to `run`."""

    def send() -> None:
        client = httpx.Client()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            for i, body in enumerate(bodies[: int(rate * seconds)]):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                o = Outcome(key=f"fault-{uuid.uuid4().hex[:20]}", body=body)
                run.outcomes.append(o)

                def one(o: Outcome = o) -> None:
                    o.status, _ = post(url(), o, client)
                    o.t = time.monotonic()

                pool.submit(one)
        client.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def workers_of(server: Server) -> list[psutil.Process]:
    assert server.proc is not None
    found = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a process that exited (or a zombie) is no worker
            if WORKER_MODULE in " ".join(p.cmdline()):
                found.append(p)
    return found


def log_rows(url: str, table: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (r[0], r[1]) for r in conn.execute(sa.text(f"SELECT decision_id, input_digest FROM {table}"))
            ]
    finally:
        engine.dispose()


def finish(run: Run, server_url: str, db_url: str, table: str, recovered_at: float | None) -> dict[str, Any]:
    """Retry every undecided request once with its key, then compare answers with the log."""
    client = httpx.Client()
    for o in run.outcomes:
        if o.status != 200:
            o.retried, o.replayed = post(server_url, o, client)
    client.close()
    failures = [o.t for o in run.outcomes if o.status != 200 and o.t]
    if recovered_at is not None:
        run.recovery_s = recovered_at - run.fault_end
    elif failures:
        after = [o.t for o in run.outcomes if o.status == 200 and o.t > max(failures)]
        # failures that ended before the fault did (a log that reconnected at once) recover in 0 s
        run.recovery_s = max((min(after) if after else float("inf")) - run.fault_end, 0.0)
    else:
        run.recovery_s = 0.0
    print(f"   {run.name}: done", flush=True)
    rows = log_rows(db_url, table)
    logged = {d for d, _ in rows}
    digests: dict[str, int] = {}
    for _, digest in rows:
        digests[digest] = digests.get(digest, 0) + 1
    acked = [o for o in run.outcomes if o.status == 200 or o.retried == 200]
    return {
        "scenario": run.name,
        "sent": len(run.outcomes),
        "acknowledged": len(acked),
        "on record": sum(o.key in logged for o in acked),
        "duplicates": sum(n - 1 for n in digests.values() if n > 1),
        "5xx": sum(1 for o in run.outcomes if o.status is not None and o.status >= 500),
        "no answer": sum(1 for o in run.outcomes if o.status is None),
        "5xx later committed": sum(
            1 for o in run.outcomes if o.status is not None and o.status >= 500 and o.replayed
        ),
        "recovery s": run.recovery_s,
        "orphans": run.orphans,
    }


def wait_gone(procs: list[psutil.Process]) -> int:
    _, alive = psutil.wait_procs(procs, timeout=ORPHAN_WAIT_S)
    for p in alive:  # leave nothing behind for the next scenario
        p.kill()
    return len(alive)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=8.0, help="load per scenario")
    ap.add_argument(
        "--fault-seconds", type=float, default=5.0, help="how long a lock, stall or refusal lasts"
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    dataset = work_dir() / "data" / "bench-faults-6000-s5"
    if not (dataset / "manifest.json").exists():
        generate(load_generator_config("county"), n_applicants=6000, seed=5, out=dataset, progress=False)
    champion = train(
        *load_experiment(
            "county_scorecard",
            [f"data.dataset={dataset}", "data.generate=null", "name=bench-faults-scorecard"],
        )
    ).tag
    bodies = request_bodies(read_dataset(dataset))
    per = int(args.rate * args.seconds)
    slices = iter(bodies[i : i + per] for i in range(0, len(bodies), per))
    folder = work_dir() / "serving" / "bench-faults"
    base = {
        "champion": champion,
        "challenger": {"tag": None},
        "routing": {"mode": "champion_only"},
        "workers": 2,
    }
    results = []
    servers: list[Server] = []

    def started(server: Server) -> Server:
        servers.append(server)
        return server

    try:
        scenarios(args, base, folder, slices, results, started)
    finally:
        for server in servers:  # nothing left serving, whatever failed
            server.kill()
    return report(results)


def scenarios(
    args: argparse.Namespace,
    base: dict[str, Any],
    folder: Path,
    slices: Iterator[list[dict]],
    results: list[dict[str, Any]],
    started: Callable[[Server], Server],
) -> None:
    def sqlite_server(name: str, *, cli: bool = False, port: int | None = None) -> tuple[Server, str]:
        db = folder / name / "decisions.db"
        if port is None:  # a fresh log; a restart (same port) keeps the one it restarts on
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        cfg = base | {"decision_log": {"url": f"sqlite:///{db}"}}
        return started(Server(folder / name, cfg, cli=cli, port=port)).start(), f"sqlite:///{db}"

    def during(run: Run, server: Server, apply: Callable[[], None], lift: Callable[[], None] | None) -> None:
        thread = load(lambda: server.url, next(slices), args.rate, args.seconds, run)
        time.sleep(args.seconds / 3)
        apply()
        if lift is not None:
            time.sleep(args.fault_seconds)
            lift()
        run.fault_end = time.monotonic()
        thread.join()

    # 1. kill -9 one worker: the arbiter starts another, the other worker serves meanwhile
    server, db = sqlite_server("worker")
    run = Run("kill -9 one worker")
    during(run, server, lambda: workers_of(server)[0].kill(), None)
    time.sleep(2)
    results.append(finish(run, server.url, db, "decisions", None))
    server.stop()

    # 2./3. kill -9 of `govrisk serve`'s process group, and of every process of the server; restart
    for name, everything in (("group", False), ("everything", True)):
        server, db = sqlite_server(name, cli=True)
        run = Run(f"kill -9 {'every process' if everything else 'the process group'}, restart")
        holder: dict[str, Server] = {"s": server}
        workers = workers_of(server)

        def crash(server: Server = server, everything: bool = everything) -> None:
            if everything:
                server.kill()
            else:
                assert server.proc is not None
                os.killpg(server.proc.pid, signal.SIGKILL)

        thread = load(lambda holder=holder: holder["s"].url, next(slices), args.rate, args.seconds, run)
        time.sleep(args.seconds / 3)
        crash()
        run.fault_end = time.monotonic()
        run.orphans = wait_gone(workers)
        holder["s"] = sqlite_server(name, cli=True, port=server.port)[0]
        ready = time.monotonic()
        thread.join()
        results.append(finish(run, holder["s"].url, db, "decisions", ready))
        holder["s"].stop()

    # 4. the SQLite log locked by another writer
    server, db = sqlite_server("locked")
    run = Run(f"SQLite log locked {args.fault_seconds:g} s")
    lock: dict[str, sqlite3.Connection] = {}

    def take() -> None:
        lock["c"] = sqlite3.connect(db.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        lock["c"].execute("BEGIN EXCLUSIVE")

    def free() -> None:
        lock["c"].execute("ROLLBACK")
        lock["c"].close()

    during(run, server, take, free)
    time.sleep(2)
    results.append(finish(run, server.url, db, "decisions", None))
    server.stop()

    # 5./6. PostgreSQL stalled (every byte held) and refusing (connections reset and refused)
    try:
        sa.create_engine(PG_URL).connect().close()
        pg = True
    except Exception as e:
        print(f"skipping the PostgreSQL scenarios: {PG_URL} does not answer ({type(e).__name__})")
        pg = False
    if pg:
        target = sa.engine.make_url(PG_URL)
        for name, apply_name, lift_name in (
            ("stalled", "stall_all", "release"),
            ("refusing", "refuse", "restore"),
        ):
            relay = StallingRelay((target.host or "127.0.0.1", target.port or 5432))
            url = target.set(host="127.0.0.1", port=relay.port).render_as_string(False)
            table = f"bench_faults_{uuid.uuid4().hex[:10]}"
            cfg = base | {"decision_log": {"url": url, "table": table}}
            server = started(Server(folder / f"pg-{name}", cfg)).start()
            run = Run(f"PostgreSQL {name} {args.fault_seconds:g} s")
            during(run, server, getattr(relay, apply_name), getattr(relay, lift_name))
            time.sleep(2)
            results.append(finish(run, server.url, PG_URL, table, None))
            server.stop()
            relay.close()
            engine = sa.create_engine(PG_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            engine.dispose()


def report(results: list[dict[str, Any]]) -> int:
    cols = list(results[0])
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()))
    ok = True
    for r in results:
        checks = [
            (
                r["on record"] == r["acknowledged"],
                f"on record {r['on record']} = acknowledged {r['acknowledged']}",
            ),
            (r["duplicates"] == 0, f"duplicates {r['duplicates']} = 0"),
            (r["5xx later committed"] == 0, f"5xx later committed {r['5xx later committed']} = 0"),
            (r["orphans"] == 0, f"orphans {r['orphans']} = 0"),
            (
                r["recovery s"] <= RECOVERY_BOUND_S,
                f"recovery {r['recovery s']:.1f} s <= {RECOVERY_BOUND_S:g} s",
            ),
        ]
        for passed, text in checks:
            ok &= passed
            print(f"{'PASS' if passed else 'FAIL'}  {r['scenario']}: {text}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
