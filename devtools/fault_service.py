"""Test-only: the scoring service with the challenger fault of `$GOVRISK_TEST_CHALLENGER_FAULT`
(devtools/faults.py), served as `bentoml serve devtools.fault_service:Scoring`."""

from devtools.faults import install

install()

from govrisk.serving.service import Scoring  # noqa: E402  (after install: the Scorer it builds is faulty)

__all__ = ["Scoring"]
