"""Test-only fault injection: a challenger that raises or runs late, to prove the champion never
waits for it or fails with it (tests/test_serving.py, tests/test_monitor.py).

Not configuration: the production serving config (serving/config.py) has no key for it, and nothing
under govrisk/ imports this module. Two ways in:

- a real server: `bentoml serve devtools.fault_service:Scoring` with `GOVRISK_TEST_CHALLENGER_FAULT` set
  to `raise` or `sleep:<ms>` (devtools.launcher.Server(fault=...) does both): `install` wraps
  `Scorer.__init__` so every Scorer of the process gets the fault, then the real service is served;
- in-process: `inject(scorer, "raise")`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from govrisk.serving.engine import Scorer

FAULT_ENV = "GOVRISK_TEST_CHALLENGER_FAULT"


def parse(spec: str) -> tuple[str, float]:
    """`raise` or `sleep:<ms>` -> (mode, milliseconds)."""
    mode, _, ms = spec.partition(":")
    if mode == "raise" and not ms:
        return mode, 0.0
    if mode == "sleep" and ms:
        return mode, float(ms)
    raise ValueError(f"${FAULT_ENV}={spec!r}: expected 'raise' or 'sleep:<ms>'")


def inject(scorer: Scorer, spec: str) -> None:
    """Make `scorer`'s challenger raise, or sleep before predicting (the champion is untouched)."""
    mode, ms = parse(spec)
    if scorer.challenger is None:
        return
    real = scorer.challenger.predict

    def predict(fs: Any, **kwargs: Any) -> Any:
        if mode == "raise":
            raise RuntimeError(f"injected challenger fault ({FAULT_ENV}=raise)")
        time.sleep(ms / 1000)
        return real(fs, **kwargs)

    scorer.challenger.predict = predict  # type: ignore[method-assign]


def install(spec: str | None = None) -> None:
    """Every Scorer built in this process from now on gets the fault `spec` (default: `$FAULT_ENV`)."""
    spec = spec or os.environ.get(FAULT_ENV)
    if not spec:
        return
    parse(spec)  # a bad value fails at start-up
    original = Scorer.__init__

    def init(self: Scorer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        inject(self, spec)

    Scorer.__init__ = init  # type: ignore[method-assign]
