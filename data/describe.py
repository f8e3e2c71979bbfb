"""`govrisk data describe`: what a dataset holds and, for the synthetic county, how realistic it is.

The realism figures answer one question: will the ranking of models on this data mean something?
The oracle AUC (true PD vs label) is the ceiling; a plain logistic regression on simple 12-month
aggregates is the floor a temporal model has to rise well above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from govrisk.data.features import FeatureBuilder, FeatureConfig
from govrisk.data.store import read_dataset, read_table
from govrisk.data.synthetic import TRUTH_TABLE

# Realism targets for a county of >= 100,000 applicants (issue: the synthetic county).
TARGETS = {
    "default_rate": (0.03, 0.08),
    "oracle_auc": (0.80, 0.90),
    "oracle_minus_plain_lr_auc": (0.05, 1.0),
    "segment_rate_ratio": (1.2, float("inf")),  # highest / lowest default rate across entity types
}
PLAIN_WINDOW = 12
HOLDOUT_SHARE = 0.3


def _rates(df: pd.DataFrame, by: str, label: str) -> dict[str, dict[str, float]]:
    g = df.groupby(by, observed=True)[label].agg(["size", "mean"])
    return {str(k): {"applicants": int(r["size"]), "default_rate": float(r["mean"])} for k, r in g.iterrows()}


def plain_aggregates(builder: FeatureBuilder, raw: pd.DataFrame) -> pd.DataFrame:
    """The 'simple 12-month aggregates': window means, event counts and record counts only."""
    suffixes = (
        f"__mean_{PLAIN_WINDOW}m",
        f"__misses_{PLAIN_WINDOW}m",
        f"__count_{PLAIN_WINDOW}m",
        f"__present_{PLAIN_WINDOW}m",
    )
    cols = [c for c in raw.columns if c.endswith(suffixes)]
    x = np.nan_to_num(raw[cols].to_numpy())  # no records in the window: zero, as a plain model would see it
    return pd.DataFrame(np.sign(x) * np.log1p(np.abs(x)), columns=cols)


def describe(path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Counts, default rates by segment and vintage, oracle and plain-LR AUCs, realism checks."""
    ds = read_dataset(path)
    contract = ds.contract
    a = ds.applicants
    label = contract.applicants.label
    report: dict[str, Any] = {
        "path": str(path),
        "contract": ds.manifest["contract"],
        "content_hash": ds.manifest["content_hash"],
        "rows": {t: m["rows"] for t, m in ds.manifest["tables"].items()},
    }
    if label not in a.columns or a[label].isna().any():
        report["labelled"] = False
        return report
    y = a[label].astype(bool).to_numpy()
    vintage = pd.to_datetime(a[contract.applicants.application_date]).dt.to_period("Q").astype(str)
    report |= {
        "labelled": True,
        "default_rate": float(y.mean()),
        "default_rate_by_vintage": _rates(a.assign(vintage=vintage), "vintage", label),
    }
    for col in ("entity_type", "industry"):
        if col in a.columns:
            report[f"default_rate_by_{col}"] = _rates(a, col, label)

    # Plain logistic regression on simple 12-month aggregates, scored on a random holdout.
    lookback = max(PLAIN_WINDOW, 1)
    builder = FeatureBuilder.from_config(contract.name, contract=contract)
    if builder.config.lookback_months < lookback:
        builder = FeatureBuilder(
            config=FeatureConfig.model_validate(builder.config.model_dump() | {"lookback_months": lookback}),
            contract=contract,
        )
    idx = np.arange(len(a))
    tr, te = train_test_split(idx, test_size=HOLDOUT_SHARE, random_state=seed, stratify=y)
    builder.fit(a.iloc[tr], ds.monthly)
    raw = builder.transform(a, ds.monthly).raw
    x = plain_aggregates(builder, raw)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    lr.fit(x.iloc[tr], y[tr])
    plain_auc = float(roc_auc_score(y[te], lr.predict_proba(x.iloc[te])[:, 1]))
    report["plain_lr"] = {
        "features": list(x.columns),
        "holdout_auc": plain_auc,
        "holdout_share": HOLDOUT_SHARE,
    }

    truth_file = Path(path) / f"{TRUTH_TABLE}.parquet"
    if truth_file.exists():
        truth = read_table(path, TRUTH_TABLE).set_index("applicant_id")["true_pd"]
        pd_true = truth.reindex(a[contract.key]).to_numpy()
        report["oracle_auc"] = float(roc_auc_score(y, pd_true))
        report["oracle_holdout_auc"] = float(roc_auc_score(y[te], pd_true[te]))
        report["mean_true_pd"] = float(pd_true.mean())
        by_entity = report.get("default_rate_by_entity_type", {})
        rates = [v["default_rate"] for v in by_entity.values() if v["applicants"] >= 100]
        measured = {
            "default_rate": report["default_rate"],
            "oracle_auc": report["oracle_auc"],
            "oracle_minus_plain_lr_auc": report["oracle_holdout_auc"] - plain_auc,
            "segment_rate_ratio": max(rates) / min(rates) if rates and min(rates) > 0 else float("nan"),
        }
        report["realism"] = {
            k: {"value": v, "range": list(TARGETS[k]), "ok": bool(TARGETS[k][0] <= v <= TARGETS[k][1])}
            for k, v in measured.items()
        }
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Human-readable tables of a `describe` report."""
    console.print(
        f"[bold]{report['path']}[/bold]  contract {report['contract']['name']} v{report['contract']['version']}"
    )
    console.print("rows: " + ", ".join(f"{t} {n:,}" for t, n in report["rows"].items()))
    if not report.get("labelled"):
        console.print("unlabelled dataset: no default rates")
        return
    console.print(f"default rate {report['default_rate']:.2%}")
    for key in ("default_rate_by_entity_type", "default_rate_by_industry", "default_rate_by_vintage"):
        if key not in report:
            continue
        t = Table(title=key.replace("_", " "))
        t.add_column("segment")
        t.add_column("applicants", justify="right")
        t.add_column("default rate", justify="right")
        for seg, v in report[key].items():
            t.add_row(seg, f"{v['applicants']:,}", f"{v['default_rate']:.2%}")
        console.print(t)
    console.print(f"plain LR on 12-month aggregates, holdout AUC {report['plain_lr']['holdout_auc']:.4f}")
    if "oracle_auc" in report:
        console.print(f"oracle AUC (true PD vs label) {report['oracle_auc']:.4f}")
        t = Table(title="realism targets")
        for col in ("figure", "value", "range", "ok"):
            t.add_column(col)
        for k, v in report["realism"].items():
            t.add_row(
                k,
                f"{v['value']:.4f}",
                f"{v['range'][0]}..{v['range'][1]}",
                "[green]yes[/green]" if v["ok"] else "[red]no[/red]",
            )
        console.print(t)
