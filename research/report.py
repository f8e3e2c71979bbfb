"""`govrisk report`: champion against challenger on the same applicants, every figure a reviewer needs.

Population. Both models are scored on one dataset: `--data DIR`, or by default the dataset named in
the challenger's experiment config. When that dataset is the one the challenger was trained on (same
content hash), the challenger's own split decides the rows: development = the policy's `development`
splits (train + validation), evaluation = its `evaluation` split (out-of-time). Any other dataset (a
live or drifted population) is evaluated whole, against the development rows of the challenger's
training data. Every figure of discrimination, calibration, grades, swap sets and segments is
computed on the evaluation rows; stability compares evaluation with development.

The result is one dict (`build_report`), written as `report.json` and rendered to a self-contained
`report.html` by `research.render` (`write_report`). Every figure is computed from arrays by
`report_from_scores` (outcomes, both models' PDs, the champion's raw characteristics, segments of a
development and an evaluation population): the offline report scores a dataset to get them, the live
report (`monitoring.live`) reads them from the decision log joined to observed outcomes.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from govrisk.core.rating import MasterScale, load_master_scale
from govrisk.core.registry import model_path
from govrisk.core.schema import FeatureSchema
from govrisk.data.features import FeatureSet, month_number
from govrisk.data.store import Dataset, read_dataset, verify_hash
from govrisk.research import stats
from govrisk.research.governance import GovernancePolicy, SegmentPolicy, recommend
from govrisk.research.render import render_html
from govrisk.serving.models import LoadedModel
from govrisk.training.config import experiment_from_dict
from govrisk.training.train import dataset_path, split_indices

ROLES = ("champion", "challenger")


# --- the two models -----------------------------------------------------------------------------------


@dataclass
class ModelRef:
    """A model to compare: a registry tag ('county-cnn:latest') or a run / model folder."""

    ref: str
    tag: str | None  # the resolved registry tag, None for a bare run folder
    folder: Path
    config: dict[str, Any]  # the resolved experiment config it was trained with
    lineage: dict[str, Any]
    metrics: dict[str, float]

    @property
    def kind(self) -> str:
        return self.config["model"]["kind"]

    @property
    def label(self) -> str:
        return self.tag or self.folder.name

    def describe(self) -> dict[str, Any]:
        """The lineage section of the report."""
        lin = self.lineage
        return {
            "ref": self.ref,
            "tag": self.tag,
            "label": self.label,
            "kind": self.kind,
            "experiment": self.config.get("name"),
            "folder": str(self.folder),
            "created_at": lin.get("created_at"),
            "dataset": lin.get("dataset"),
            "data_hash": lin.get("data_hash"),
            "config_hash": lin.get("config_hash"),
            "git_commit": lin.get("git_commit"),
            "seed": lin.get("seed"),
            "python": lin.get("python"),
            "packages": lin.get("packages", {}),
            "split": self.config.get("split"),
            "training_metrics": {
                k: v for k, v in self.metrics.items() if k.split("/")[1] in ("auroc", "ks", "brier")
            },
            "config": self.config,
        }


def resolve_model(ref: str) -> ModelRef:
    """A registry tag, or a folder holding model.onnx, config.yaml, lineage.json and metrics.json."""
    folder = Path(ref)
    tag = None
    if not folder.is_dir():
        folder, _ = model_path(ref, verify=True)  # KeyError / TamperedModelError name the tag
        tag = f"{folder.parent.name}:{folder.name}"  # the store keeps <name>/<version>
    elif (folder / "model_tag.txt").exists():
        tag = (folder / "model_tag.txt").read_text().strip()
    missing = [f for f in ("model.onnx", "config.yaml", "lineage.json", "metrics.json", "feature_schema.json")
               if not (folder / f).exists()]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"{ref}: model folder {folder} lacks {missing}")
    return ModelRef(
        ref=ref,
        tag=tag,
        folder=folder,
        config=yaml.safe_load((folder / "config.yaml").read_text()),
        lineage=json.loads((folder / "lineage.json").read_text()),
        metrics=json.loads((folder / "metrics.json").read_text())["metrics"],
    )


def score(model: ModelRef, ds: Dataset) -> tuple[np.ndarray, FeatureSet]:
    """PDs of every applicant in `ds` from the model's exported ONNX graph (its sha256 checked) and its
    own feature schema, through serving's loader: what serving runs. Also the features it saw."""

    loaded = LoadedModel(folder=model.folder, threads=0)
    fs = loaded.builder.transform(ds.applicants, ds.monthly)
    return loaded.predict(fs, batch_size=20_000).pd, fs


# --- populations --------------------------------------------------------------------------------------


@dataclass
class Population:
    ds: Dataset
    rows: np.ndarray  # row positions in ds.applicants
    name: str  # what these rows are, for the report


def _labels(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    label = ds.contract.applicants.label
    if label not in ds.applicants.columns:
        raise ValueError(f"{ds.path}: no label column {label!r}; a report needs observed outcomes")
    return ds.applicants[label].to_numpy()[rows].astype(int)


def development_population(
    challenger: ModelRef, policy: GovernancePolicy
) -> tuple[Population, Path, str, list[str]]:
    """The policy's `development` rows (train + validation) of the challenger's training data, split
    by the challenger's own config: the "expected" population of every PSI and CSI. Returns the rows,
    the dataset's path and verified hash, and notes for the report (a dataset changed since training)."""

    cfg, _ = experiment_from_dict(challenger.config, source=f"{challenger.label} config.yaml")
    train_path = dataset_path(cfg.data)
    train_ds, train_hash = read_dataset(train_path), verify_hash(train_path)
    notes = []
    if train_hash != challenger.lineage["data_hash"]:
        notes.append(
            f"the challenger's training data at {train_path} has changed since training "
            f"(hash {train_hash[:12]} != {challenger.lineage['data_hash'][:12]})"
        )
    split = split_indices(train_ds, cfg.split)
    dev = Population(train_ds, np.concatenate([split[s] for s in policy.development]),
                     f"{' + '.join(policy.development)} rows of {train_path}")  # fmt: skip
    return dev, train_path, train_hash, notes


def populations(
    challenger: ModelRef, data: Path | None, policy: GovernancePolicy
) -> tuple[Population, Population, dict]:
    """Development and evaluation rows (see the module docstring) and a description for the report."""

    cfg, _ = experiment_from_dict(challenger.config, source=f"{challenger.label} config.yaml")
    train_path = dataset_path(cfg.data)
    eval_path = Path(data) if data is not None else train_path
    eval_ds, eval_hash = read_dataset(eval_path), verify_hash(eval_path)
    notes = []
    if eval_hash == challenger.lineage["data_hash"]:
        split = split_indices(eval_ds, cfg.split)
        dev = Population(eval_ds, np.concatenate([split[s] for s in policy.development]),
                         f"{' + '.join(policy.development)} rows of {eval_path}")  # fmt: skip
        ev = Population(eval_ds, split[policy.evaluation], f"{policy.evaluation} rows of {eval_path}")
        how = f"the challenger's split ({cfg.split.kind})"
    else:
        dev, _, _, notes = development_population(challenger, policy)
        ev = Population(eval_ds, np.arange(len(eval_ds.applicants)), f"all rows of {eval_path}")
        how = "another population than the challenger's training data: evaluated whole"
    info = {
        "evaluation_dataset": str(eval_path),
        "evaluation_hash": eval_hash,
        "population": how,
        "development": {"rows": len(dev.rows), "what": dev.name},
        "evaluation": {"rows": len(ev.rows), "what": ev.name},
        "notes": notes,
    }
    return dev, ev, info


# --- segments -----------------------------------------------------------------------------------------


def thin_file(ds: Dataset, seg: SegmentPolicy) -> tuple[np.ndarray, str]:
    """Thin file: registered fewer than `thin_file_months_registered` months before the application
    (where the applicants table has `registration_date`), or fewer than `thin_file_months_with_records`
    months with any monthly record in the `lookback_months` before the application month."""
    a = ds.applicants
    key, app = ds.contract.applicants.key, ds.contract.applicants.application_date
    app_m = month_number(a[app])
    thin = np.zeros(len(a), dtype=bool)
    parts = []
    if "registration_date" in a.columns:
        age = app_m - month_number(a["registration_date"])
        thin |= age < seg.thin_file_months_registered
        parts.append(f"registered < {seg.thin_file_months_registered} months before applying")
    months = pd.concat([df[[key, "month"]] for df in ds.monthly.values()]).drop_duplicates()
    months = months.assign(m=month_number(months["month"]))
    by_app = pd.Series(app_m, index=a[key].to_numpy())
    lag = by_app.reindex(months[key].to_numpy()).to_numpy() - months["m"].to_numpy()
    inside = months[(lag >= 1) & (lag <= seg.lookback_months)]
    counts = inside.groupby(key).size().reindex(a[key].to_numpy(), fill_value=0).to_numpy()
    thin |= counts < seg.thin_file_months_with_records
    parts.append(
        f"fewer than {seg.thin_file_months_with_records} months with records in the "
        f"{seg.lookback_months} months before applying"
    )
    return thin, " or ".join(parts)


def segment_groups(ds: Dataset, rows: np.ndarray, seg: SegmentPolicy) -> tuple[dict[str, np.ndarray], dict]:
    """The segment of every row (`rows` of `ds`) along each judged dimension, and what the report
    says about them (columns the data lacks, the thin-file rule)."""
    a = ds.applicants.iloc[rows]
    groups = {c: a[c].astype(str).to_numpy() for c in seg.columns if c in a.columns}
    thin, thin_rule = thin_file(ds, seg)
    groups["thin_file"] = np.where(thin[rows], "thin", "established")
    info = {"absent_columns": [c for c in seg.columns if c not in a.columns], "thin_file_rule": thin_rule}
    return groups, info


def segment_rows(
    y: np.ndarray, p: dict[str, np.ndarray], groups: dict[str, np.ndarray], seg: SegmentPolicy
) -> list[dict[str, Any]]:
    rows = []
    for dimension, values in groups.items():
        for value in sorted(set(values.tolist()), key=str):
            mask = values == value
            n, d = int(mask.sum()), int(y[mask].sum())
            row = {"dimension": dimension, "segment": str(value), "n": n, "defaults": d,
                   "default_rate": d / n if n else float("nan")}  # fmt: skip
            for role in ROLES:
                row[f"{role}_mean_pd"] = float(p[role][mask].mean()) if n else float("nan")
                row[f"{role}_auc"] = stats.auc(y[mask], p[role][mask]) if 0 < d < n else None
            # DeLong's variance needs two of each outcome; a judged segment has at least that many.
            row["judged"] = bool(n >= seg.min_count and min(d, n - d) >= max(seg.min_defaults, 2))
            both = (
                row["champion_auc"] is not None and row["challenger_auc"] is not None and min(d, n - d) >= 2
            )
            row["auc_delta"] = row["challenger_auc"] - row["champion_auc"] if both else None
            # One-sided DeLong p-value of "the challenger ranks this segment worse": a small segment's
            # AUC moves by several points by chance, so a loss only counts when it is also significant.
            row["p_worse"] = (
                1.0 - stats.delong_test(y[mask], p["champion"][mask], p["challenger"][mask]).p_value_greater
                if both
                else None
            )
            rows.append(row)
    return rows


# --- grades, swap sets --------------------------------------------------------------------------------


def grade_table(
    y: np.ndarray, p: np.ndarray, scale: MasterScale, *, min_count: int, alpha: float
) -> dict[str, Any]:
    """Per grade of the master scale: counts, defaults, bad rate, mean PD, Jeffreys and binomial tests;
    and whether bad rates rise monotonically across the grades large enough to test."""
    idx = scale.index(p)
    table = []
    lower = 0.0
    for i, g in enumerate(scale.grades):
        mask = idx == i
        n, d = int(mask.sum()), int(y[mask].sum())
        row = {"grade": g.grade, "pd_from": lower, "pd_to": g.max_pd, "n": n, "share": n / len(y),
               "defaults": d, "default_rate": d / n if n else None,
               "mean_pd": float(p[mask].mean()) if n else None, "tested": n >= min_count}  # fmt: skip
        if n >= min_count:
            row["jeffreys_p"] = stats.jeffreys_test(d, n, row["mean_pd"])
            row["binomial_p"] = stats.binomial_test(d, n, row["mean_pd"])
            row["jeffreys_rejected"] = row["jeffreys_p"] < alpha
            row["rate_low"], row["rate_high"] = stats.jeffreys_interval(d, n)
        table.append(row)
        lower = g.max_pd
    tested = [r for r in table if r["tested"]]
    violations = [
        f"{a['grade']} ({a['default_rate']:.2%}) -> {b['grade']} ({b['default_rate']:.2%})"
        for a, b in itertools.pairwise(tested)
        if b["default_rate"] < a["default_rate"]
    ]
    return {"table": table, "monotone": not violations, "violations": violations}


def swap_sets(
    y: np.ndarray, p_champ: np.ndarray, p_chall: np.ndarray, approval_rate: float
) -> dict[str, Any]:
    """Both models approve the same share (the champion's approval rate), each its lowest PDs.

    Swapped in: approved by the challenger only; swapped out: by the champion only. Also the
    challenger's approval rate at the champion's bad rate (the most it could approve without taking
    more risk) and its bad rate at the champion's approval rate."""
    n = len(y)
    k = round(approval_rate * n)
    champ_ok = np.zeros(n, dtype=bool)
    champ_ok[np.argsort(p_champ, kind="stable")[:k]] = True
    chall_order = np.argsort(p_chall, kind="stable")
    chall_ok = np.zeros(n, dtype=bool)
    chall_ok[chall_order[:k]] = True

    def rate(mask: np.ndarray) -> float | None:
        return float(y[mask].mean()) if mask.any() else None

    champ_bad = rate(champ_ok)
    cum_bad = np.cumsum(y[chall_order]) / np.arange(1, n + 1)
    within = np.flatnonzero(cum_bad <= champ_bad + 1e-12)
    approve_at_champ_bad = float((within[-1] + 1) / n) if len(within) else 0.0
    swap_in, swap_out = chall_ok & ~champ_ok, champ_ok & ~chall_ok
    return {
        "approval_rate": k / n,
        "approved": k,
        "champion_bad_rate": champ_bad,
        "challenger_bad_rate_at_champion_approval": rate(chall_ok),
        "challenger_approval_at_champion_bad_rate": approve_at_champ_bad,
        "approval_gain": approve_at_champ_bad - k / n,
        "swap_in": {"n": int(swap_in.sum()), "bad_rate": rate(swap_in)},
        "swap_out": {"n": int(swap_out.sum()), "bad_rate": rate(swap_out)},
        "both_approve": {"n": int((champ_ok & chall_ok).sum()), "bad_rate": rate(champ_ok & chall_ok)},
        "both_decline": {"n": int((~champ_ok & ~chall_ok).sum()), "bad_rate": rate(~champ_ok & ~chall_ok)},
    }


def strategy_curve(y: np.ndarray, p: np.ndarray, points: int = 100) -> dict[str, list[float]]:
    """Bad rate of the approved applicants against the approval rate (lowest PDs approved first)."""
    order = np.argsort(p, kind="stable")
    cum = np.cumsum(y[order]) / np.arange(1, len(y) + 1)
    ks = np.unique(np.linspace(1, len(y), points).round().astype(int))
    return {"approval_rate": (ks / len(y)).tolist(), "bad_rate": cum[ks - 1].tolist()}


# --- stability ----------------------------------------------------------------------------------------


def main_characteristics(champion: ModelRef, dev_raw: pd.DataFrame, y_dev: np.ndarray, k: int) -> list[dict]:
    """The champion's main characteristics: a scorecard's selected ones by information value; for any
    other model the raw characteristics that rank development applicants best on their own."""
    if k == 0:
        return []
    card = champion.folder / "scorecard.csv"
    if card.exists():
        iv = pd.read_csv(card).groupby("characteristic", sort=False)["iv"].sum().sort_values(ascending=False)
        return [
            {"characteristic": c, "iv": float(v), "ranked_by": "scorecard IV"} for c, v in iv.head(k).items()
        ]
    ranked = []
    for c in dev_raw.columns:
        x = dev_raw[c].to_numpy(dtype=np.float64)
        x = np.where(np.isfinite(x), x, np.nanmedian(x) if np.isfinite(x).any() else 0.0)
        ranked.append((abs(stats.auc(y_dev, x) - 0.5), c))
    return [{"characteristic": c, "univariate_gini": 2 * g, "ranked_by": "univariate Gini"}
            for g, c in sorted(ranked, reverse=True)[:k]]  # fmt: skip


# --- the report ---------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One population as the report reads it, whatever it came from (a dataset scored offline, or the
    decision log joined to outcomes): observed outcomes, both models' PDs, the champion's raw
    characteristics (for CSI) and each row's segment along every judged dimension."""

    y: np.ndarray  # [N] 0/1 observed 12-month default
    pd: dict[str, np.ndarray]  # role -> [N] PD
    raw: pd.DataFrame  # [N, R] the champion's raw characteristics
    segments: dict[str, np.ndarray] | None = None  # dimension -> [N] segment (the evaluation side)
    segment_info: dict[str, Any] | None = None  # absent columns, thin-file rule


def score_populations(
    models: dict[str, ModelRef], dev: Population, ev: Population, policy: GovernancePolicy
) -> tuple[Scored, Scored]:
    """Score each dataset once per model (a model's features come from its own schema)."""
    p_dev, p_ev, raw_dev, raw_ev = {}, {}, {}, {}
    for role, m in models.items():
        p_all, fs_all = score(m, ev.ds)
        p_ev[role], raw_ev[role] = p_all[ev.rows], fs_all.raw.iloc[ev.rows].reset_index(drop=True)
        if dev.ds is ev.ds:
            p_dev[role], raw_dev[role] = p_all[dev.rows], fs_all.raw.iloc[dev.rows].reset_index(drop=True)
        else:
            p_dev_all, fs_dev_all = score(m, dev.ds)
            p_dev[role] = p_dev_all[dev.rows]
            raw_dev[role] = fs_dev_all.raw.iloc[dev.rows].reset_index(drop=True)
    groups, info = segment_groups(ev.ds, ev.rows, policy.segments)
    return (
        Scored(y=_labels(dev.ds, dev.rows), pd=p_dev, raw=raw_dev["champion"]),
        Scored(
            y=_labels(ev.ds, ev.rows), pd=p_ev, raw=raw_ev["champion"], segments=groups, segment_info=info
        ),
    )


def score_development(models: dict[str, ModelRef], dev: Population) -> Scored:
    """The development population scored by both models (what the live report compares with)."""
    p_dev, raw = {}, None
    for role, m in models.items():
        p_all, fs_all = score(m, dev.ds)
        p_dev[role] = p_all[dev.rows]
        if role == "champion":
            raw = fs_all.raw.iloc[dev.rows].reset_index(drop=True)
    return Scored(y=_labels(dev.ds, dev.rows), pd=p_dev, raw=raw)


def build_report(
    champion_ref: str,
    challenger_ref: str,
    *,
    data: Path | None,
    policy: GovernancePolicy,
    policy_name: str = "default",
) -> dict[str, Any]:
    """Every figure of the governance report as one JSON-ready dict (see the module docstring)."""
    models = {"champion": resolve_model(champion_ref), "challenger": resolve_model(challenger_ref)}
    dev, ev, pop_info = populations(models["challenger"], data, policy)
    for role, m in models.items():
        if m.lineage.get("data_hash") not in (pop_info["evaluation_hash"], None) and data is None:
            pop_info["notes"].append(
                f"the {role} was trained on other data ({m.lineage.get('dataset')}); it is scored here "
                "on the challenger's data"
            )
    dev_scored, ev_scored = score_populations(models, dev, ev, policy)
    return report_from_scores(
        models=models,
        dev=dev_scored,
        ev=ev_scored,
        data_info=pop_info,
        policy=policy,
        policy_name=policy_name,
    )


def report_from_scores(
    *,
    models: dict[str, ModelRef],
    dev: Scored,
    ev: Scored,
    data_info: dict[str, Any],
    policy: GovernancePolicy,
    policy_name: str = "default",
) -> dict[str, Any]:
    """The governance report from scored populations: `ev` is judged (discrimination, calibration,
    grades, swap sets, segments), `dev` is the development population stability compares it with.
    The offline report (`build_report`) and the live one (`monitoring.live`) both end here."""
    if ev.segments is None:
        raise ValueError("the evaluation population needs its segments (Scored.segments)")
    y, y_dev, p_ev, p_dev = ev.y.astype(int), dev.y.astype(int), ev.pd, dev.pd
    pop_info = copy.deepcopy(data_info)  # the caller's dict stays as it was
    pop_info["evaluation"] |= {"rows": len(y), "defaults": int(y.sum()), "default_rate": float(y.mean())}
    pop_info["development"] |= {
        "rows": len(y_dev),
        "defaults": int(y_dev.sum()),
        "default_rate": float(y_dev.mean()),
    }

    b = policy.bootstrap
    boot = {
        name: stats.bootstrap_ci(y, p_ev, fn, n_boot=b.n_boot, level=b.level, seed=b.seed)
        for name, fn in (("auc", stats.auc), ("ks", stats.ks))
    }
    # Gini = 2 AUC - 1 is monotone in the AUC: its percentile interval is the AUC's, transformed.
    boot["gini"] = {
        k: {f: (2 * v - 1 if f in ("estimate", "low", "high") else 2 * v) for f, v in ci.items()}
        for k, ci in boot["auc"].items()
    }
    for key in list(boot["gini"]):
        if " - " in key:  # a difference of Ginis is twice the AUC difference, no offset
            boot["gini"][key] = {f: 2 * v for f, v in boot["auc"][key].items()}
    delong = stats.delong_test(y, p_ev["champion"], p_ev["challenger"], level=b.level)
    discrimination = {
        role: {metric: boot[metric][role] for metric in ("auc", "gini", "ks")} for role in ROLES
    }
    discrimination["difference"] = {
        metric: boot[metric]["challenger - champion"] for metric in ("auc", "gini", "ks")
    }
    discrimination["delong"] = delong.to_dict()
    discrimination["development_auc"] = {role: stats.auc(y_dev, p_dev[role]) for role in ROLES}

    calibration = {}
    for role in ROLES:
        hl = stats.hosmer_lemeshow(
            y, np.clip(p_ev[role], 1e-9, 1 - 1e-9), groups=policy.hosmer_lemeshow_groups
        )
        calibration[role] = {
            "brier": stats.brier(y, p_ev[role]),
            "mean_pd": float(p_ev[role].mean()),
            "default_rate": float(y.mean()),
            "hosmer_lemeshow": hl.to_dict(),
            "reliability": stats.reliability(y, p_ev[role], bins=policy.reliability_bins),
        }

    scale = load_master_scale()
    alpha = policy.thresholds.calibration_alpha
    grades = {
        role: grade_table(y, p_ev[role], scale, min_count=policy.min_grade_count, alpha=alpha)
        for role in ROLES
    }
    grades["scale"] = {"name": scale.name, "version": scale.version, "grades": scale.names}

    score_psi = {role: stats.psi(p_dev[role], p_ev[role], bins=policy.psi_bins).to_dict() for role in ROLES}
    for role in ROLES:
        score_psi[role]["band"] = stats.stability_band(score_psi[role]["value"])
    grade_psi = {
        role: stats.psi(scale.index(p_dev[role]), scale.index(p_ev[role]), categorical=True).value
        for role in ROLES
    }
    categorical = set(FeatureSchema.load(models["champion"].folder / "feature_schema.json").categorical_raw)
    csi = []
    for ch in main_characteristics(models["champion"], dev.raw, y_dev, policy.csi_characteristics):
        c = ch["characteristic"]
        r = stats.psi(
            dev.raw[c].to_numpy(), ev.raw[c].to_numpy(),
            bins=policy.psi_bins, categorical=c in categorical,
        )  # fmt: skip
        csi.append(ch | {"csi": r.value, "band": stats.stability_band(r.value), "bins": r.to_dict()})
    stability = {"score_psi": score_psi, "grade_psi": grade_psi, "csi": csi}

    swap = swap_sets(y, p_ev["champion"], p_ev["challenger"], policy.approval_rate)

    seg = policy.segments
    segments = {
        "rows": segment_rows(y, p_ev, ev.segments, seg),
        **(ev.segment_info or {}),
        "min_count": seg.min_count,
        "min_defaults": seg.min_defaults,
    }

    figures = {
        "roc": {role: stats.roc_points(y, p_ev[role]) for role in ROLES},
        "ks": {role: stats.ks_curve(y, p_ev[role]) for role in ROLES},
        "reliability": {role: calibration[role]["reliability"] for role in ROLES},
        "grades": {role: grades[role]["table"] for role in ROLES},
        "score_distribution": {role: score_psi[role] for role in ROLES},
        "csi": [{"characteristic": c["characteristic"], "csi": c["csi"]} for c in csi],
        "strategy": {role: strategy_curve(y, p_ev[role]) for role in ROLES} | {"champion_point": swap},
        "swap": swap,
        "segments": segments["rows"],
    }

    report = {
        "title": f"Champion {models['champion'].label} vs challenger {models['challenger'].label}",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "govrisk_version": importlib_metadata.version("govrisk"),
        "policy": {"name": policy_name} | policy.model_dump(mode="json"),
        "data": pop_info,
        "models": {role: m.describe() for role, m in models.items()},
        "discrimination": discrimination,
        "calibration": calibration,
        "grades": grades,
        "stability": stability,
        "swap": swap,
        "segments": segments,
        "figures": figures,
    }
    report["recommendation"] = recommend(report, policy)
    return report


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None  # JSON has no NaN / inf
    return x


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """report.json and the self-contained report.html in `out`; returns both paths."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = _jsonable(report)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(clean, indent=1, allow_nan=False))
    html_path.write_text(render_html(clean), encoding="utf-8")
    return json_path, html_path
