"""How much of the oracle the records allow: the county's own risk drivers, read off the records.

    python bench/record_ceiling.py [--applicants 200000] [--cnn-run RUN_DIR]

The synthetic county's true PD (data/synthetic.py) is logit-linear in drivers a firm's records only
partly show: sales year on year and against the half-year before over completed calendar quarters,
the volatility of monthly sales, recency-weighted stress events, leverage, static facts. This script
computes those drivers from the *observed* records as a lender who knew the formula would (industry
seasonality estimated on the training rows; quarterly filings spread over their three months; a firm
with no tax file has only its headcount), fits LightGBM on them, alone and beside the shared
aggregates every model gets, early-stopped on validation, and prints validation and OOT AUC next to
the oracle's, on the bench's 200,000-applicant county and vintage split (bench/model_quality.py).
A model that reads the records perfectly can approach, not pass, these figures by much: they are the
reference for "how far is the CNN from what the data allow". `--cnn-run` adds a trained CNN run's
AUC by taxpayer segment beside them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_quality import experiment

from govrisk.data.features import FeatureBuilder, month_number
from govrisk.data.store import Dataset, read_table
from govrisk.training.config import ExperimentConfig, experiment_from_dict
from govrisk.training.train import predictions, prepare

CEILING = "drivers + shared aggregates, LightGBM"  # the record ceiling: the bar the CNN is held to
HALF_LIFE = 4.0  # months: the generator's recency weighting of stress events
LGBM = {"n_estimators": 3000, "learning_rate": 0.02, "num_leaves": 15, "min_child_samples": 100,
        "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.5, "verbose": -1, "random_state": 0}  # fmt: skip


def record_drivers(ds: Dataset, builder: FeatureBuilder, train_rows: np.ndarray) -> pd.DataFrame:
    """The generator's PD drivers as the records show them, one row per applicant."""
    a = ds.applicants
    # The records on [n, T] grids exactly as the fitted features read them (same window, same
    # leakage guard; NaN where absent, categories as vocabulary codes): FeatureBuilder's own stages.
    app, located = builder._locate(a, ds.monthly)
    dense = builder._dense(located, 0, len(a))
    tax_on, tax = dense["tax_monthly"]
    ss_on, ss = dense["social_security_monthly"]
    T = builder.config.lookback_months
    last = T - 1 - np.argmax(tax_on[:, ::-1], axis=1)  # the last month with a tax record
    small_scale = builder.fitted["vocab"]["tax_monthly.taxpayer_type"].index("small_scale")
    kind = np.where(tax_on.any(1), tax["taxpayer_type"][np.arange(len(a)), last], -1)
    quarterly = (kind == small_scale)[:, None]
    calendar = (app[:, None] - T + np.arange(T)[None, :]) % 12
    sales = tax["declared_sales"]
    monthly_sales = np.where(quarterly, sales / 3, sales)  # a quarterly filing spans three months
    log_sales = np.where(tax_on & (sales > 0), np.log(np.maximum(monthly_sales, 1e-9)), np.nan)
    with warnings.catch_warnings():  # firms without a tax file give empty means, by design NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        # industry seasonality: a monthly filer's log sales around its own mean, by industry and
        # calendar month, on training rows only (quarterly sums already span their season)
        deviation = log_sales - np.nanmean(log_sales, axis=1, keepdims=True)
        industry = a.industry.to_numpy()
        season = np.zeros((len(a), T))
        fit = np.zeros(len(a), dtype=bool)
        fit[train_rows] = True
        for ind in np.unique(industry):
            m = (industry == ind) & fit & ~quarterly[:, 0]
            table = np.array([np.nanmean(deviation[m][calendar[m] == k]) for k in range(12)])
            season[industry == ind] = table[calendar[industry == ind]]
        performance = log_sales - np.where(quarterly, 0.0, season)
        open_quarter = (calendar[:, T - 1] % 3 + 1) % 3  # months of the unfinished current quarter

        def quarters(first: int, count: int) -> np.ndarray:
            hi = T - open_quarter - 3 * first
            cols = np.arange(T)[None, :]
            inside = (cols >= (hi - 3 * count)[:, None]) & (cols < hi[:, None])
            return np.nanmean(np.where(inside, performance, np.nan), axis=1)

        recent = quarters(0, 2)
        headcount = np.log1p(ss["insured_headcount"])
        drivers = {
            "level": recent - quarters(4, 2),
            "trend": recent - quarters(2, 2),
            "volatility": np.nanstd(np.diff(performance[:, T - 13 :], axis=1), axis=1),
            "headcount_level": np.nanmean(headcount[:, -6:], 1) - np.nanmean(headcount[:, -18:-12], 1),
            "headcount_trend": np.nanmean(headcount[:, -6:], 1) - np.nanmean(headcount[:, -12:-6], 1),
        }
    events = np.nan_to_num(
        ((tax["filed_on_time"] == 0) | (tax["zero_declaration"] == 1) | (tax["tax_arrears"] > 0)) * tax_on
    ) + np.nan_to_num((ss["arrears_flag"] == 1) * ss_on)
    recency = 0.5 ** ((T - 1 - np.arange(T)) / HALF_LIFE)
    requested = np.log(a.requested_amount.to_numpy())
    return pd.DataFrame(
        drivers
        | {
            "stress": (events * recency).sum(1),
            "leverage": requested - (recent + np.log(12)),
            "requested": requested,
            "property": np.log1p(a.property_value.to_numpy() / 1e5),
            "abnormal": a.abnormal_operation_flag.to_numpy(dtype=float),
            "penalties": a.admin_penalties.to_numpy(dtype=float),
            "young": ((app - month_number(a.registration_date)) < 24).astype(float),
            "quarterly": quarterly[:, 0].astype(float),
            "tax_months": tax_on.sum(1).astype(float),
            "entity": a.entity_type.astype("category"),
            "industry": a.industry.astype("category"),
        }
    )


def fit_predict(x: pd.DataFrame, y: np.ndarray, rows: dict[str, np.ndarray]) -> np.ndarray:
    """LightGBM early-stopped on validation; predictions for every row."""
    tr, va = rows["train"], rows["val"]
    model = lgb.LGBMClassifier(**LGBM)
    model.fit(x.iloc[tr], y[tr], eval_set=[(x.iloc[va], y[va])], eval_metric="auc",
              callbacks=[lgb.early_stopping(200, verbose=False)])  # fmt: skip
    return model.predict_proba(x)[:, 1]


def record_ceiling(
    cfg: ExperimentConfig,
) -> tuple[dict[str, np.ndarray], Dataset, dict[str, np.ndarray], pd.DataFrame]:
    """Scores of the oracle and of the record-ceiling models on the experiment's county and split (the
    county's own drivers read off the records, alone and beside the shared aggregates), the dataset,
    its split rows and the drivers."""
    ds, _, rows, builder, fs = prepare(cfg)
    y = ds.applicants.default_12m.to_numpy().astype(int)
    truth = read_table(ds.path, "truth").set_index("applicant_id").true_pd.reindex(ds.applicants.applicant_id)
    drivers = record_drivers(ds, builder, rows["train"])
    aggregates = pd.DataFrame(fs.static, columns=[f"static_{j}" for j in range(fs.static.shape[1])])
    scores = {
        "oracle (true PD)": truth.to_numpy(),
        "drivers from records, LightGBM": fit_predict(drivers, y, rows),
        CEILING: fit_predict(pd.concat([drivers, aggregates], axis=1), y, rows),
    }
    return scores, ds, rows, drivers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--applicants", type=int, default=200_000)
    ap.add_argument("--cnn-run", type=Path, help="a trained CNN run folder on the same county, for segments")
    args = ap.parse_args()
    if args.cnn_run and not (args.cnn_run / "model.onnx").is_file():
        ap.error(f"--cnn-run {str(args.cnn_run)!r}: no model.onnx there (give a `govrisk train` run folder)")
    raw = experiment(
        "county_scorecard", **{"data.generate.applicants": args.applicants, "data.generate.seed": 11}
    )
    cfg, _ = experiment_from_dict(raw)
    scores, ds, rows, drivers = record_ceiling(cfg)
    y = ds.applicants.default_12m.to_numpy().astype(int)
    if args.cnn_run:
        scores["CNN run"] = predictions(args.cnn_run, ds.applicants, ds.monthly)
    print(f"== County, {args.applicants:,} applicants: AUC by split")
    for name, p in scores.items():
        va, oot = (roc_auc_score(y[rows[s]], p[rows[s]]) for s in ("val", "oot"))
        print(f"{name:40s} val {va:.4f}  OOT {oot:.4f}")
    no_tax = drivers.tax_months.to_numpy() == 0
    quarterly = drivers.quarterly.to_numpy() == 1
    segments = {"monthly filers": ~quarterly & ~no_tax, "quarterly filers": quarterly, "no tax file": no_tax}
    print("== OOT AUC by taxpayer segment")
    for seg, mask in segments.items():
        m = np.zeros(len(y), dtype=bool)
        m[rows["oot"]] = True
        m &= mask
        cells = "  ".join(
            f"{name.split(',')[0]} {roc_auc_score(y[m], p[m]):.4f}" for name, p in scores.items()
        )
        print(f"{seg:16s} ({m.sum() / len(rows['oot']):.0%}): {cells}")


if __name__ == "__main__":
    main()
