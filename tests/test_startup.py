"""Start-up refusals and supervision of the scoring server (issue 14, items 7 and 11).

- No API key and no `auth.open: true`: `govrisk serve` and a plain `bentoml serve` refuse to start
  with one line (before: every request 401 while /readyz said ready). `auth.open: true` serves
  without keys and says so at start-up.
- Test hooks are not configuration: `challenger.fault` is not a serving config key (fault injection is
  devtools/faults.py).
- Supervision (slow tier): SIGTERM, SIGINT and SIGHUP to `govrisk serve` stop it, `bentoml serve` and
  both workers; `kill -9` of `govrisk serve` alone or of its whole process group leaves no worker
  serving; each time within `GONE_S` seconds, and a server started right after binds the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from pydantic import ValidationError

from devtools.launcher import Server, free_port
from govrisk.serving.config import load_serving_config

GOVRISK = str(Path(sys.executable).parent / "govrisk")
GONE_S = 15.0  # every process of a stopped or killed server is gone, and the port free, within this


@pytest.fixture(scope="module")
def champion(tiny_county_path: Path) -> str:
    """A scorecard registered from the tiny county (the servers here run it alone, no challenger)."""
    from govrisk.training.config import load_experiment
    from govrisk.training.train import train

    cfg, params = load_experiment(
        "county_scorecard",
        [f"data.dataset={tiny_county_path}", "data.generate=null", "parity_rows=500", "name=startup-card"],
    )
    return str(train(cfg, params).tag)


def serving_config(champion: str, folder: Path, **over: object) -> dict:
    return {
        "champion": champion,
        "challenger": {"tag": None},
        "workers": 2,
        "decision_log": {"url": f"sqlite:///{folder / 'decisions.db'}"},
        **over,
    }


def run_serve(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GOVRISK, "serve", "--config", str(config), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def bare_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GOVRISK_API_KEYS", "GOVRISK_APPLICANT_KEY"))
    }
    return env | {"GOVRISK_APPLICANT_KEY": "startup-test-applicant-key-0123456789"}


# --- item 11: no keys, open mode, test hooks --------------------------------------------------------
def test_serve_refuses_to_start_without_an_api_key(tmp_path: Path) -> None:
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"champion": "county-nothing:latest", "challenger": {"tag": None}}))
    t0 = time.perf_counter()
    done = run_serve(config, bare_env())
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no API key configured" in lines[0] and "auth.open: true" in lines[0], lines
    assert time.perf_counter() - t0 < 30  # refused before BentoML starts


def test_serve_refuses_open_mode_with_keys_and_any_start_without_a_pseudonym_key(tmp_path: Path) -> None:
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"challenger": {"tag": None}, "auth": {"open": True}}))
    done = run_serve(config, bare_env() | {"GOVRISK_API_KEYS": "some-key-0123456789"})
    assert done.returncode == 2 and "auth.open is true but 1 API key(s)" in done.stderr, done.stderr
    no_key = {k: v for k, v in bare_env().items() if k != "GOVRISK_APPLICANT_KEY"}
    done = run_serve(config, no_key)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "no applicant pseudonym key" in lines[0] and "GOVRISK_APPLICANT_KEY_FILE" in lines[0]


def test_plain_bentoml_serve_refuses_without_an_api_key_too(champion: str, tmp_path: Path) -> None:
    server = Server(tmp_path, serving_config(champion, tmp_path), api_keys="")
    with pytest.raises(RuntimeError, match="server exited") as e:
        server.start(timeout=90)
    assert "refusing to start: no API key configured" in str(e.value)


def test_open_mode_serves_without_a_key_and_says_so_at_start_up(
    champion: str, tmp_path: Path, tiny_county
) -> None:
    from devtools.client import request_bodies

    server = Server(tmp_path, serving_config(champion, tmp_path, auth={"open": True}, workers=1), api_keys="")
    with _reaped(server):
        server.start(timeout=90)
        r = server.post("/score", request_bodies(tiny_county)[0], key=None)
        assert r.status_code == 200, r.text
        server.stop()
    assert "WARNING: auth.open is true" in server.log_path.read_text()


def test_fault_injection_is_not_a_key_of_the_serving_config() -> None:
    with pytest.raises((ValidationError, ValueError), match=r"challenger\.fault"):
        load_serving_config("default", challenger={"fault": {"mode": "raise"}})
    schema = json.dumps(load_serving_config("default").model_json_schema())
    assert '"fault' not in schema.lower() and '"FaultInjection' not in schema  # no key, no model


# --- item 7: supervision ----------------------------------------------------------------------------
def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie not yet reaped
        return ""


def _tree(server: Server) -> list[psutil.Process]:
    """`govrisk serve`, `bentoml serve` and both workers (which run in sessions of their own)."""
    top = psutil.Process(server.proc.pid)
    deadline = time.monotonic() + 30
    while True:
        procs = [top, *top.children(recursive=True)]
        workers = [p for p in procs if "_bentoml_impl.worker.service" in _cmdline(p)]
        if len(workers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(workers) == 2 and any("bentoml serve" in _cmdline(p) for p in procs), procs
    assert all(os.getsid(w.pid) != os.getsid(top.pid) for w in workers)  # out of reach of the group
    if hasattr(server, "collect"):
        server.collect()
    return procs


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as circus binds it
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_gone(procs: list[psutil.Process], port: int) -> float:
    """Seconds until every process is gone and the port is free; fails after GONE_S."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < GONE_S:
        if not any(_alive(p) for p in procs) and _port_free(port):
            return time.monotonic() - t0
        time.sleep(0.1)
    alive = [p.pid for p in procs if _alive(p)]
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        ready = None
    pytest.fail(f"after {GONE_S} s: alive {alive}, /readyz {ready}, port free {_port_free(port)}")


def _restart_binds(champion: str, folder: Path, port: int) -> None:
    again = Server(folder / "again", serving_config(champion, folder), port=port, cli=True)
    with _reaped(again):
        again.start(timeout=90)
        again.stop()
    assert again.proc.returncode == 0, again.log_tail()


@contextlib.contextmanager
def _reaped(server: Server) -> Iterator[None]:
    """Whatever happens in the block, no process of the server's tree outlives it (a failed test must
    not leave a server behind: its workers would hold the port and write the log)."""
    seen: dict[int, psutil.Process] = {}

    def collect() -> None:
        with contextlib.suppress(psutil.Error, AttributeError):
            top = psutil.Process(server.proc.pid)
            seen.update({p.pid: p for p in [top, *top.children(recursive=True)]})

    server.collect = collect  # type: ignore[attr-defined]  # _tree calls it once the workers are up
    try:
        yield
    finally:
        collect()
        for p in seen.values():
            with contextlib.suppress(psutil.Error):
                p.kill()  # is_running-checked by psutil: never a reused pid
        psutil.wait_procs(list(seen.values()), timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_to_govrisk_serve_stops_the_server_and_its_workers(
    champion: str, tmp_path: Path, sig: str
) -> None:
    server = Server(tmp_path, serving_config(champion, tmp_path), cli=True)
    with _reaped(server):
        server.start(timeout=90)
        procs = _tree(server)
        os.kill(server.proc.pid, getattr(signal, sig))  # the top process only, as a process manager does
        took = _all_gone(procs, server.port)
        assert server.proc.wait(timeout=5) in (0, 128 + getattr(signal, sig)), server.log_tail()
    print(f"{sig}: every process gone and the port free after {took:.2f} s")
    _restart_binds(champion, tmp_path, server.port)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["govrisk-serve", "process-group"])
def test_kill_9_leaves_no_worker_serving_and_a_restart_binds_the_port(
    champion: str, tmp_path: Path, tiny_county, target: str
) -> None:
    from devtools.client import request_bodies

    server = Server(tmp_path, serving_config(champion, tmp_path), cli=True)
    with _reaped(server):
        server.start(timeout=90)
        assert server.post("/score", request_bodies(tiny_county)[0]).status_code == 200
        procs = _tree(server)
        if target == "govrisk-serve":
            os.kill(server.proc.pid, signal.SIGKILL)
        else:
            os.killpg(server.proc.pid, signal.SIGKILL)
        took = _all_gone(procs, server.port)
    print(f"kill -9 of {target}: every process gone and the port free after {took:.2f} s")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/readyz", timeout=2)
    _restart_binds(champion, tmp_path, server.port)
