"""Statistics of the champion-challenger report: discrimination, calibration and stability.

Conventions: `y` is 1 for a default ("bad") and 0 otherwise; `p` is a predicted default probability,
so a higher score means riskier. Every routine takes plain numpy arrays and returns plain Python
numbers or small dataclasses, so the report can write them to JSON as they are.

References:
- DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845: the covariance of correlated AUCs
  from the structural components (placement values) of the Mann-Whitney statistic;
  Sun & Xu (2014), IEEE Signal Processing Letters 21(11):1389-1393: the same in O(N log N) by midranks.
- Hosmer & Lemeshow (2000), Applied Logistic Regression, 2nd ed., 5.2.2: the goodness-of-fit statistic;
  g - 2 degrees of freedom on the data the model was fitted on, g on data it was not (external
  validation, which is what an out-of-time check is).
- ECB (2019), Instructions for reporting the validation results of internal models, 2.5.3.1: the
  Jeffreys test of a grade's PD against its observed default rate.
- PSI / CSI: sum over bins of (actual share - expected share) * ln(actual share / expected share);
  rule of thumb < 0.10 stable, 0.10-0.25 shifting, > 0.25 shifted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

# A bin with no rows would make ln(share) infinite; its share is floored at this value instead (the
# usual convention; any fixed floor works as long as development and evaluation use the same one).
PSI_FLOOR = 1e-4


def _binary(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(values)[:5]}")
    if len(values) < 2:
        raise ValueError(f"labels need both classes, got only {sorted(values)} in {len(y)} rows")
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        if s.shape != y.shape:
            raise ValueError(f"scores of shape {s.shape} do not match labels of shape {y.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are not")
        out.append(s)
    return y.astype(bool), out


# --- discrimination ---------------------------------------------------------------------------------


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a bad > score of a good), ties counted one half."""
    yb, (s,) = _binary(y, p)
    ranks = sps.rankdata(s)  # midranks
    m, n = int(yb.sum()), int((~yb).sum())
    return float((ranks[yb].sum() - m * (m + 1) / 2) / (m * n))


def ks(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap F_good(t) - F_bad(t) between the score distributions of
    goods and bads (as `training.metrics.ks_statistic`: max over thresholds of TPR - FPR)."""
    curve = ks_curve(y, p, points=None)
    return float(np.max(np.asarray(curve["good_cdf"]) - np.asarray(curve["bad_cdf"])))


def ks_curve(y: np.ndarray, p: np.ndarray, *, points: int | None = 200) -> dict[str, list[float]]:
    """Cumulative shares of goods and bads with a score at or below each distinct threshold.

    `points` thins the curve for plotting (None: every distinct score). The KS statistic is the
    largest vertical gap between the two curves."""
    yb, (s,) = _binary(y, p)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], yb[order]
    # The last row of each run of equal scores: a threshold passes all of its ties at once.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    bads = np.cumsum(y_sorted)[last] / yb.sum()
    goods = np.cumsum(~y_sorted)[last] / (~yb).sum()
    thresholds = s_sorted[last]
    if points is not None and len(last) > points:
        pick = np.unique(
            np.r_[np.linspace(0, len(last) - 1, points).round().astype(int), np.argmax(goods - bads)]
        )
        thresholds, bads, goods = thresholds[pick], bads[pick], goods[pick]
    return {
        "threshold": np.r_[thresholds.min(), thresholds].tolist(),
        "bad_cdf": np.r_[0.0, bads].tolist(),
        "good_cdf": np.r_[0.0, goods].tolist(),
    }


def roc_points(y: np.ndarray, p: np.ndarray, *, points: int = 200) -> dict[str, list[float]]:
    """ROC curve (FPR, TPR) over distinct thresholds, thinned to about `points` for plotting."""
    curve = ks_curve(y, p, points=None)
    # Flagging scores above t as bad: TPR = 1 - F_bad(t), FPR = 1 - F_good(t).
    fpr = 1 - np.asarray(curve["good_cdf"])[::-1]
    tpr = 1 - np.asarray(curve["bad_cdf"])[::-1]
    if len(fpr) > points:
        pick = np.linspace(0, len(fpr) - 1, points).round().astype(int)
        fpr, tpr = fpr[pick], tpr[pick]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    diff: float  # auc_b - auc_a
    se: float  # standard error of the difference
    z: float
    p_value: float  # two-sided, H0: equal AUCs
    p_value_greater: float  # one-sided, H1: auc_b > auc_a
    ci_low: float  # 95 % interval of the difference
    ci_high: float
    var_a: float
    var_b: float
    cov_ab: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def delong_components(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs [k], structural components V10 [k, m] (one per bad) and V01 [k, n] (one per good).

    Sun & Xu's fast algorithm: with T_x, T_y the midranks of a score within bads and within goods
    and T_z its midranks in the pooled sample, V10 = (T_z[bads] - T_x) / n and
    V01 = 1 - (T_z[goods] - T_y) / m."""
    yb, ss = _binary(y, *scores)
    m, n = int(yb.sum()), int((~yb).sum())
    aucs, v10, v01 = [], [], []
    for s in ss:
        x, z = s[yb], s[~yb]
        tx, ty = sps.rankdata(x), sps.rankdata(z)
        tz = sps.rankdata(np.r_[x, z])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    return np.array(aucs), np.array(v10), np.array(v01)


def delong_covariance(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [k] and their DeLong covariance matrix [k, k] = S10 / m + S01 / n."""
    aucs, v10, v01 = delong_components(y, *scores)
    m, n = v10.shape[1], v01.shape[1]
    if min(m, n) < 2:
        raise ValueError(f"DeLong's variance needs at least two of each class, got {m} bads and {n} goods")
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, level: float = 0.95) -> DeLongResult:
    """DeLong's test of two correlated AUCs on the same rows (model b against model a)."""
    aucs, cov = delong_covariance(y, p_a, p_b)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[1] - aucs[0])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:  # identical rankings: no evidence either way
        z, p2, p1 = 0.0, 1.0, 0.5
    else:
        z = diff / se
        p2, p1 = float(2 * sps.norm.sf(abs(z))), float(sps.norm.sf(z))
    q = float(sps.norm.ppf(0.5 + level / 2))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=diff,
        se=se,
        z=float(z),
        p_value=p2,
        p_value_greater=p1,
        ci_low=diff - q * se,
        ci_high=diff + q * se,
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        cov_ab=float(cov[0, 1]),
    )


def bootstrap_ci(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of `statistic(y, score)` for every score, plus the difference
    of each later score against the first (paired: every replicate resamples the same rows for all).

    Resampling is stratified by class, so every replicate keeps the observed default rate and both
    classes. Seeded: the same inputs and seed give the same intervals."""
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = list(scores)
    yb, ss = _binary(y, *scores.values())
    bad, good = np.flatnonzero(yb), np.flatnonzero(~yb)
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, len(names)))
    for b in range(n_boot):
        idx = np.r_[rng.choice(bad, len(bad)), rng.choice(good, len(good))]
        yy = yb[idx]
        draws[b] = [statistic(yy, s[idx]) for s in ss]
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        out[name] = {
            "estimate": float(statistic(yb, ss[j])),
            "low": float(np.quantile(draws[:, j], lo)),
            "high": float(np.quantile(draws[:, j], hi)),
            "se": float(draws[:, j].std(ddof=1)),
        }
    for j, name in enumerate(names[1:], start=1):
        d = draws[:, j] - draws[:, 0]
        out[f"{name} - {names[0]}"] = {
            "estimate": out[name]["estimate"] - out[names[0]]["estimate"],
            "low": float(np.quantile(d, lo)),
            "high": float(np.quantile(d, hi)),
            "se": float(d.std(ddof=1)),
        }
    return out


# --- calibration ------------------------------------------------------------------------------------


def brier(y: np.ndarray, p: np.ndarray) -> float:
    yb, (s,) = _binary(y, p)
    return float(np.mean((s - yb) ** 2))


def _quantile_groups(p: np.ndarray, groups: int) -> list[np.ndarray]:
    """Row indices of `groups` groups of (nearly) equal size by ascending PD (ties split by order)."""
    order = np.argsort(p, kind="stable")
    return [g for g in np.array_split(order, groups) if len(g)]


def jeffreys_interval(defaults: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed Jeffreys interval of a default rate: Beta(d + 1/2, n - d + 1/2) quantiles."""
    a, b = defaults + 0.5, n - defaults + 0.5
    lo = 0.0 if defaults == 0 else float(sps.beta.ppf((1 - level) / 2, a, b))
    hi = 1.0 if defaults == n else float(sps.beta.ppf(1 - (1 - level) / 2, a, b))
    return lo, hi


def reliability(y: np.ndarray, p: np.ndarray, *, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted PD against the observed default rate in `bins` equal-count PD groups, with the
    Jeffreys 95 % interval of each observed rate."""
    yb, (s,) = _binary(y, p)
    rows = []
    for g in _quantile_groups(s, bins):
        d, n = int(yb[g].sum()), len(g)
        lo, hi = jeffreys_interval(d, n)
        rows.append({
            "n": n, "mean_pd": float(s[g].mean()), "default_rate": d / n, "defaults": d,
            "rate_low": lo, "rate_high": hi,
        })  # fmt: skip
    return rows


@dataclass(frozen=True)
class HosmerLemeshowResult:
    statistic: float
    df: int
    p_value: float
    groups: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def hosmer_lemeshow(
    y: np.ndarray, p: np.ndarray, *, groups: int = 10, out_of_sample: bool = True
) -> HosmerLemeshowResult:
    """Hosmer-Lemeshow: sum over PD-decile groups of (O - E)^2 / (E (1 - E / n)).

    `out_of_sample` (the report's case: OOT rows the model never saw) refers the statistic to chi^2
    with g degrees of freedom; on the fitting data use False for g - 2."""
    yb, (s,) = _binary(y, p)
    if np.any((s <= 0) | (s >= 1)):
        raise ValueError("Hosmer-Lemeshow needs probabilities strictly inside (0, 1)")
    chi = 0.0
    parts = _quantile_groups(s, groups)
    for g in parts:
        observed, expected, n = yb[g].sum(), s[g].sum(), len(g)
        chi += (observed - expected) ** 2 / (expected * (1 - expected / n))
    df = len(parts) if out_of_sample else len(parts) - 2
    if df < 1:
        raise ValueError(f"Hosmer-Lemeshow needs more groups, got {len(parts)}")
    return HosmerLemeshowResult(float(chi), df, float(sps.chi2.sf(chi, df)), len(parts))


def jeffreys_test(defaults: int, n: int, pd_: float) -> float:
    """One-sided Jeffreys test p-value of H0 "the PD is not below the true default rate".

    The posterior of the default rate under the Jeffreys prior is Beta(d + 1/2, n - d + 1/2); the
    p-value is its CDF at the PD. A small p-value says the grade's PD underestimates its defaults."""
    if not 0 <= defaults <= n or n < 1:
        raise ValueError(f"need 0 <= defaults <= n and n >= 1, got {defaults=} {n=}")
    return float(sps.beta.cdf(pd_, defaults + 0.5, n - defaults + 0.5))


def binomial_test(defaults: int, n: int, pd_: float) -> float:
    """One-sided exact binomial p-value P(X >= defaults | n, pd): as many defaults or more."""
    if not 0 <= defaults <= n or n < 1:
        raise ValueError(f"need 0 <= defaults <= n and n >= 1, got {defaults=} {n=}")
    return float(sps.binom.sf(defaults - 1, n, pd_))


# --- stability --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PsiResult:
    value: float
    bins: list[str]  # a label per bin
    expected_share: list[float]
    actual_share: list[float]
    contribution: list[float]  # each bin's term; they add up to `value`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total == 0:
        raise ValueError("a population with no rows has no distribution")
    return counts / total


def psi_from_counts(expected: np.ndarray, actual: np.ndarray, labels: list[str] | None = None) -> PsiResult:
    """PSI of two binned populations given their counts per bin."""
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape or expected.ndim != 1:
        raise ValueError(f"bin counts differ in shape: {expected.shape} vs {actual.shape}")
    e, a = _shares(expected), _shares(actual)
    ef, af = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    terms = (af - ef) * np.log(af / ef)
    labels = labels or [str(i) for i in range(len(e))]
    return PsiResult(float(terms.sum()), labels, e.tolist(), a.tolist(), terms.tolist())


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the quantiles of `values` (duplicates dropped, so ties never split)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.array([])
    inner = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(inner)


def psi(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    bins: int = 10,
    edges: np.ndarray | None = None,
    categorical: bool = False,
) -> PsiResult:
    """Population stability index of `actual` against `expected` (the development population).

    Numeric values are binned at the deciles (`bins`) of `expected`, or at the given inner `edges`;
    bin i holds edges[i-1] <= x < edges[i]. Missing values (NaN) form a bin of their own. With
    `categorical`, each distinct value is a bin."""
    e, a = np.asarray(expected), np.asarray(actual)
    if categorical:
        cats = sorted(set(e.tolist()) | set(a.tolist()), key=str)
        ec = np.array([(e == c).sum() for c in cats])
        ac = np.array([(a == c).sum() for c in cats])
        return psi_from_counts(ec, ac, [str(c) for c in cats])
    e, a = e.astype(np.float64), a.astype(np.float64)
    inner = quantile_edges(e, bins) if edges is None else np.asarray(edges, dtype=np.float64)
    nb = len(inner) + 1
    ec = np.bincount(np.searchsorted(inner, e[np.isfinite(e)], side="right"), minlength=nb)
    ac = np.bincount(np.searchsorted(inner, a[np.isfinite(a)], side="right"), minlength=nb)
    bounds = [-np.inf, *inner.tolist(), np.inf]
    labels = [f"[{lo:.4g}, {hi:.4g})" for lo, hi in itertools.pairwise(bounds)]
    e_nan, a_nan = int((~np.isfinite(e)).sum()), int((~np.isfinite(a)).sum())
    if e_nan or a_nan:
        ec, ac, labels = np.r_[ec, e_nan], np.r_[ac, a_nan], [*labels, "missing"]
    return psi_from_counts(ec, ac, labels)


def stability_band(value: float) -> str:
    """The usual reading of a PSI / CSI value."""
    return "stable" if value < 0.10 else "shifting" if value < 0.25 else "shifted"
