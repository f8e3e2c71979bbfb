"""`govrisk monitor book`: in-loan early warning. Every loan on the book is rescored as of a month with
the champion and the challenger, from its records up to that month (the history it applied with and
the months since, from the outcomes folder), and compared with its PD and grade at origination.

A loan is rescored exactly as an application dated the first day of the as-of month would be: the
same feature schema and exported ONNX graph as serving, over the `lookback` months before it, so its
business age, recent sales, arrears and filings are those of today. Its origination scores are
recomputed the same way from the records before its application month (for a logged decision they
must equal the logged PD: checked and reported). Loans whose PD rose by more than the configured
factor, or whose grade fell by the configured number of grades, go on the watch list, with the
champion scorecard's reason codes now and the characteristics that lost the most points since
origination.

Fast on a whole book: features are computed once per feature schema and date for all loans at once
(`FeatureBuilder.transform` is vectorised), models score in batches with onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from govrisk.core.rating import MasterScale, load_master_scale
from govrisk.core.reasons import SHORTFALL_EPS, reasons_from_points
from govrisk.data.features import FeatureSet, month_number
from govrisk.data.store import Dataset
from govrisk.monitoring.config import BookConfig
from govrisk.research.report import ROLES, ModelRef
from govrisk.serving.models import LoadedModel, ModelOutput


def as_of_months(
    application_dates: pd.Series, *, as_of: str | None, months_on_book: int | None
) -> np.ndarray:
    """The month (months since 1970-01) each loan is rescored as of: one calendar month for the whole
    book (`as_of`, 'YYYY-MM'), or each loan's application month plus `months_on_book`."""
    if (as_of is None) == (months_on_book is None):
        raise ValueError("give exactly one of as_of (YYYY-MM) and months_on_book")
    app = month_number(application_dates)
    if months_on_book is not None:
        return app + months_on_book
    try:
        month = month_number(np.array([f"{as_of}-01"], dtype="datetime64[D]"))[0]
    except ValueError:
        raise ValueError(f"as_of: {as_of!r} is not a month (YYYY-MM)") from None
    return np.full(len(app), month, dtype=np.int64)


def on_book(
    application_dates: pd.Series, as_of: np.ndarray, *, term_months: int, forward_months: int
) -> dict[str, np.ndarray]:
    """Which loans can be rescored as of their month: seasoned (at least a month since application),
    not matured (fewer than `term_months` since), and with records that late (the outcomes' forward
    months). Returns each condition as a boolean mask, and `rescored` (all of them)."""
    mob = as_of - month_number(application_dates)
    seasoned, running = mob >= 1, mob < term_months
    return {
        "not_yet_seasoned": ~seasoned,
        "matured": seasoned & ~running,
        "beyond_records": seasoned & running & (mob > forward_months),
        "rescored": seasoned & running & (mob <= forward_months),
    }


def _months_to_date(m: np.ndarray) -> np.ndarray:
    return np.asarray(m, dtype=np.int64).astype("datetime64[M]").astype("datetime64[ns]")


def deteriorated(
    before: np.ndarray, after: np.ndarray, table: list[dict[str, Any]], k: int
) -> list[list[str]]:
    """The characteristics that lost the most scorecard points between two dates, largest loss first."""
    names = [r["characteristic"] for r in sorted(table, key=lambda r: r["index"])]
    loss = before - after
    order = np.argsort(-loss, axis=1, kind="stable")[:, :k]
    return [[names[j] for j in row if loss[i, j] > SHORTFALL_EPS] for i, row in enumerate(order)]


def loan_records(ds: Dataset, forward: dict[str, pd.DataFrame], ids: np.ndarray) -> dict[str, pd.DataFrame]:
    """Each monthly table of the loans: the history they applied with and the months since."""
    key = ds.contract.key
    monthly = {}
    for table, hist in ds.monthly.items():
        parts = [hist, forward[table]] if table in forward else [hist]
        if len(ids) < len(ds.applicants):  # a part of the dataset: leave the others' records out
            parts = [p[p[key].isin(ids)] for p in parts]
        monthly[table] = pd.concat(parts, ignore_index=True)
    return monthly


def score_all(onnx: dict[str, LoadedModel], applicants: pd.DataFrame, monthly: dict[str, pd.DataFrame],
              roles: tuple[str, ...] = ROLES, *, batch_size: int) -> dict[str, ModelOutput]:  # fmt: skip
    """Both models on the same applicants; one feature transform per distinct feature schema, then
    `batch_size` rows per onnxruntime call."""
    features: dict[str, FeatureSet] = {}
    out = {}
    for role in roles:
        m = onnx[role]
        if m.schema_digest not in features:
            features[m.schema_digest] = m.builder.transform(applicants, monthly)
        out[role] = m.predict(features[m.schema_digest], batch_size=batch_size)
    return out


def _score_subset(onnx: dict[str, LoadedModel], applicants: pd.DataFrame, monthly: dict[str, pd.DataFrame],
                  idx: np.ndarray, roles: tuple[str, ...], *, batch_size: int) -> dict[str, ModelOutput]:  # fmt: skip
    """`score_all` of the applicants at positions `idx`, with only their records."""
    part = applicants.iloc[idx].reset_index(drop=True)
    key = next(iter(onnx.values())).builder.contract.key
    ids = set(part[key])
    records = {t: df[df[key].isin(ids)] for t, df in monthly.items()}
    return score_all(onnx, part, records, roles=roles, batch_size=batch_size)


def rescore_book(
    *,
    ds: Dataset,
    forward: dict[str, pd.DataFrame],
    rows: np.ndarray,
    as_of: np.ndarray,
    models: dict[str, ModelRef],
    config: BookConfig,
    origination: dict[str, np.ndarray] | None = None,
    scale: MasterScale | None = None,
) -> pd.DataFrame:
    """One row per loan (`rows` of `ds.applicants`, each rescored as of its `as_of` month): PD and grade
    of both models at origination and now, the change, the watch flag and why, reason codes.

    `forward` holds the monthly records from the application month on (the outcomes folder's tables).
    `origination` holds each model's PD at origination as recorded (the decision log); without it,
    they are recomputed from the records before each application month."""
    scale = scale or load_master_scale()
    c = ds.contract
    key, date_col = c.key, c.applicants.application_date
    loans = ds.applicants.iloc[rows].reset_index(drop=True)
    ids = loans[key].to_numpy()
    monthly = loan_records(ds, forward, ids)
    now = loans.copy()
    now[date_col] = _months_to_date(as_of)  # the first day of the as-of month: records before it count

    # threads=0: every core for a whole book (serving keeps one per session)
    onnx = {role: LoadedModel(folder=m.folder, threads=0) for role, m in models.items()}
    batch = config.score_batch
    scores_now = score_all(onnx, now, monthly, batch_size=batch)
    then_points = None
    source = {}
    if origination is None:
        scores_then = score_all(onnx, loans, monthly, batch_size=batch)
        p_then = {role: scores_then[role].pd for role in ROLES}
        then_points = scores_then["champion"].points
        source = dict.fromkeys(ROLES, np.full(len(loans), "recomputed", dtype=object))
    else:
        p_then = {}
        for role in ROLES:
            p = np.asarray(origination[role], dtype=np.float64).copy()
            # Not recorded for this model (another version decided, or the challenger did not answer):
            # its PD at origination from the records before the application month.
            missing = np.flatnonzero(~np.isfinite(p))
            if len(missing):
                p[missing] = _score_subset(onnx, loans, monthly, missing, roles=(role,), batch_size=batch)[
                    role
                ].pd
            p_then[role] = p
            source[role] = np.where(
                np.isfinite(np.asarray(origination[role], dtype=np.float64)), "logged", "recomputed"
            )

    out = pd.DataFrame({
        key: ids,
        "application_month": loans[date_col].to_numpy().astype("datetime64[M]").astype("datetime64[ns]"),
        "as_of": _months_to_date(as_of),
        "months_on_book": as_of - month_number(loans[date_col]),
    })  # fmt: skip
    triggers = {}
    names = np.array(scale.names, dtype=object)
    for role in ROLES:
        p0, p1 = p_then[role], scores_now[role].pd
        g0, g1 = scale.index(p0), scale.index(p1)
        out[f"{role}_pd_origination"] = p0
        out[f"{role}_origination_pd_from"] = source[role]
        out[f"{role}_pd_now"] = p1
        out[f"{role}_pd_ratio"] = p1 / p0
        out[f"{role}_grade_origination"] = names[g0]
        out[f"{role}_grade_now"] = names[g1]
        out[f"{role}_grades_down"] = g1 - g0  # positive: a worse grade now
        # A PD rise counts only up from min_pd_now: 0.01 % -> 0.03 % is a tripling but no warning.
        rise = (p1 > config.pd_rise_factor * p0) & (p1 >= config.min_pd_now)
        triggers[role] = (rise, (g1 - g0) >= config.grade_drop)
    watch_roles = list(ROLES) if config.watch_on == "either" else [config.watch_on]
    watch = np.zeros(len(out), dtype=bool)
    why: list[list[str]] = [[] for _ in range(len(out))]
    for role in watch_roles:
        rise, drop = triggers[role]
        watch |= rise | drop
        ratio, g_then, g_now = (
            out[f"{role}_{x}"].to_numpy() for x in ("pd_ratio", "grade_origination", "grade_now")
        )
        for i in np.flatnonzero(rise):
            why[i].append(f"{role} PD x{ratio[i]:.1f}")
        for i in np.flatnonzero(drop):
            why[i].append(f"{role} grade {g_then[i]} -> {g_now[i]}")
    out["watch"] = watch
    out["watch_reasons"] = ["; ".join(w) for w in why]

    # Reason codes of the watched loans from the champion scorecard's points (none for a network): its
    # reasons now, and the characteristics that lost the most points since origination.
    codes: list[list[str]] = [[] for _ in range(len(out))]
    lost: list[list[str]] = [[] for _ in range(len(out))]
    champ = onnx["champion"]
    w = np.flatnonzero(watch)
    if (
        champ.reason_table is not None
        and scores_now["champion"].points is not None
        and config.reason_codes
        and len(w)
    ):
        after = scores_now["champion"].points[w]
        if then_points is not None:
            before = then_points[w]
        else:  # recorded PDs carry no points: score the watched loans at origination again
            before = _score_subset(onnx, loans, monthly, w, roles=("champion",), batch_size=batch)[
                "champion"
            ].points
        for j, (r, d) in enumerate(zip(
            reasons_from_points(after, champ.reason_table, config.reason_codes),
            deteriorated(before, after, champ.reason_table, config.reason_codes), strict=True,
        )):  # fmt: skip
            codes[w[j]], lost[w[j]] = r, d
    out["reason_codes"] = codes
    out["deteriorated"] = lost
    return out


def summarise(
    book: pd.DataFrame, *, excluded: dict[str, int], config: BookConfig, tags: dict[str, str]
) -> dict[str, Any]:
    """The figures the terminal and summary.json show: loans, PD drift, grade migration, watch list."""
    models = {}
    for role in ROLES:
        down = book[f"{role}_grades_down"].to_numpy()
        n = len(book)
        models[role] = {
            "tag": tags[role],
            "mean_pd_origination": float(book[f"{role}_pd_origination"].mean()) if n else None,
            "mean_pd_now": float(book[f"{role}_pd_now"].mean()) if n else None,
            "median_pd_ratio": float(book[f"{role}_pd_ratio"].median()) if n else None,
            "origination_pd_logged": int((book[f"{role}_origination_pd_from"] == "logged").sum()),
            "grade_migration": {
                "improved": int((down < 0).sum()),
                "unchanged": int((down == 0).sum()),
                "worse_below_trigger": int(((down > 0) & (down < config.grade_drop)).sum()),
                "worse_at_trigger": int((down >= config.grade_drop).sum()),  # grade_drop grades or more
            },
            "pd_rose_by_factor": int(
                (
                    (book[f"{role}_pd_ratio"] > config.pd_rise_factor)
                    & (book[f"{role}_pd_now"] >= config.min_pd_now)
                ).sum()
            ),
        }
    return {
        "loans_rescored": len(book),
        "excluded": excluded,
        "as_of": sorted({str(d)[:7] for d in book["as_of"].unique()}) if len(book) else [],
        "models": models,
        "watch_on": config.watch_on,
        "pd_rise_factor": config.pd_rise_factor,
        "min_pd_now": config.min_pd_now,
        "grade_drop": config.grade_drop,
        "watched": int(book["watch"].sum()),
        "watched_share": float(book["watch"].mean()) if len(book) else 0.0,
    }


def write_book(book: pd.DataFrame, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """book.parquet (every loan), watchlist.parquet (the watched, largest PD rise first), summary.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "book": out / "book.parquet",
        "watchlist": out / "watchlist.parquet",
        "summary": out / "summary.json",
    }
    book.to_parquet(paths["book"], index=False)
    role = summary["watch_on"] if summary["watch_on"] != "either" else "champion"
    watched = book[book["watch"]].sort_values(f"{role}_pd_ratio", ascending=False, kind="stable")
    watched.to_parquet(paths["watchlist"], index=False)
    paths["summary"].write_text(json.dumps(summary, indent=1, default=str))
    return paths
