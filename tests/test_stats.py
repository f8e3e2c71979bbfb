"""research.stats against known values: published examples, hand computations, brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from govrisk.research import stats
from govrisk.training.metrics import ks_statistic


def hanley_mcneil() -> tuple[np.ndarray, np.ndarray]:
    """Hanley & McNeil (1982), Radiology 143:29-36, Table 1: 109 CT images rated 1-5 by a radiologist;
    58 normal (counts per rating 33, 6, 6, 11, 2) and 51 abnormal (3, 2, 2, 11, 33). Published AUC 0.893."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    return np.r_[np.zeros(58), np.ones(51)], np.r_[normal, abnormal].astype(float)


def delong_brute_force(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) straight from the definitions, O(m n): placement values psi(X_i, Y_j) =
    1, 1/2, 0 for X > Y, X = Y, X < Y; V10_i = mean_j psi, V01_j = mean_i psi; var = S10/m + S01/n."""
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = out
    m, n = len(v10a), len(v01a)

    def cov(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.sum((u - u.mean()) * (v - v.mean())) / (len(u) - 1))

    var_diff = (cov(v10a, v10a) + cov(v10b, v10b) - 2 * cov(v10a, v10b)) / m + (
        cov(v01a, v01a) + cov(v01b, v01b) - 2 * cov(v01a, v01b)
    ) / n
    return auc_a, auc_b, var_diff


def test_auc_of_the_hanley_mcneil_example() -> None:
    y, s = hanley_mcneil()
    assert stats.auc(y, s) == pytest.approx(0.893, abs=5e-4)
    assert stats.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_delong_matches_brute_force_structural_components() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.3).astype(int)
    a = y * 0.8 + rng.normal(size=300)
    b = np.round(y * 1.2 + rng.normal(size=300), 1)  # rounded: many ties, which midranks must handle
    result = stats.delong_test(y, a, b)
    auc_a, auc_b, var = delong_brute_force(y, a, b)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert result.se**2 == pytest.approx(var, rel=1e-9)
    z = (auc_b - auc_a) / math.sqrt(var)
    assert result.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert result.p_value_greater == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_delong_single_auc_variance_on_the_hanley_mcneil_example() -> None:
    y, s = hanley_mcneil()
    aucs, cov = stats.delong_covariance(y, s)
    _, _, var_vs_constant = delong_brute_force(y, np.zeros_like(s), s)  # a constant scorer has variance 0
    assert aucs[0] == pytest.approx(0.893, abs=5e-4)
    assert cov[0, 0] == pytest.approx(var_vs_constant, rel=1e-9)
    # Hanley & McNeil's exponential approximation gives SE 0.032 for this table; DeLong's
    # nonparametric SE is of the same size.
    assert math.sqrt(cov[0, 0]) == pytest.approx(0.032, abs=0.004)


def test_delong_of_identical_scores_finds_no_difference() -> None:
    y, s = hanley_mcneil()
    result = stats.delong_test(y, s, s.copy())
    assert result.diff == 0 and result.p_value == 1.0


def test_delong_detects_a_real_difference() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(int)
    weak, strong = y * 0.5 + rng.normal(size=4000), y * 1.5 + rng.normal(size=4000)
    result = stats.delong_test(y, weak, strong)
    assert result.diff > 0.1 and result.p_value < 1e-10 and result.ci_low > 0


def test_ks_hand_computed() -> None:
    # Goods score 0.1 and 0.4, bads 0.35 and 0.8. Cumulative shares at or below t:
    # t=0.1: goods 1/2, bads 0 -> gap 0.5; t=0.35: 1/2, 1/2 -> 0; t=0.4: 1, 1/2 -> 0.5; t=0.8: 1, 1 -> 0.
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert stats.ks(y, p) == pytest.approx(0.5)
    assert stats.ks(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)
    # Ties move together: one good and one bad at 0.5 -> no threshold separates them.
    assert stats.ks(np.array([0, 1, 0, 1]), np.array([0.2, 0.5, 0.5, 0.9])) == pytest.approx(0.5)


def test_ks_agrees_with_the_training_metric() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.1).astype(int)
    p = 1 / (1 + np.exp(-(y + rng.normal(size=2000) - 2)))
    assert stats.ks(y, p) == pytest.approx(ks_statistic(y, p), abs=1e-12)


def test_roc_points_integrate_to_the_auc() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(int)
    p = np.round(y + rng.normal(size=500), 1)
    roc = stats.roc_points(y, p, points=10_000)
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(stats.auc(y, p), abs=1e-12)


def test_psi_hand_computed() -> None:
    # Expected 25 % in each of four bins, actual 10/20/30/40 %:
    # 0.15 ln(0.4/0.25... ) -> sum (a - e) ln(a / e) = 0.228218...
    expected = np.repeat([0.5, 1.5, 2.5, 3.5], 25)
    actual = np.repeat([0.5, 1.5, 2.5, 3.5], [10, 20, 30, 40])
    hand = sum((a - 0.25) * math.log(a / 0.25) for a in (0.1, 0.2, 0.3, 0.4))
    assert hand == pytest.approx(0.228218, abs=1e-6)
    result = stats.psi(expected, actual, edges=np.array([1.0, 2.0, 3.0]))
    assert result.value == pytest.approx(hand, abs=1e-12)
    assert result.expected_share == pytest.approx([0.25] * 4)
    assert sum(result.contribution) == pytest.approx(result.value)
    # Deciles of the expected population give the same four bins here (ties are never split).
    assert stats.psi(expected, actual, bins=4).value == pytest.approx(hand, abs=1e-12)


def test_psi_of_the_same_population_is_zero_and_an_empty_bin_is_floored() -> None:
    x = np.random.default_rng(3).normal(size=1000)
    assert stats.psi(x, x).value == pytest.approx(0.0, abs=1e-15)
    # All of actual in one of two equal bins: (1 - .5) ln(1/.5) + (1e-4 - .5) ln(1e-4/.5).
    result = stats.psi(np.r_[np.zeros(50), np.ones(50)], np.ones(10), edges=np.array([0.5]))
    floor = stats.PSI_FLOOR
    assert result.value == pytest.approx(0.5 * math.log(2) + (floor - 0.5) * math.log(floor / 0.5))


def test_psi_categorical_and_missing_bins() -> None:
    e = np.array(["a"] * 50 + ["b"] * 50, dtype=object)
    a = np.array(["a"] * 30 + ["b"] * 50 + ["c"] * 20, dtype=object)
    result = stats.psi(e, a, categorical=True)
    assert result.bins == ["a", "b", "c"]
    assert result.actual_share == pytest.approx([0.3, 0.5, 0.2])
    numeric = stats.psi(np.r_[np.arange(90.0), [np.nan] * 10], np.r_[np.arange(50.0), [np.nan] * 50])
    assert numeric.bins[-1] == "missing"
    assert numeric.expected_share[-1] == pytest.approx(0.1) and numeric.actual_share[-1] == pytest.approx(0.5)


def test_hosmer_lemeshow_hand_computed() -> None:
    # Two groups of 4: PDs 0.1 (observed 1 default) and 0.5 (observed 3).
    # Group 1: E = 0.4, (1 - 0.4)^2 / (0.4 * 0.9) = 1.0; group 2: E = 2, (3 - 2)^2 / (2 * 0.5) = 1.0.
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.1] * 4 + [0.5] * 4)
    result = stats.hosmer_lemeshow(y, p, groups=2)
    assert result.statistic == pytest.approx(2.0)
    assert result.df == 2 and result.p_value == pytest.approx(math.exp(-1.0))  # chi^2_2 survival: e^(-x/2)
    fitted = stats.hosmer_lemeshow(np.tile(y, 2), np.tile(p, 2), groups=4, out_of_sample=False)
    assert fitted.df == 2


def test_hosmer_lemeshow_accepts_a_calibrated_model_and_rejects_a_biased_one() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.3, 20_000)
    y = (rng.random(20_000) < p).astype(int)
    assert stats.hosmer_lemeshow(y, p).p_value > 0.01
    assert stats.hosmer_lemeshow(y, p * 0.7).p_value < 1e-6


def test_jeffreys_and_binomial_against_direct_computation() -> None:
    d, n, pd_ = 5, 100, 0.02
    # Binomial tail by direct summation.
    tail = 1 - sum(math.comb(n, k) * pd_**k * (1 - pd_) ** (n - k) for k in range(d))
    assert stats.binomial_test(d, n, pd_) == pytest.approx(tail, rel=1e-10)
    # Jeffreys: the Beta(5.5, 95.5) CDF at 0.02 by numerical integration of its density.
    a, b = d + 0.5, n - d + 0.5
    grid = np.linspace(0, pd_, 200_001)
    log_density = (a - 1) * np.log(np.maximum(grid, 1e-300)) + (b - 1) * np.log1p(-grid)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    integral = np.trapezoid(np.exp(log_density - log_beta), grid)
    assert stats.jeffreys_test(d, n, pd_) == pytest.approx(integral, rel=1e-4)
    assert stats.jeffreys_test(d, n, pd_) < 0.05  # 5 defaults in 100 at a 2 % PD: underestimated
    assert stats.jeffreys_test(2, 100, 0.02) > 0.3  # as predicted
    with pytest.raises(ValueError, match="defaults=7"):
        stats.jeffreys_test(7, 5, 0.1)


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate() -> None:
    rng = np.random.default_rng(6)
    y = (rng.random(1500) < 0.2).astype(int)
    a, b = y * 0.6 + rng.normal(size=1500), y * 1.2 + rng.normal(size=1500)
    first = stats.bootstrap_ci(y, {"a": a, "b": b}, stats.auc, n_boot=200, seed=1)
    again = stats.bootstrap_ci(y, {"a": a, "b": b}, stats.auc, n_boot=200, seed=1)
    other = stats.bootstrap_ci(y, {"a": a, "b": b}, stats.auc, n_boot=200, seed=2)
    assert first == again and first != other
    for key in ("a", "b", "b - a"):
        assert first[key]["low"] < first[key]["estimate"] < first[key]["high"]
    # The bootstrap SE of an AUC agrees with DeLong's analytic one.
    _, cov = stats.delong_covariance(y, a)
    assert first["a"]["se"] == pytest.approx(math.sqrt(cov[0, 0]), rel=0.25)


def test_reliability_bins_and_bad_labels() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.0, 0.5, 5000)
    y = (rng.random(5000) < p).astype(int)
    rows = stats.reliability(y, p, bins=5)
    assert sum(r["n"] for r in rows) == 5000 and len(rows) == 5
    assert all(r["rate_low"] <= r["default_rate"] <= r["rate_high"] for r in rows)
    assert [r["mean_pd"] for r in rows] == sorted(r["mean_pd"] for r in rows)
    with pytest.raises(ValueError, match="both classes"):
        stats.auc(np.zeros(10), np.arange(10.0))
    with pytest.raises(ValueError, match="0/1"):
        stats.auc(np.array([0, 1, 2]), np.arange(3.0))
