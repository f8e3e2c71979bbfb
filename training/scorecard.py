"""The WOE-binned logistic scorecard: the lender's champion model.

Every raw characteristic (`FeatureSet.raw`, natural units, NaN = unknown, categories as vocabulary
codes with -1 = unknown) is binned by optbinning's optimal binning; the bins' weights of evidence
(WOE = ln(share of goods / share of bads), so higher = safer) replace the raw values. Characteristics
are kept by information value, collinear ones are dropped, and a logistic regression on the WOE
columns gives the PD. Points are the usual scaling: score = offset + factor * ln(odds good:bad),
`factor = pdo / ln 2`, `offset = base_points - factor * ln(base_odds)`, split over the characteristics
so that every characteristic's points depend on its own bin only.

Two scoring paths exist on purpose. Python scoring (`predict_proba`, `points`, ...) goes through
optbinning's own `transform`, the reference. The ONNX graph (`to_onnx`) is built by hand from bin
tables that were read off optbinning by probing its `transform` (one value per bin, NaN, an unseen
category) and checked against it on all training rows at fit time; `export_onnx` then checks the
graph against the Python path on real rows. Binning and regression both live inside the graph, so
serving needs only onnxruntime and the feature schema.

Bin semantics the graph reproduces (optbinning 1.0): numeric bins are [a, b) intervals
(`np.digitize(x, splits, right=False)`), so a value equal to a split point belongs to the upper bin;
NaN goes to the Missing bin with its empirical WOE (0 when training had no missing rows or the bin
is pure); a category code never seen in training gets optbinning's `cat_unknown` WOE.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import pandas as pd
from joblib import Parallel, delayed
from onnx import TensorProto, helper, numpy_helper
from optbinning import OptimalBinning
from pydantic import Field, model_validator
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from govrisk.core.config import StrictModel, load_config
from govrisk.core.onnx import OnnxGraph, compare
from govrisk.core.reasons import reasons_from_points  # re-exported: serving imports it from govrisk

ONNX_OPSET = 17
ONNX_CHECK_ROWS = 10_000
UNKNOWN_CODE = -1.0  # FeatureBuilder's code for an unknown / unseen category


# --- configuration -----------------------------------------------------------------------------


class BinningConfig(StrictModel):
    prebinning_method: Literal["cart", "quantile", "uniform", "mdlp"]
    solver: Literal["cp", "mip", "ls"]
    max_n_prebins: int = Field(ge=2)
    min_prebin_size: float = Field(gt=0, le=0.5)
    max_n_bins: int = Field(ge=2)
    min_bin_size: float = Field(gt=0, le=0.5)
    numeric_monotonic_trend: (
        Literal["auto", "auto_heuristic", "auto_asc_desc", "ascending", "descending", "peak", "valley"] | None
    )
    categorical_monotonic_trend: Literal["auto", "auto_asc_desc", "ascending", "descending"] | None
    unknown_category: Literal["category", "missing"]
    cat_cutoff: float | None = Field(gt=0, lt=1)
    time_limit: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> BinningConfig:
        if self.max_n_bins > self.max_n_prebins:
            raise ValueError(f"max_n_bins={self.max_n_bins} exceeds max_n_prebins={self.max_n_prebins}")
        return self


class SelectionConfig(StrictModel):
    min_iv: float = Field(ge=0)
    max_features: int = Field(ge=1)
    max_correlation: float = Field(gt=0, le=1)
    drop_wrong_sign: bool


class RegressionConfig(StrictModel):
    penalty: Literal["l2", "l1", "none"]
    C: float = Field(gt=0)
    solver: Literal["lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"]
    max_iter: int = Field(ge=1)
    tol: float = Field(gt=0)
    class_weight: Literal["balanced"] | None

    @model_validator(mode="after")
    def _check(self) -> RegressionConfig:
        if self.penalty == "l1" and self.solver not in {"liblinear", "saga"}:
            raise ValueError(f"penalty 'l1' needs solver liblinear or saga, got {self.solver!r}")
        return self


class ScalingConfig(StrictModel):
    base_points: float
    base_odds: float = Field(gt=0)
    pdo: float = Field(gt=0)

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_points - self.factor * math.log(self.base_odds)


class ScorecardConfig(StrictModel):
    binning: BinningConfig
    selection: SelectionConfig
    regression: RegressionConfig
    scaling: ScalingConfig
    reason_codes: int = Field(ge=1)
    n_jobs: int = Field(ge=1)


def load_scorecard_config(name_or_path: str | Path = "scorecard", **overrides: Any) -> ScorecardConfig:
    """Load `configs/model/<name>.yaml` (or a path) with optional top-level key overrides."""
    return load_config("model", name_or_path, ScorecardConfig, **overrides)


# --- bin tables --------------------------------------------------------------------------------
@dataclass
class BinTable:
    """One characteristic's WOE lookup, exactly as optbinning's `transform` applies it.

    numeric: bin k holds splits[k-1] <= x < splits[k]; `woe` has len(splits) + 1 entries.
    categorical: `codes[i]` -> `code_woe[i]`; any other code -> `unknown_woe`; `missing_codes`
    (code -1 under unknown_category="missing") and NaN -> `missing_woe`.
    """

    name: str
    column: int  # position in the raw frame / ONNX input
    kind: Literal["numeric", "categorical"]
    missing_woe: float
    splits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    woe: np.ndarray = field(default_factory=lambda: np.zeros(0))
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    code_woe: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unknown_woe: float = 0.0
    missing_codes: tuple[float, ...] = ()
    attainable_woe: np.ndarray = field(default_factory=lambda: np.zeros(0))  # WOE of bins with training rows

    def apply(self, x: np.ndarray) -> np.ndarray:
        """WOE of `x` from the table alone (what the ONNX graph computes), float64."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "numeric":
            idx = (x[:, None] >= self.splits[None, :]).sum(1)
            out = self.woe[idx]
        else:
            hit = x[:, None] == self.codes[None, :]
            out = np.where(hit.any(1), (hit * self.code_woe[None, :]).sum(1), self.unknown_woe)
        missing = np.isnan(x) | np.isin(x, self.missing_codes)
        return np.where(missing, self.missing_woe, out)


def _probe_table(
    ob: OptimalBinning,
    *,
    name: str,
    column: int,
    kind: str,
    x_train: np.ndarray,
    missing_codes: tuple[float, ...],
) -> BinTable:
    """Read the WOE of every bin off optbinning by transforming one representative value per bin."""

    def woe(values: np.ndarray) -> np.ndarray:
        return np.asarray(
            ob.transform(np.asarray(values, dtype=np.float64), metric="woe", metric_missing="empirical"),
            dtype=np.float64,
        )

    missing_woe = float(woe(np.array([np.nan]))[0])
    bt = ob.binning_table.build()
    missing_count = int(bt.loc[bt["Bin"].astype(str) == "Missing", "Count"].iloc[0])
    if kind == "numeric":
        splits = np.array(ob.splits, dtype=np.float64)  # a copy: the table must not alias optbinning state
        # A value equal to a split lies in the bin above it ([a, b) bins); below the first split, the first bin.
        probes = np.r_[np.nextafter(splits[0], -np.inf), splits] if len(splits) else np.zeros(1)
        table_woe = woe(probes)
        counts = bt["Count"].to_numpy()[: len(table_woe)].astype(np.int64)
        attainable = table_woe[counts > 0]
        t = BinTable(
            name=name, column=column, kind="numeric", missing_woe=missing_woe, splits=splits, woe=table_woe
        )
    else:
        clean = x_train[~np.isnan(x_train) & ~np.isin(x_train, missing_codes)]
        codes = np.unique(clean)
        code_woe = woe(codes)
        # Any code outside the training vocabulary gets optbinning's cat_unknown WOE.
        unseen = (codes.max() + 1.0) if len(codes) else 0.0
        unknown_woe = float(woe(np.array([unseen]))[0])
        attainable = code_woe
        t = BinTable(
            name=name,
            column=column,
            kind="categorical",
            missing_woe=missing_woe,
            codes=codes,
            code_woe=code_woe,
            unknown_woe=unknown_woe,
            missing_codes=missing_codes,
        )
    t.attainable_woe = np.unique(np.r_[attainable, [missing_woe] if missing_count > 0 else []])
    return t


# --- fitting -------------------------------------------------------------------------------------
def _fit_binning(
    name: str, x: np.ndarray, y: np.ndarray, categorical: bool, cfg: BinningConfig
) -> OptimalBinning:
    ob = OptimalBinning(
        name=name,
        dtype="categorical" if categorical else "numerical",
        prebinning_method=cfg.prebinning_method,
        solver=cfg.solver,
        max_n_prebins=cfg.max_n_prebins,
        min_prebin_size=cfg.min_prebin_size,
        max_n_bins=cfg.max_n_bins,
        min_bin_size=cfg.min_bin_size,
        monotonic_trend=cfg.categorical_monotonic_trend if categorical else cfg.numeric_monotonic_trend,
        cat_cutoff=cfg.cat_cutoff if categorical else None,
        time_limit=cfg.time_limit,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) in pure bins; optbinning sets their WOE to 0
        ob.fit(x, y)
    return ob


def _as_frame(raw: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(raw, pd.DataFrame):
        raise TypeError(f"raw must be a pandas DataFrame (FeatureSet.raw), got {type(raw).__name__}")
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise ValueError(
            f"raw is missing {len(missing)} characteristic(s) the scorecard needs: {missing[:5]}"
        )
    return raw


class Scorecard:
    """A fitted WOE logistic scorecard; build one with `Scorecard.fit`."""

    def __init__(
        self,
        *,
        config: ScorecardConfig,
        raw_features: list[str],
        categorical: list[str],
        binnings: dict[str, OptimalBinning],
        tables: dict[str, BinTable],
        selected: list[str],
        coef: np.ndarray,
        intercept: float,
        summary: pd.DataFrame,
        vocabulary: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if len(coef) != len(selected):
            raise ValueError(f"{len(coef)} coefficients for {len(selected)} selected characteristics")
        self.config = config
        self.raw_features = list(raw_features)
        self.categorical = list(categorical)
        self.binnings = binnings
        self.tables = tables
        self.selected = list(selected)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.summary = summary  # one row per raw characteristic: IV, status, why dropped
        self.vocabulary = {k: list(v) for k, v in (vocabulary or {}).items()}
        self.fit_seconds: float | None = None

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        y_train: np.ndarray | pd.Series | Sequence[float],
        *,
        categorical: Sequence[str],
        config: ScorecardConfig,
        vocabulary: Mapping[str, Sequence[str]] | None = None,
    ) -> Scorecard:
        """Bin every column of `train`, select by IV and correlation, fit the regression.

        `train` is `FeatureSet.raw` (its column order becomes the ONNX input order); `categorical`
        names its category-code columns (`builder.fitted["categorical"]`); `vocabulary` (optional,
        `builder.fitted["vocab"]`) only labels categorical bins in `table()`.
        """
        start = time.perf_counter()
        if not isinstance(train, pd.DataFrame):
            raise TypeError(f"train must be a pandas DataFrame (FeatureSet.raw), got {type(train).__name__}")
        raw_features = [str(c) for c in train.columns]
        if len(set(raw_features)) != len(raw_features):
            raise ValueError(
                f"train has duplicate columns: {sorted({c for c in raw_features if raw_features.count(c) > 1})}"
            )
        unknown = [c for c in categorical if c not in train.columns]
        if unknown:
            raise ValueError(f"categorical columns not in train: {unknown}")
        y = np.asarray(y_train, dtype=np.float64).ravel()
        if len(y) != len(train):
            raise ValueError(f"y_train has {len(y)} labels for {len(train)} rows")
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"y_train must be 0/1, got {float(y[bad][0]):g} at row {int(np.flatnonzero(bad)[0])}"
            )
        if y.min() == y.max():
            raise ValueError(f"y_train has a single class ({y[0]:g}): nothing to learn")
        y = y.astype(np.int64)
        cfg = config
        cats = set(categorical)
        missing_codes = (UNKNOWN_CODE,) if cfg.binning.unknown_category == "missing" else ()

        columns = {c: train[c].to_numpy(dtype=np.float64) for c in raw_features}
        inputs = {c: _binning_input(columns[c], missing_codes if c in cats else ()) for c in raw_features}
        if cfg.n_jobs > 1:
            fitted = Parallel(n_jobs=cfg.n_jobs)(
                delayed(_fit_binning)(c, inputs[c], y, c in cats, cfg.binning) for c in raw_features
            )
            binnings = dict(zip(raw_features, fitted, strict=True))
        else:
            binnings = {c: _fit_binning(c, inputs[c], y, c in cats, cfg.binning) for c in raw_features}

        # Information value, then candidates strongest first.
        rows = []
        for c in raw_features:
            ob = binnings[c]
            ok = ob.status in {"OPTIMAL", "FEASIBLE"}
            bt = ob.binning_table.build() if ok else None
            rows.append(
                {
                    "characteristic": c,
                    "categorical": c in cats,
                    "status": ob.status,
                    "iv": float(bt.loc["Totals", "IV"]) if bt is not None else float("nan"),
                    "n_bins": len(bt) - 3 if bt is not None else 0,  # less Special, Missing, Totals
                }
            )
        summary = pd.DataFrame(rows).set_index("characteristic")
        summary["selected"] = False
        summary["dropped"] = ""
        summary.loc[~summary["status"].isin(["OPTIMAL", "FEASIBLE"]), "dropped"] = "binning failed"
        weak = summary["iv"].fillna(0.0) < cfg.selection.min_iv
        summary.loc[weak & (summary["dropped"] == ""), "dropped"] = f"iv < {cfg.selection.min_iv:g}"
        candidates = summary.index[summary["dropped"] == ""].tolist()
        candidates.sort(key=lambda c: -summary.at[c, "iv"])
        if not candidates:
            raise ValueError(
                f"no characteristic reaches min_iv={cfg.selection.min_iv:g}; best IV is {summary['iv'].max():.4f}"
            )

        woe = {c: _optb_woe(binnings[c], inputs[c]) for c in candidates}
        usable = [c for c in candidates if np.std(woe[c]) > 0]
        summary.loc[[c for c in candidates if c not in usable], "dropped"] = "constant WOE"
        if not usable:
            raise ValueError(f"no characteristic has a non-constant WOE among {len(candidates)} candidates")
        # WOE is ln(good share / bad share): a characteristic must lower the PD as its WOE rises. A
        # positive coefficient is collinearity at work and would give riskier bins more points. The
        # offender leaves and the correlation filter runs again, so that peers it had shut out (often
        # near-copies of it) can take its place.
        corr = np.atleast_2d(np.abs(np.corrcoef(np.column_stack([woe[c] for c in usable]), rowvar=False)))
        wrong_sign: dict[str, str] = {}
        while True:
            kept, why = _select(usable, corr, exclude=wrong_sign, sel=cfg.selection)
            lr = _fit_regression(np.column_stack([woe[c] for c in kept]), y, cfg.regression)
            coef = lr.coef_.ravel()
            if not cfg.selection.drop_wrong_sign or coef.max() <= 0 or len(kept) == 1:
                break
            j = int(np.argmax(coef))
            wrong_sign[kept[j]] = f"wrong sign (coefficient {coef[j]:+.3f})"
        for c, reason in {**why, **wrong_sign}.items():
            summary.at[c, "dropped"] = reason
        summary.loc[kept, "selected"] = True

        tables = {}
        for c in kept:
            t = _probe_table(
                binnings[c],
                name=c,
                column=raw_features.index(c),
                kind="categorical" if c in cats else "numeric",
                x_train=columns[c],
                missing_codes=missing_codes if c in cats else (),
            )
            # The graph is built from these tables: they must reproduce optbinning on every training row.
            got = t.apply(columns[c])
            if not np.array_equal(got, woe[c]):
                i = int(np.flatnonzero(got != woe[c])[0])
                raise RuntimeError(
                    f"bin table of {c!r} disagrees with optbinning at training row {i}: x={columns[c][i]!r}, "
                    f"table WOE {got[i]!r} vs optbinning {woe[c][i]!r}"
                )
            tables[c] = t

        card = cls(
            config=cfg,
            raw_features=raw_features,
            categorical=list(categorical),
            binnings=binnings,
            tables=tables,
            selected=kept,
            coef=coef,
            intercept=float(lr.intercept_[0]),
            summary=summary,
            vocabulary=vocabulary,
        )
        card.fit_seconds = time.perf_counter() - start
        return card

    # --- scoring (the Python reference path: optbinning's transform) ---------------------------
    def woe(self, raw: pd.DataFrame) -> pd.DataFrame:
        """WOE of each selected characteristic, via optbinning's `transform`."""
        raw = _as_frame(raw, self.selected)
        out = {}
        for c in self.selected:
            x = raw[c].to_numpy(dtype=np.float64)
            out[c] = _optb_woe(self.binnings[c], _binning_input(x, self.tables[c].missing_codes))
        return pd.DataFrame(out, index=raw.index)

    def logit(self, raw: pd.DataFrame) -> np.ndarray:
        """Log-odds of default."""
        return self.woe(raw).to_numpy() @ self.coef + self.intercept

    def predict_proba(self, raw: pd.DataFrame) -> np.ndarray:
        """PD (probability of default) per row, float64 [N]."""
        return expit(self.logit(raw))

    def characteristic_points(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Points each selected characteristic contributes; rows sum to `points(raw)`."""
        w = self.woe(raw)
        return pd.DataFrame(
            w.to_numpy() * self._point_slope + self._point_shift, index=w.index, columns=self.selected
        )

    def points(self, raw: pd.DataFrame) -> np.ndarray:
        """Total score per row (higher = safer): offset + factor * ln(odds good:bad)."""
        return self.characteristic_points(raw).to_numpy().sum(1)

    def points_for_odds(self, odds_good: float | np.ndarray) -> float | np.ndarray:
        """The score the scaling gives to good:bad odds `odds_good`."""
        s = self.config.scaling
        return s.offset + s.factor * np.log(odds_good)

    @property
    def max_points(self) -> np.ndarray:
        """Best points attainable per selected characteristic (over bins that held training rows)."""
        return np.array(
            [
                (self.tables[c].attainable_woe * self._point_slope[j]).max() + self._point_shift
                for j, c in enumerate(self.selected)
            ]
        )

    def reason_codes(self, raw: pd.DataFrame, k: int | None = None) -> list[list[str]]:
        """Adverse-action reasons: per row, up to `k` characteristics with the largest points shortfall
        against their best attainable points, largest first (ties in scorecard order); none at the best."""
        k = self.config.reason_codes if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return reasons_from_points(self.characteristic_points(raw).to_numpy(), self.reason_code_table(), k)

    def reason_code_table(self) -> list[dict[str, Any]]:
        """What serving needs besides the ONNX `points` output: column j of `points` is
        `characteristic`, whose best attainable points are `max_points`."""
        return [
            {"index": j, "characteristic": c, "max_points": float(m)}
            for j, (c, m) in enumerate(zip(self.selected, self.max_points, strict=True))
        ]

    @property
    def _point_slope(self) -> np.ndarray:
        return -self.config.scaling.factor * self.coef

    @property
    def _point_shift(self) -> float:
        s = self.config.scaling
        return (s.offset - s.factor * self.intercept) / len(self.selected)

    # --- reporting ------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """The scorecard table: one row per bin of each selected characteristic (written as CSV)."""
        rows = []
        for j, c in enumerate(self.selected):
            t = self.tables[c]
            bt = self.binnings[c].binning_table.build().drop(index="Totals")
            # No special codes are configured: the Special row is always empty.
            bins = [r for r in bt.to_dict("records") if str(r["Bin"]) != "Special"]
            total = sum(int(r["Count"]) for r in bins)
            entries = []  # (label, count, event rate, WOE, IV)
            for i, r in enumerate(bins):
                count = int(r["Count"])
                er = float(r["Event rate"]) if count else float("nan")
                if isinstance(r["Bin"], str) and r["Bin"] == "Missing":
                    label = "Missing or unknown (-1)" if t.missing_codes else "Missing"
                    entries.append((label, count, er, t.missing_woe, float(r["IV"])))
                elif t.kind == "numeric":
                    entries.append((str(r["Bin"]), count, er, float(t.woe[i]), float(r["IV"])))
                else:
                    codes = np.asarray(r["Bin"], dtype=np.float64)
                    w = float(t.code_woe[np.searchsorted(t.codes, codes[0])])
                    entries.append((self._labels(c, codes), count, er, w, float(r["IV"])))
            if t.kind == "categorical":
                entries.append(("(category not seen in training)", 0, float("nan"), t.unknown_woe, 0.0))
            for label, count, er, w, iv in entries:
                rows.append(
                    {
                        "characteristic": c,
                        "bin": label,
                        "count": count,
                        "count_share": count / total,
                        "event_rate": er,
                        "woe": w,
                        "iv": iv,
                        "coefficient": float(self.coef[j]),
                        "points": w * self._point_slope[j] + self._point_shift,
                    }
                )
        return pd.DataFrame(rows)

    def _labels(self, name: str, codes: np.ndarray) -> str:
        vocab = self.vocabulary.get(name)
        if not vocab:
            return "[" + ", ".join(f"{x:g}" for x in codes) + "]"
        names = [
            vocab[int(x)]
            if 0 <= x < len(vocab) and x == int(x)
            else ("unknown" if x == UNKNOWN_CODE else f"{x:g}")
            for x in codes
        ]
        return "[" + ", ".join(names) + "]"

    # --- ONNX -----------------------------------------------------------------------------------
    def to_onnx(self, *, input_dtype: Literal["float64", "float32"] = "float64") -> onnx.ModelProto:
        """The whole scorecard (binning, regression, points) as one ONNX graph, opset 17.

        Input `raw` [N, R] in `raw_features` order; outputs `pd` [N], `score` [N] and `points`
        [N, K] (K = len(selected), in `selected` order), all float64. Computation is float64 inside.
        """
        return _build_onnx(self, input_dtype)


def _binning_input(x: np.ndarray, missing_codes: tuple[float, ...]) -> np.ndarray:
    """Raw column -> what optbinning sees: under unknown_category="missing" code -1 becomes NaN."""
    if not missing_codes:
        return x
    return np.where(np.isin(x, missing_codes), np.nan, x)


def _optb_woe(ob: OptimalBinning, x: np.ndarray) -> np.ndarray:
    return np.asarray(ob.transform(x, metric="woe", metric_missing="empirical"), dtype=np.float64)


def _select(
    candidates: list[str], corr: np.ndarray, *, exclude: Mapping[str, str], sel: SelectionConfig
) -> tuple[list[str], dict[str, str]]:
    """Greedy filter in IV order (`candidates` is sorted; `corr` is |Pearson| between their WOE
    columns): a characteristic too correlated with a stronger kept one is dropped; at most
    `max_features` are kept. Returns (kept, why each other one was dropped)."""
    kept: list[int] = []
    why: dict[str, str] = {}
    for i, c in enumerate(candidates):
        if c in exclude:
            continue
        if len(kept) >= sel.max_features:
            why[c] = f"beyond max_features={sel.max_features}"
            continue
        worst = kept[int(np.argmax(corr[i, kept]))] if kept else -1
        if kept and corr[i, worst] > sel.max_correlation:
            why[c] = f"|corr| {corr[i, worst]:.2f} with {candidates[worst]}"
            continue
        kept.append(i)
    return [candidates[i] for i in kept], why


def _fit_regression(X: np.ndarray, y: np.ndarray, cfg: RegressionConfig) -> LogisticRegression:
    lr = LogisticRegression(
        C=math.inf if cfg.penalty == "none" else cfg.C,
        l1_ratio=1.0 if cfg.penalty == "l1" else 0.0,
        solver=cfg.solver,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        class_weight=cfg.class_weight,
    )
    # The design is small ([N, <=max_features]); multi-threaded BLAS only adds thread hand-offs to
    # every L-BFGS step, 20-50x slower measured on a busy 2-core machine.
    with threadpool_limits(limits=1):
        return lr.fit(X, y)


# --- ONNX graph ------------------------------------------------------------------------------------
def _build_onnx(card: Scorecard, input_dtype: str) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: Any, dtype: Any = np.float64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs))
        return output

    if input_dtype not in {"float64", "float32"}:
        raise ValueError(f"input_dtype must be float64 or float32, got {input_dtype!r}")
    elem = TensorProto.DOUBLE if input_dtype == "float64" else TensorProto.FLOAT
    x_all = "raw" if input_dtype == "float64" else node("Cast", ["raw"], "raw_f64", to=TensorProto.DOUBLE)
    axis1 = const("axis1", [1], np.int64)
    woe_cols = []
    for j, c in enumerate(card.selected):
        t = card.tables[c]
        p = f"c{j}"
        x = node("Gather", [x_all, const(f"{p}_col", t.column, np.int64)], f"{p}_x", axis=1)  # [N]
        xc = node("Unsqueeze", [x, axis1], f"{p}_xcol")  # [N, 1]
        if t.kind == "numeric" and len(t.splits):
            # Bin index = number of splits <= x: np.digitize(right=False), i.e. [a, b) bins.
            ge = node("GreaterOrEqual", [xc, const(f"{p}_splits", t.splits[None, :])], f"{p}_ge")
            idx = node(
                "ReduceSum",
                [node("Cast", [ge], f"{p}_ge_i", to=TensorProto.INT64), axis1],
                f"{p}_idx",
                keepdims=0,
            )
            w = node("Gather", [const(f"{p}_woe", t.woe), idx], f"{p}_bin_woe", axis=0)
        elif t.kind == "numeric":
            # A single bin: its WOE broadcast to the batch (Where broadcasts; NaN is handled below).
            only = const(f"{p}_woe", t.woe[0])
            w = node("Where", [node("IsNaN", [x], f"{p}_isnan0"), only, only], f"{p}_bin_woe")
        else:
            # One-hot against the training codes; exactly one term is non-zero, so the MatMul is exact.
            hit = node(
                "Cast",
                [node("Equal", [xc, const(f"{p}_codes", t.codes[None, :])], f"{p}_eq")],
                f"{p}_hit",
                to=TensorProto.DOUBLE,
            )
            val = node("MatMul", [hit, const(f"{p}_code_woe", t.code_woe)], f"{p}_code_val")
            seen = node(
                "Greater",
                [node("ReduceSum", [hit, axis1], f"{p}_nhit", keepdims=0), const(f"{p}_zero", 0.0)],
                f"{p}_seen",
            )
            w = node("Where", [seen, val, const(f"{p}_unknown_woe", t.unknown_woe)], f"{p}_bin_woe")
        missing = node("IsNaN", [x], f"{p}_isnan")
        for i, code in enumerate(t.missing_codes):
            is_code = node("Equal", [x, const(f"{p}_missing_code{i}", code)], f"{p}_is_missing_code{i}")
            missing = node("Or", [missing, is_code], f"{p}_missing{i}")
        w = node("Where", [missing, const(f"{p}_missing_woe", t.missing_woe), w], f"{p}_woe_final")
        woe_cols.append(node("Unsqueeze", [w, axis1], f"{p}_woe_col"))
    woe = node("Concat", woe_cols, "woe", axis=1) if len(woe_cols) > 1 else node("Identity", woe_cols, "woe")
    logit = node(
        "Add",
        [node("MatMul", [woe, const("coef", card.coef)], "lin"), const("intercept", card.intercept)],
        "logit",
    )
    node("Sigmoid", [logit], "pd")
    pts = node(
        "Add",
        [
            node("Mul", [woe, const("point_slope", card._point_slope[None, :])], "pts_lin"),
            const("point_shift", card._point_shift),
        ],
        "points",
    )
    node("ReduceSum", [pts, axis1], "score", keepdims=0)

    graph = helper.make_graph(
        nodes,
        "govrisk_scorecard",
        inputs=[helper.make_tensor_value_info("raw", elem, ["N", len(card.raw_features)])],
        outputs=[
            helper.make_tensor_value_info("pd", TensorProto.DOUBLE, ["N"]),
            helper.make_tensor_value_info("score", TensorProto.DOUBLE, ["N"]),
            helper.make_tensor_value_info("points", TensorProto.DOUBLE, ["N", len(card.selected)]),
        ],
        initializer=inits,
    )
    opset = [helper.make_opsetid("", ONNX_OPSET)]
    model = helper.make_model(
        graph,
        opset_imports=opset,
        producer_name="govrisk.training.scorecard",
        # The lowest IR version that carries opset 17: any runtime that knows the opset loads it.
        ir_version=helper.find_min_ir_version_for(opset),
        doc_string="WOE logistic scorecard: raw characteristics -> PD, score, points per characteristic",
    )
    helper.set_model_props(
        model,
        {
            "govrisk.raw_features": json.dumps(card.raw_features),
            "govrisk.selected": json.dumps(card.selected),
            "govrisk.reason_code_table": json.dumps(card.reason_code_table()),
            "govrisk.reason_codes": str(card.config.reason_codes),
            "govrisk.scaling": card.config.scaling.model_dump_json(),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_scorecard(
    card: Scorecard, path: str | Path, check_raw: pd.DataFrame, *, atol: float = 1e-5
) -> dict[str, Any]:
    """Write `card.to_onnx()` to `path` after checking it with onnxruntime against `predict_proba` on
    the first 10,000 rows of `check_raw`; raises `OnnxParityError` (max |Δ|, row) beyond `atol`."""
    check = _as_frame(check_raw, card.raw_features).iloc[:ONNX_CHECK_ROWS]
    if len(check) == 0:
        raise ValueError("check_raw has no rows: parity cannot be checked")
    model = card.to_onnx()
    graph = OnnxGraph(model.SerializeToString(), name=f"scorecard {path}")
    got = graph.run({"raw": check[card.raw_features].to_numpy(dtype=np.float64)}, ["pd", "score", "points"])
    pd_diff = compare(got["pd"], card.predict_proba(check), atol=atol, what="scorecard pd")
    score_diff = float(np.max(np.abs(got["score"] - card.points(check))))
    points_diff = float(np.max(np.abs(got["points"] - card.characteristic_points(check).to_numpy())))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return {
        "max_abs_diff": pd_diff,
        "max_abs_score_diff": score_diff,
        "max_abs_points_diff": points_diff,
        "rows": len(check),
        "path": str(path),
    }
