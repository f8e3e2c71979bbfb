"""The figures every model is judged by, computed the same way for every model and split."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of bads and goods."""
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def top_decile_capture(y: np.ndarray, p: np.ndarray) -> float:
    """Share of all defaults found among the 10 % of applicants with the highest PD."""
    k = max(1, int(np.ceil(0.1 * len(p))))
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].sum() / max(y.sum(), 1))


def evaluate(y: np.ndarray, p: np.ndarray, split: str) -> dict[str, float]:
    """`split/metric` figures for labels `y` and predicted default probabilities `p`."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in shape: {y.shape=} {p.shape=}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(
            f"{split}: probabilities must be finite and in [0, 1]; got min {p.min()} max {p.max()}"
        )
    auc = float(roc_auc_score(y, p))
    return {
        f"{split}/auroc": auc,
        f"{split}/gini": 2 * auc - 1,
        f"{split}/ks": ks_statistic(y, p),
        f"{split}/brier": float(brier_score_loss(y, p)),
        f"{split}/logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        f"{split}/top_decile_capture": top_decile_capture(y, p),
        f"{split}/default_rate": float(y.mean()),
        f"{split}/mean_pd": float(p.mean()),
        f"{split}/n": float(len(y)),
    }
