"""Reason codes from scorecard points: shared by training (the Scorecard) and serving (the ONNX
`points` output), and kept free of optbinning/scikit-learn/onnx so the scoring image stays light."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SHORTFALL_EPS = 1e-9  # shortfalls below this are rounding, not a reason


def reasons_from_points(points: np.ndarray, table: Sequence[Mapping[str, Any]], k: int) -> list[list[str]]:
    """Reason codes from a points matrix [N, K] (the ONNX `points` output) and `reason_code_table()`.

    The reasons of an applicant are the characteristics where it fell furthest short of the best
    attainable points, largest shortfall first, at most `k`.
    """
    points = np.asarray(points, dtype=np.float64)
    names = [r["characteristic"] for r in sorted(table, key=lambda r: r["index"])]
    best = np.array([r["max_points"] for r in sorted(table, key=lambda r: r["index"])])
    if points.ndim != 2 or points.shape[1] != len(names):
        raise ValueError(f"points must be [N, {len(names)}], got shape {points.shape}")
    shortfall = best[None, :] - points
    order = np.argsort(-shortfall, axis=1, kind="stable")[:, :k]
    return [[names[j] for j in row if shortfall[i, j] > SHORTFALL_EPS] for i, row in enumerate(order)]
