"""Supervision of the scoring server: `govrisk serve` -> `bentoml serve` (circus arbiter) -> workers.

Whatever stops one level stops the levels below it, so no worker ever serves (or writes the decision
log, or holds the port) without its server:

- `govrisk serve` runs `bentoml serve` as its child (`run_supervised`) and forwards SIGTERM, SIGINT
  and SIGHUP to it (SIGHUP as SIGTERM: circus would read it as "reload", a hung-up terminal means
  "stop"); it exits with the server's status, and kills the server if it has not stopped
  `grace_s` seconds after the first signal.
- `bentoml serve` gets SIGTERM when `govrisk serve` dies, however it dies (`kill -9` included): the
  parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`), set in the child before it runs Python.
- Each worker (circus starts them in sessions of their own, so a signal to the process group does not
  reach them) sets SIGKILL as its parent-death signal when it imports the service module
  (`bind_worker_to_server`), then checks that its parent is still the server that started it: a
  server that died before that is caught too. A decision is committed before it is answered, so a
  killed worker loses no acknowledged decision.

The listening socket is the arbiter's (circus binds it with SO_REUSEADDR and hands it to the workers),
so once the workers are gone a restart binds the port at once, TIME_WAIT connections or not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

PR_SET_PDEATHSIG = 1
SERVER_PID_ENV = "GOVRISK_SERVER_PID"  # the arbiter's pid, as its workers inherit it
WORKER_MODULE = "_bentoml_impl.worker.service"  # what circus runs (`python -m ...`) for each worker
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent exits (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(sig: int, *, parent: int | None = None) -> None:
    """Set the parent-death signal, then make sure the parent (`parent`, else the one seen just
    before) has not died already: the signal only covers a death after it is set."""
    expected = parent or os.getppid()
    set_parent_death_signal(sig)
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)


def is_worker() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == WORKER_MODULE


def bind_worker_to_server() -> None:
    """Called when the service module loads: in a worker, die (SIGKILL) with the arbiter that started
    it; in the arbiter (which loads the module before it starts its workers), record its pid for them."""
    if is_worker():
        server = os.environ.get(SERVER_PID_ENV, "")
        die_with_parent(signal.SIGKILL, parent=int(server) if server.isdigit() else None)
    else:
        os.environ[SERVER_PID_ENV] = str(os.getpid())


def run_supervised(cmd: Sequence[str], *, env: dict[str, str] | None = None, grace_s: float = 30.0) -> int:
    """Run `cmd` (the server) as a child that dies with this process; forward SIGTERM, SIGINT and SIGHUP
    to it; return its exit status (128 + the signal when a signal ended it)."""
    me = os.getpid()

    def preexec() -> None:  # in the child, before exec: SIGTERM when this process dies
        die_with_parent(signal.SIGTERM, parent=me)

    proc = subprocess.Popen(
        list(cmd), env=env, preexec_fn=preexec
    )  # preexec_fn: this process is single-threaded
    stop_asked: list[float] = []

    def forward(sig: int, _frame: Any) -> None:
        if not stop_asked:
            stop_asked.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if sig == signal.SIGHUP else sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > grace_s:
                    proc.kill()  # its workers follow it (their parent-death signal)
                    code = proc.wait()
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
