"""Features shared by training and serving.

From `applicants` plus the monthly tables of a contract, `FeatureBuilder` makes:

- `sequence` [N, T, C] float32: the lookback window of every monthly column (scaled), one presence
  mask per monthly table, and calendar channels. Month T-1 is the month before application.
- `static` [N, F] float32: static facts, windowed aggregates (means, last values, slopes,
  volatility, event counts, months since the last event), ratios, and category one-hots; clipped,
  imputed (with missing indicators) and standardised.
- `raw` [N, R] float64 DataFrame: the same characteristics before scaling, categories as vocabulary
  codes; the scorecard bins these, so its bins read in natural units.

`fit` learns the transforms (quantile clips, medians, means, scales, vocabularies) and `schema()`
writes them to a JSON feature schema that travels with every model. Serving rebuilds the builder from
that schema and calls the same `transform`, so online and offline features agree bit for bit.

The leakage guard: only records dated strictly before the application month reach any feature.
Every computation is per applicant (no cross-row statistic at transform time), which is what makes
one applicant's transform equal the batch transform.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from govrisk.core.config import StrictModel, is_path, load_config
from govrisk.core.schema import FEATURE_SCHEMA_VERSION, FeatureSchema
from govrisk.data.contract import MONTH, ColumnSpec, Contract, load_contract
from govrisk.data.months import month_number

UNKNOWN = "__unknown__"


class RatioConfig(StrictModel):
    name: str
    numerator: str  # an applicants column, or `table.column` summed over `window` months
    denominator: str
    window: int | None = Field(default=None, ge=1)
    agg: Literal["sum", "mean"] = "sum"


class FeatureConfig(StrictModel):
    contract: str
    lookback_months: int = Field(ge=1, le=36)
    windows: tuple[int, ...]
    trend_window: int = Field(ge=3)
    clip_quantiles: tuple[float, float] = (0.001, 0.999)
    min_category_count: int = Field(default=20, ge=1)
    calendar: bool = True
    ratios: tuple[RatioConfig, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        for w in (*self.windows, self.trend_window):
            if not 1 <= w <= self.lookback_months:
                raise ValueError(f"window {w} must be within 1..lookback_months={self.lookback_months}")
        lo, hi = self.clip_quantiles
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"clip_quantiles must satisfy 0 <= lo < hi <= 1, got {self.clip_quantiles}")
        return self


def load_feature_config(name_or_path: str | Path, **overrides: Any) -> FeatureConfig:
    """Load `configs/features/<name>.yaml` (or a path) with optional key overrides."""
    return load_config("features", name_or_path, FeatureConfig, **overrides)


@dataclass
class Located:
    """One monthly table's records inside the lookback windows, sorted by applicant row."""

    rows: np.ndarray  # [M] applicant row
    pos: np.ndarray  # [M] position in the window, T-1 = the month before application
    values: np.ndarray  # [C, M] float64, the contract's columns in order (categories as vocabulary codes)


@dataclass
class FeatureSet:
    applicant_ids: np.ndarray  # [N] str
    application_month: np.ndarray  # [N] int64, months since 1970-01 (vintage)
    sequence: np.ndarray  # [N, T, C] float32
    static: np.ndarray  # [N, F] float32
    raw: pd.DataFrame  # [N, R] float64
    labels: np.ndarray | None  # [N] float32 in {0, 1}, None when the label is absent

    def __len__(self) -> int:
        return len(self.applicant_ids)

    def model_inputs(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays an exported model takes, by its ONNX input names (`raw`, `sequence`, `static`)."""
        arrays = {}
        for name in names:
            if name == "raw":
                arrays[name] = self.raw.to_numpy(dtype=np.float64)
            elif name in ("sequence", "static"):
                arrays[name] = getattr(self, name)
            else:
                raise ValueError(f"unknown model input {name!r}; inputs are raw, sequence, static")
        return arrays

    def take(self, idx: np.ndarray) -> FeatureSet:
        """Rows `idx` (an index or boolean mask) of every array."""
        return FeatureSet(
            applicant_ids=self.applicant_ids[idx],
            application_month=self.application_month[idx],
            sequence=self.sequence[idx],
            static=self.static[idx],
            raw=self.raw.iloc[idx].reset_index(drop=True)
            if not isinstance(idx, slice)
            else self.raw.iloc[idx],
            labels=None if self.labels is None else self.labels[idx],
        )


class _KeyIndex:
    """Applicant key -> row. A dict for a few applicants (serving): building a pandas Index costs
    more than one applicant's whole feature computation; a pandas Index otherwise."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        self.duplicate: Any = None
        self._lookup: dict[Any, int] | None = None
        self._index: pd.Index | None = None
        if len(keys) <= _SMALL_CATEGORY_INPUT:
            self._lookup = {}
            for i, k in enumerate(keys.tolist()):
                if k in self._lookup and self.duplicate is None:
                    self.duplicate = k
                self._lookup.setdefault(k, i)
        else:
            self._index = pd.Index(keys)
            if not self._index.is_unique:
                self.duplicate = self._index[self._index.duplicated()][0]

    def get_indexer(self, values: np.ndarray) -> np.ndarray:
        """Row of each value, -1 where it is not a key."""
        if self._lookup is None:
            return self._index.get_indexer(values)
        get = self._lookup.get
        return np.fromiter((get(v, -1) for v in values.tolist()), dtype=np.intp, count=len(values))

    def __getitem__(self, row: int) -> Any:
        return self.keys[row]


@dataclass(frozen=True)
class _StaticPlan:
    """Where each numeric characteristic goes in `static`, and its fitted transform as arrays."""

    names: list[str]
    signed_log: np.ndarray  # [K] bool
    median: np.ndarray  # [K]
    clip_lo: np.ndarray
    clip_hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    value_cols: np.ndarray  # [K] column of each characteristic in `static`
    indicator_cols: np.ndarray  # [I] column of each missing indicator
    indicator_of: np.ndarray  # [I] the characteristic (0..K-1) each indicator belongs to
    width: int  # columns taken by the numeric block
    # `raw`'s column labels, built once: a string Index costs more than one applicant's raw block
    raw_columns: pd.Index


@dataclass(frozen=True)
class _ChannelPlan:
    """One monthly table's sequence channels, grouped by kind so each kind is written in one step."""

    present: int  # channel of the table's presence mask
    numeric: list[str]  # float and int columns, scaled
    numeric_channels: np.ndarray  # [K] their channels
    signed_log: np.ndarray  # [K] bool: money and counts on a log scale
    mean: np.ndarray  # [K, 1, 1] fitted moments on the modelling scale
    std: np.ndarray  # [K, 1, 1]
    flags: list[str]  # bool columns, 0 where absent
    flag_channels: np.ndarray
    categories: list[tuple[str, int, int]]  # (column, first channel, vocabulary size): one-hots


# `transform` takes tables as DataFrames or as plain mappings of column -> numpy array: serving builds
# the latter straight from a request, which spares pandas' per-column overhead (~40 column reads for
# one applicant). The values, and so the features, are the same either way.
Frame = pd.DataFrame | Mapping[str, np.ndarray]


def _col(frame: Frame, name: str, dtype: Any = None) -> np.ndarray:
    """One column of a table as a numpy array (dtype object: Python values, missing as NaN/None)."""
    if isinstance(frame, pd.DataFrame):
        if dtype is object:
            return frame[name].astype(object).to_numpy()
        return frame[name].to_numpy(dtype=dtype)
    return np.asarray(frame[name], dtype=dtype)


def _nrows(frame: Frame) -> int:
    if isinstance(frame, pd.DataFrame):
        return len(frame)
    return len(next(iter(frame.values()))) if frame else 0


def _rows(frame: Frame, start: int, stop: int) -> Frame:
    if isinstance(frame, pd.DataFrame):
        return frame.iloc[start:stop]
    return {k: np.asarray(v)[start:stop] for k, v in frame.items()}


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _seq_value(spec: ColumnSpec, x: np.ndarray) -> np.ndarray:
    """The scale a monthly column is modelled on: money and counts on a log scale."""
    if spec.kind in {"amount", "count"}:
        return _signed_log(x)
    return x


# Below this many values a dict lookup beats building a pandas Categorical (~0.4 ms each), which
# dominates a single applicant's transform in serving; both give the same codes.
_SMALL_CATEGORY_INPUT = 256


@functools.lru_cache(maxsize=256)
def _vocab_index(vocab: tuple[str, ...]) -> dict[str, int]:
    return {v: i for i, v in enumerate(vocab)}


def _category_codes(values: np.ndarray, vocab: list[str] | tuple[str, ...]) -> np.ndarray:
    """Strings -> index in `vocab` as float64; unknown and missing -> -1."""
    arr = np.asarray(values, dtype=object)
    if len(arr) <= _SMALL_CATEGORY_INPUT:
        index = _vocab_index(tuple(vocab))
        # NaN, None and pd.NA are not in the vocabulary, so they get -1 as Categorical gives them
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in arr], dtype=np.float64)
    # get_indexer, not Categorical(values, categories): values outside the categories are deprecated there
    return pd.Index(list(vocab), dtype=object).get_indexer(arr).astype(np.float64)


def _last_index(present: np.ndarray) -> np.ndarray:
    """Index of the last True along axis 1, -1 where none."""
    # two numpy calls, not four on a reversed view: ~4 us instead of ~17 us for one applicant
    return np.where(present, np.arange(present.shape[1]), -1).max(axis=1, initial=-1)


class FeatureBuilder:
    """Fits and applies the feature transforms of one contract; see the module docstring."""

    def __init__(self, *, config: FeatureConfig, contract: Contract, batch_size: int = 50_000) -> None:
        # A contract given as a path is checked when loaded; a name must be the contract's own.
        if not is_path(config.contract) and config.contract != contract.name:
            raise ValueError(f"feature config is for contract {config.contract!r}, got {contract.name!r}")
        self.config = config
        self.contract = contract
        self.batch_size = batch_size  # applicants per batch: bounds memory, never changes a value
        self.fitted: dict[str, Any] | None = None
        self._check_ratios()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, name_or_path: str | Path, *, contract: Contract | None = None, **overrides: Any
    ) -> FeatureBuilder:
        """From a features config. `contract`: a dataset's own (its manifest carries it in full), so
        the contract file named by the config is not needed again; else the config's `contract`."""
        config = load_feature_config(name_or_path, **overrides)
        return cls(config=config, contract=contract or load_contract(config.contract))

    @classmethod
    def from_schema(cls, schema: FeatureSchema | Mapping[str, Any] | str | Path) -> FeatureBuilder:
        """Rebuild a fitted builder from a feature schema (a `FeatureSchema`, its JSON as a dict, or a
        `feature_schema.json` path): what serving does."""
        if isinstance(schema, str | Path):
            schema = FeatureSchema.load(schema)
        elif not isinstance(schema, FeatureSchema):
            schema = FeatureSchema.model_validate(schema)
        builder = cls(
            config=FeatureConfig.model_validate(schema.config),
            contract=Contract.model_validate(schema.contract),
        )
        builder.fitted = schema.fitted
        return builder

    def schema(self) -> FeatureSchema:
        """Everything needed to reproduce `transform`: config, contract and fitted statistics."""
        fitted = self._require_fitted()
        return FeatureSchema(
            schema_version=FEATURE_SCHEMA_VERSION,
            config=self.config.model_dump(mode="json"),
            contract=self.contract.model_dump(mode="json"),
            fitted=fitted,
            sequence_channels=fitted["sequence_channels"],
            static_features=fitted["static_features"],
            raw_features=fitted["raw_features"],
            categorical_raw=sorted(fitted["vocab"]),
        )

    def save(self, path: str | Path) -> Path:
        return self.schema().save(path)

    def _check_ratios(self) -> None:
        for r in self.config.ratios:
            for side in (r.numerator, r.denominator):
                if "." in side:
                    table, col = side.split(".", 1)
                    spec = self.contract.monthly.get(table)
                    if (
                        spec is None
                        or col not in spec.columns
                        or spec.columns[col].type not in {"float", "int"}
                    ):
                        raise ValueError(f"ratio {r.name!r}: {side!r} is not a numeric monthly column")
                    if r.window is None:
                        raise ValueError(f"ratio {r.name!r}: a monthly term needs `window`")
                else:
                    spec = self.contract.applicants.columns.get(side)
                    if spec is None or spec.type not in {"float", "int"}:
                        raise ValueError(f"ratio {r.name!r}: {side!r} is not a numeric applicants column")

    def _require_fitted(self) -> dict[str, Any]:
        if self.fitted is None:
            raise RuntimeError("FeatureBuilder is not fitted: call fit() or load a schema")
        return self.fitted

    # --- stage 1: records located in the lookback window, then dense per batch ------------------
    def _locate(
        self, applicants: Frame, monthly: Mapping[str, Frame]
    ) -> tuple[np.ndarray, dict[str, Located]]:
        """Application months, and per monthly table the records inside each lookback window.

        A record enters only if it is dated strictly before the application month and at most
        `lookback_months` before it (the leakage guard). Records are sorted by applicant row so a
        batch of applicants is a contiguous slice.
        """
        T = self.config.lookback_months
        key = self.contract.key
        ids = _KeyIndex(_col(applicants, key))
        if ids.duplicate is not None:
            raise ValueError(f"applicants.{key}: duplicate applicant {ids.duplicate!r}")
        app_month = month_number(_col(applicants, self.contract.applicants.application_date))
        located = {}
        for table, spec in self.contract.monthly.items():
            df = monthly.get(table)
            if df is None or not _nrows(df):
                empty = np.zeros(0, dtype=np.int64)
                located[table] = Located(empty, empty, np.zeros((len(spec.columns), 0)))
                continue
            # Records of applicants not in this batch are skipped: a split or a single applicant
            # is scored from the full tables (validation reports true orphans).
            rows = ids.get_indexer(_col(df, key))
            lag = app_month[rows] - month_number(_col(df, MONTH))
            idx = np.flatnonzero((rows >= 0) & (lag >= 1) & (lag <= T))
            idx = idx[np.argsort(rows[idx], kind="stable")]
            r, pos = rows[idx], T - lag[idx]
            flat = r * T + pos
            if len(flat) > 1:
                order = np.argsort(flat, kind="stable")
                same = np.flatnonzero(flat[order][1:] == flat[order][:-1])
                if len(same):
                    first = flat[order][same[0]]
                    raise ValueError(
                        f"{table}: duplicate month for applicant {ids[first // T]!r} "
                        f"({first % T - T} months before application)"
                    )
            values = np.empty((len(spec.columns), len(idx)))
            for k, (c, cspec) in enumerate(spec.columns.items()):
                column = _col(df, c)[idx]
                values[k] = (
                    self._codes(f"{table}.{c}", cspec, column)
                    if cspec.type == "category"
                    else column.astype(np.float64)
                )
            located[table] = Located(r, pos, values)
        return app_month, located

    def _dense(
        self, located: dict[str, Located], start: int, stop: int
    ) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Applicants [start, stop): presence [n, T] and each column [n, T] (NaN where absent)."""
        T, n = self.config.lookback_months, stop - start
        out = {}
        for table, loc in located.items():
            lo, hi = np.searchsorted(loc.rows, [start, stop])
            r, p = loc.rows[lo:hi] - start, loc.pos[lo:hi]
            present = np.zeros((n, T), dtype=bool)
            present[r, p] = True
            # every column in one block (two numpy calls a table, not two a column); each column's
            # [n, T] is a contiguous slice of it
            dense = np.full((len(loc.values), n, T), np.nan)
            dense[:, r, p] = loc.values[:, lo:hi]
            out[table] = (present, dict(zip(self.contract.monthly[table].columns, dense, strict=True)))
        return out

    def _codes(self, name: str, spec: ColumnSpec, values: np.ndarray) -> np.ndarray:
        """Category strings -> vocabulary index; unknown and missing -> -1."""
        return _category_codes(values, self._require_fitted()["vocab"][name])

    # --- stage 2: raw characteristics ----------------------------------------------------------
    def _raw(
        self,
        applicants: Frame,
        app_month: np.ndarray,
        dense: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Numeric characteristics (float64, NaN = unknown) and categorical ones (strings)."""
        cfg, a = self.config, self.contract.applicants
        T = cfg.lookback_months
        numeric: dict[str, np.ndarray] = {}
        categorical: dict[str, np.ndarray] = {}
        skip = {a.key, a.label, a.application_date}
        for col, spec in a.columns.items():
            if col in skip:
                continue
            if spec.type == "date":
                numeric[f"{col}__months_before_application"] = (
                    app_month - month_number(_col(applicants, col))
                ).astype(np.float64)
            elif spec.type == "category":
                categorical[col] = _col(applicants, col, object)
            elif spec.type == "string":
                continue  # free text and identifiers are not characteristics
            else:
                numeric[col] = _col(applicants, col, np.float64)
        if cfg.calendar:
            numeric["application_month_sin"] = np.sin(2 * np.pi * (app_month % 12) / 12)
            numeric["application_month_cos"] = np.cos(2 * np.pi * (app_month % 12) / 12)

        for table, (present, cols) in dense.items():
            spec = self.contract.monthly[table]
            for w in cfg.windows:
                numeric[f"{table}__present_{w}m"] = present[:, T - w :].sum(1).astype(np.float64)
            last_rec = _last_index(present)
            numeric[f"{table}__months_since_record"] = np.where(last_rec >= 0, T - last_rec, T + 1).astype(
                np.float64
            )
            with np.errstate(invalid="ignore", divide="ignore"):  # empty windows give NaN, by design
                aggregates = self._numeric_aggregates(table, present, cols)
            for col, cspec in spec.columns.items():
                v, name = cols[col], f"{table}.{col}"
                if col in aggregates:
                    numeric.update(aggregates[col])  # in the per-column order the schema lists them
                elif cspec.type == "category":
                    idx = _last_index(present)
                    codes = np.where(idx >= 0, v[np.arange(len(v)), idx], -1).astype(np.int64)
                    vocab = np.array([*self._require_fitted()["vocab"][name], UNKNOWN], dtype=object)
                    categorical[f"{name}__last"] = vocab[codes]
                elif cspec.kind in {"good_event", "bad_event"}:
                    hit = present & ((v == 0) if cspec.kind == "good_event" else (v == 1))
                    label = "misses" if cspec.kind == "good_event" else "count"
                    for w in cfg.windows:
                        numeric[f"{name}__{label}_{w}m"] = hit[:, T - w :].sum(1).astype(np.float64)
                    li = _last_index(hit)
                    numeric[f"{name}__months_since"] = np.where(li >= 0, T - li, T + 1).astype(np.float64)

        for r in cfg.ratios:
            num = self._ratio_term(r.numerator, r, applicants, dense)
            den = self._ratio_term(r.denominator, r, applicants, dense)
            with np.errstate(divide="ignore", invalid="ignore"):
                numeric[r.name] = np.where(den > 0, num / den, np.nan)
        return numeric, categorical

    def _numeric_aggregates(
        self, table: str, present: np.ndarray, cols: dict[str, np.ndarray]
    ) -> dict[str, dict[str, np.ndarray]]:
        """Windowed aggregates of every numeric monthly column of `table`: column -> name -> [n].

        All columns are stacked as [n, C, T] and aggregated at once. Each value is the same
        element-wise arithmetic, and each sum the same reduction over the same contiguous last
        axis, as one column at a time (so the features are bit-identical), without ~15 numpy calls
        per column, which dominated a single applicant's transform in serving. Empty windows divide by
        zero into NaN, the intended value: the caller silences those warnings once for the whole call.
        """
        T, W = self.config.lookback_months, self.config.trend_window
        specs = {
            c: s
            for c, s in self.contract.monthly[table].columns.items()
            if s.type != "category" and s.kind not in {"good_event", "bad_event"}
        }
        if not specs:
            return {}
        names = list(specs)
        n = len(present)
        v = np.stack([cols[c] for c in names], axis=1)  # [n, C, T]
        p3 = present[:, None, :]
        filled = np.where(p3, v, 0.0)
        delinquency = np.array([specs[c].kind == "delinquency" for c in names])
        out: dict[str, dict[str, np.ndarray]] = {c: {} for c in names}
        for w in self.config.windows:
            cnt = present[:, T - w :].sum(1)[:, None]
            mean = np.where(cnt > 0, filled[:, :, T - w :].sum(2) / cnt, np.nan)
            worst = None
            if delinquency.any():
                worst = np.where(cnt > 0, np.where(p3, v, -np.inf)[:, :, T - w :].max(2), np.nan)
            for k, c in enumerate(names):
                out[c][f"{table}.{c}__mean_{w}m"] = mean[:, k]
                if delinquency[k]:
                    out[c][f"{table}.{c}__max_{w}m"] = worst[:, k]  # type: ignore[index]
        idx = _last_index(present)  # one presence mask per table: the same last month for every column
        last = np.where(idx[:, None] >= 0, v[np.arange(n), :, np.maximum(idx, 0)], np.nan)
        for k, c in enumerate(names):
            out[c][f"{table}.{c}__last"] = last[:, k]
        if delinquency.any():
            late = p3 & (v > 0)
            li = np.where(late.any(2), T - 1 - np.argmax(late[:, :, ::-1], axis=2), -1)
            since = np.where(li >= 0, T - li, T + 1).astype(np.float64)
            for k in np.flatnonzero(delinquency):
                out[names[k]][f"{table}.{names[k]}__months_since_late"] = since[:, k]
        trend = np.flatnonzero(~delinquency)
        if not len(trend):
            return out
        # Slope and volatility on the modelling (log) scale over the trend window, present months only.
        p = present[:, T - W :]
        window = filled[:, trend, T - W :]
        logged = np.array([specs[names[k]].kind in {"amount", "count"} for k in trend])
        y = np.where(p[:, None, :], np.where(logged[None, :, None], _signed_log(window), window), 0.0)
        x = np.broadcast_to(np.arange(W, dtype=np.float64), p.shape)
        m = p.sum(1).astype(np.float64)
        xm = (x * p).sum(1) / m
        ym = y.sum(2) / m[:, None]
        dx = np.where(p, x - xm[:, None], 0.0)
        dy = np.where(p[:, None, :], y - ym[:, :, None], 0.0)
        sxx = (dx * dx).sum(1)
        slope = np.where(((m >= 3) & (sxx > 0))[:, None], (dx[:, None, :] * dy).sum(2) / sxx[:, None], np.nan)
        volatility = np.where((m >= 2)[:, None], np.sqrt((dy * dy).sum(2) / m[:, None]), np.nan)
        for j, k in enumerate(trend):
            out[names[k]][f"{table}.{names[k]}__slope_{W}m"] = slope[:, j]
            out[names[k]][f"{table}.{names[k]}__volatility_{W}m"] = volatility[:, j]
        return out

    def _ratio_term(
        self,
        term: str,
        r: RatioConfig,
        applicants: Frame,
        dense: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]],
    ) -> np.ndarray:
        if "." not in term:
            return _col(applicants, term, np.float64)
        table, col = term.split(".", 1)
        present, cols = dense[table]
        T, w = self.config.lookback_months, r.window or 1
        total = np.where(present, cols[col], 0.0)[:, T - w :].sum(1)
        if r.agg == "mean":
            cnt = present[:, T - w :].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(cnt > 0, total / cnt, np.nan)
        return np.where(present[:, T - w :].any(1), total, np.nan)

    # --- stage 3: model matrices ---------------------------------------------------------------
    def _raw_transform(self, name: str) -> str:
        """How a raw numeric characteristic is put on a model scale before clipping and scaling."""
        if "__months" in name or "__present_" in name or "__misses_" in name or "__count_" in name:
            return "identity"
        if name.endswith(("_sin", "_cos")) or "__slope_" in name or "__volatility_" in name:
            return "identity"
        spec = self._monthly_spec(name)
        if spec is not None:
            return "signed_log" if spec.kind in {"amount", "count"} else "identity"
        aspec = self.contract.applicants.columns.get(name)
        if aspec is not None and aspec.type == "float":
            return "signed_log"
        if name in {r.name for r in self.config.ratios}:
            return "signed_log"
        return "identity"

    def _monthly_spec(self, name: str) -> ColumnSpec | None:
        if "." not in name:
            return None
        table, rest = name.split(".", 1)
        col = rest.split("__", 1)[0]
        spec = self.contract.monthly.get(table)
        return None if spec is None else spec.columns.get(col)

    def fit(self, applicants: pd.DataFrame, monthly: dict[str, pd.DataFrame]) -> FeatureBuilder:
        """Learn vocabularies, clips, medians and scales from training applicants only."""
        vocab: dict[str, list[str]] = {}
        for col, spec in self.contract.applicants.columns.items():
            if spec.type == "category":
                vocab[col] = self._fit_vocab(applicants[col], spec)
        for table, spec in self.contract.monthly.items():
            for col, cspec in spec.columns.items():
                if cspec.type == "category":
                    df = monthly.get(table)
                    values = df[col] if df is not None else pd.Series([], dtype=object)
                    vocab[f"{table}.{col}"] = vocab[f"{table}.{col}__last"] = self._fit_vocab(values, cspec)
        self.fitted = {"vocab": vocab}

        # Raw characteristics batch by batch; sequence moments accumulated as sums.
        app_month, located = self._locate(applicants, monthly)
        numeric_parts: dict[str, list[np.ndarray]] = {}
        moments: dict[str, np.ndarray] = {}
        categorical: list[str] = []
        for start in range(0, len(applicants), self.batch_size):
            stop = min(start + self.batch_size, len(applicants))
            dense = self._dense(located, start, stop)
            numeric, cats = self._raw(applicants.iloc[start:stop], app_month[start:stop], dense)
            categorical = list(cats)
            for name, x in numeric.items():
                numeric_parts.setdefault(name, []).append(x)
            for table, (present, cols) in dense.items():
                for col, cspec in self.contract.monthly[table].columns.items():
                    if cspec.type in {"float", "int"}:
                        z = _seq_value(cspec, cols[col][present])
                        moments[f"{table}.{col}"] = moments.get(f"{table}.{col}", np.zeros(3)) + np.array(
                            [len(z), z.sum(), (z * z).sum()]
                        )

        lo_q, hi_q = self.config.clip_quantiles
        stats = {}
        for name, parts in numeric_parts.items():
            x = np.concatenate(parts)
            kind = self._raw_transform(name)
            z = _signed_log(x) if kind == "signed_log" else x
            finite = z[np.isfinite(z)]
            if len(finite) == 0:
                finite = np.zeros(1)
            lo, hi = np.quantile(finite, [lo_q, hi_q])
            clipped = np.clip(finite, lo, hi)
            std = float(clipped.std())
            stats[name] = {
                "transform": kind,
                "clip": [float(lo), float(hi)],
                "median": float(np.median(clipped)),
                "mean": float(clipped.mean()),
                "std": std if std > 1e-9 else 1.0,
                "indicator": bool((~np.isfinite(z)).any()),
            }
        seq_stats = {}
        for name, (count, total, total_sq) in moments.items():
            mean = total / count if count else 0.0
            std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0))) if count else 1.0
            seq_stats[name] = {"mean": float(mean), "std": std if std > 1e-9 else 1.0}
        self.fitted.update(
            numeric=stats,
            sequence=seq_stats,
            raw_features=[*stats, *categorical],
            categorical=categorical,
        )
        self.fitted["static_features"] = self._static_names()
        self.fitted["sequence_channels"] = self._channel_names()
        return self

    def _fit_vocab(self, values: pd.Series, spec: ColumnSpec) -> list[str]:
        if not spec.open:
            return list(spec.categories or ())
        counts = values.astype(object).value_counts()
        return sorted(str(v) for v, c in counts.items() if c >= self.config.min_category_count)

    def _static_names(self) -> list[str]:
        f = self._require_fitted()
        names = []
        for name, s in f["numeric"].items():
            names.append(name)
            if s["indicator"]:
                names.append(f"{name}__missing")
        for name in f["categorical"]:
            names += [f"{name}={v}" for v in [*f["vocab"][name], UNKNOWN]]
        return names

    def _channel_names(self) -> list[str]:
        names = []
        for table, spec in self.contract.monthly.items():
            names.append(f"{table}__present")
            for col, cspec in spec.columns.items():
                if cspec.type == "category":
                    names += [f"{table}.{col}={v}" for v in self._require_fitted()["vocab"][f"{table}.{col}"]]
                else:
                    names.append(f"{table}.{col}")
        if self.config.calendar:
            names += ["calendar_sin", "calendar_cos"]
        return names

    def transform(self, applicants: Frame, monthly: Mapping[str, Frame]) -> FeatureSet:
        """Features for `applicants` from their monthly records (records of others are ignored).

        Tables are DataFrames or mappings of column -> numpy array (see `Frame`).

        Works in batches of `batch_size` applicants into preallocated outputs, so memory stays
        bounded at a million applicants; every value depends on its own applicant only.
        """
        f = self._require_fitted()
        n, T = _nrows(applicants), self.config.lookback_months
        app_month, located = self._locate(applicants, monthly)
        sequence = np.empty((n, T, len(f["sequence_channels"])), dtype=np.float32)
        static = np.empty((n, len(f["static_features"])), dtype=np.float32)
        raw = np.empty((n, len(f["raw_features"])), dtype=np.float64)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            dense = self._dense(located, start, stop)
            numeric, categorical = self._raw(_rows(applicants, start, stop), app_month[start:stop], dense)
            self._fill(
                numeric,
                categorical,
                dense,
                app_month[start:stop],
                static[start:stop],
                raw[start:stop],
                sequence[start:stop],
            )

        label_col = self.contract.applicants.label
        labels = None
        if label_col in applicants and pd.notna(_col(applicants, label_col)).all():
            labels = _col(applicants, label_col).astype(np.float32)
        keys = applicants[self.contract.key]
        return FeatureSet(
            applicant_ids=keys.astype(str).to_numpy()
            if isinstance(keys, pd.Series)
            else np.array([str(k) for k in keys], dtype=object),
            application_month=app_month,
            sequence=sequence,
            static=static,
            raw=pd.DataFrame(raw, columns=self._static_plan().raw_columns, copy=False),
            labels=labels,
        )

    def _static_plan(self) -> _StaticPlan:
        """Column positions and statistics of the numeric static block, computed once per schema."""
        f = self._require_fitted()
        cached = getattr(self, "_plan", None)
        if cached is not None and cached[0] is f:
            return cached[1]
        names, value_cols, indicator_cols, indicator_of = [], [], [], []
        j = 0
        for k, (name, s) in enumerate(f["numeric"].items()):
            names.append(name)
            value_cols.append(j)
            j += 1
            if s["indicator"]:
                indicator_cols.append(j)
                indicator_of.append(k)
                j += 1
        stats = list(f["numeric"].values())
        head = f["raw_features"][: len(names)]
        if head != names:  # `_fill` reads the numeric block from `raw`'s first columns
            k = next(i for i, name in enumerate(names) if i >= len(head) or head[i] != name)
            raise ValueError(
                f"feature schema: raw_features must list the numeric characteristics first, in order; "
                f"position {k} is {head[k] if k < len(head) else None!r}, expected {names[k]!r}"
            )
        plan = _StaticPlan(
            names=names,
            signed_log=np.array([s["transform"] == "signed_log" for s in stats], dtype=bool),
            median=np.array([s["median"] for s in stats], dtype=np.float64),
            clip_lo=np.array([s["clip"][0] for s in stats], dtype=np.float64),
            clip_hi=np.array([s["clip"][1] for s in stats], dtype=np.float64),
            mean=np.array([s["mean"] for s in stats], dtype=np.float64),
            std=np.array([s["std"] for s in stats], dtype=np.float64),
            value_cols=np.array(value_cols, dtype=np.int64),
            indicator_cols=np.array(indicator_cols, dtype=np.int64),
            indicator_of=np.array(indicator_of, dtype=np.int64),
            width=j,
            raw_columns=pd.Index(f["raw_features"]),
        )
        self._plan = (f, plan)
        return plan

    def _channel_plan(self, table: str) -> _ChannelPlan:
        """Channel positions and moments of one table's sequence block, computed once per schema."""
        f = self._require_fitted()
        cached = getattr(self, "_channels", None)
        if cached is None or cached[0] is not f:
            cached = self._channels = (f, {})
        plans = cached[1]
        if table in plans:
            return plans[table]
        channel = {name: j for j, name in enumerate(f["sequence_channels"])}  # the schema's own order
        numeric, numeric_ch, logged, flags, flag_ch, categories = [], [], [], [], [], []
        for col, cspec in self.contract.monthly[table].columns.items():
            if cspec.type == "category":
                vocab = f["vocab"][f"{table}.{col}"]
                if vocab:
                    categories.append((col, channel[f"{table}.{col}={vocab[0]}"], len(vocab)))
            elif cspec.type == "bool":
                flags.append(col)
                flag_ch.append(channel[f"{table}.{col}"])
            else:
                numeric.append(col)
                numeric_ch.append(channel[f"{table}.{col}"])
                logged.append(cspec.kind in {"amount", "count"})  # as `_seq_value`
        moments = [f["sequence"][f"{table}.{c}"] for c in numeric]
        plans[table] = _ChannelPlan(
            present=channel[f"{table}__present"],
            numeric=numeric,
            numeric_channels=np.array(numeric_ch, dtype=np.int64),
            signed_log=np.array(logged, dtype=bool),
            mean=np.array([m["mean"] for m in moments], dtype=np.float64).reshape(-1, 1, 1),
            std=np.array([m["std"] for m in moments], dtype=np.float64).reshape(-1, 1, 1),
            flags=flags,
            flag_channels=np.array(flag_ch, dtype=np.int64),
            categories=categories,
        )
        return plans[table]

    def _fill(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        dense: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]],
        app_month: np.ndarray,
        static: np.ndarray,
        raw: np.ndarray,
        sequence: np.ndarray,
    ) -> None:
        """Write one batch's raw, static and sequence values into the output slices."""
        f = self._require_fitted()
        T = self.config.lookback_months
        codes = {name: _category_codes(categorical[name], f["vocab"][name]) for name in f["categorical"]}
        # One concatenated copy instead of a column assignment per characteristic (the same values;
        # np.stack costs ~0.5 us more per column, which shows for a single applicant in serving).
        columns = [numeric[name] if name in numeric else codes[name] for name in f["raw_features"]]
        raw[:] = np.concatenate(columns).reshape(len(columns), len(raw)).T

        # All numeric characteristics at once, [n, K]: the same element-wise operations as one column
        # at a time (so the same values), without ~10 numpy calls per column, which dominate the
        # transform of a single applicant in serving. They are raw's first K columns.
        plan = self._static_plan()
        x = raw[:, : len(plan.names)]
        z = x.copy()
        z[:, plan.signed_log] = _signed_log(x[:, plan.signed_log])
        missing = ~np.isfinite(z)
        z = np.clip(np.where(missing, plan.median, z), plan.clip_lo, plan.clip_hi)
        static[:, plan.value_cols] = (z - plan.mean) / plan.std
        static[:, plan.indicator_cols] = missing[:, plan.indicator_of]
        j = plan.width
        for name in f["categorical"]:
            k = len(f["vocab"][name])
            c = codes[name].astype(np.int64)
            block = static[:, j : j + k + 1]
            block[:] = 0.0
            block[np.arange(len(c)), np.where(c < 0, k, c)] = 1.0
            j += k + 1

        # Each kind of channel of a table in one step over a [K, n, T] stack: the same element-wise
        # arithmetic as one column at a time, so the same float32 values, in ~10 numpy calls per
        # table instead of ~9 per column (which showed in a single applicant's transform).
        for table, (present, cols) in dense.items():
            plan = self._channel_plan(table)
            sequence[:, :, plan.present] = present
            if plan.numeric:
                v = np.where(present, np.stack([cols[c] for c in plan.numeric]), 0.0)
                v[plan.signed_log] = _signed_log(v[plan.signed_log])
                scaled = (v - plan.mean) / plan.std
                sequence[:, :, plan.numeric_channels] = np.where(present, scaled, 0.0).transpose(1, 2, 0)
            if plan.flags:
                flags = np.where(present, np.stack([cols[c] for c in plan.flags]), 0.0)
                sequence[:, :, plan.flag_channels] = flags.transpose(1, 2, 0)
            for col, first, size in plan.categories:
                sequence[:, :, first : first + size] = present[:, :, None] & (
                    cols[col][:, :, None] == np.arange(size)
                )
        if self.config.calendar:
            ch = f["sequence_channels"].index("calendar_sin")
            cal = (app_month[:, None] - T + np.arange(T)[None, :]) % 12
            sequence[:, :, ch] = np.sin(2 * np.pi * cal / 12)
            sequence[:, :, ch + 1] = np.cos(2 * np.pi * cal / 12)
