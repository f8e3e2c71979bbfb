"""`govrisk monitor live`: the governance report on the applicants the server actually scored.

The decision log holds what each model said (both PDs, both decisions, the arm, the timings); the
outcomes say what happened. Joined on the application (salted applicant hash and application date),
they give the evaluation population of the same report as the offline one: `research.report.
report_from_scores` computes every figure, from the logged PDs and the observed defaults here, from
a scored dataset there. Development rows are the offline report's (the challenger's training data,
train + validation, scored by both models), so stability reads the same way.

What only a live population has is added beside it (`live`): swap sets of the real decisions, the
split arms, the challenger's failures and the latency from the log, the live AUC against the offline
OOT AUC of each model, and a parity check that the records the report reads are what was scored.
Then the alerts (`alerts`): thresholds from `configs/monitoring/`, each breach listed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from govrisk.core.pseudonym import pseudonym_functions
from govrisk.data.outcomes import mature
from govrisk.data.store import Dataset, read_dataset, verify_hash
from govrisk.monitoring.config import MonitoringConfig
from govrisk.monitoring.decisions import first_decisions
from govrisk.research import stats
from govrisk.research.governance import GovernancePolicy, check_row
from govrisk.research.report import (
    ROLES,
    Scored,
    development_population,
    report_from_scores,
    resolve_model,
    score,
    score_development,
    segment_groups,
)

FAILED_STATUSES = ("error", "timeout", "busy", "missing")  # the challenger was due but did not answer
LATENCIES = ("total_ms", "features_ms", "champion_ms", "challenger_ms")


class NotEnoughOutcomes(ValueError):
    """Too few mature outcomes to judge the models: the monitor's own exit code, not a breach. It
    carries the checks that need no outcome (the challenger's answers), so they still count."""

    def __init__(self, message: str, *, checks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.checks = checks


def model_pair(log: pd.DataFrame, champion: str | None, challenger: str | None) -> tuple[str, str]:
    """The champion and challenger tags the report is about: given, or those of the latest decision."""
    last = log.iloc[-1]
    champion = champion or str(last["champion_model"])
    challenger = challenger or (None if pd.isna(last["challenger_model"]) else str(last["challenger_model"]))
    if challenger is None:
        raise ValueError("the latest decision has no challenger_model; pass --challenger TAG")
    for role, tag in (("champion", champion), ("challenger", challenger)):
        logged = set(log[f"{role}_model"].dropna().astype(str))
        if tag not in logged:
            raise ValueError(f"--{role} {tag!r}: not in the decision log; logged {role}s: {sorted(logged)}")
    return champion, challenger


def application_keys(hashes: np.ndarray, dates: np.ndarray | pd.Series) -> pd.MultiIndex:
    """The join key of an application: (salted applicant hash, application date)."""
    days = pd.to_datetime(pd.Series(dates)).to_numpy().astype("datetime64[D]")
    return pd.MultiIndex.from_arrays([np.asarray(hashes, dtype=object), days])


class ApplicationIndex:
    """The join keys of a dataset's rows under every accepted pseudonym key (rotation): `get_indexer`
    gives the row of each (logged hash, date), whichever key the hash was logged under, or -1."""

    def __init__(self, index: pd.MultiIndex, n: int) -> None:
        self.index, self.n = index, n

    def get_indexer(self, keys: pd.MultiIndex) -> np.ndarray:
        pos = self.index.get_indexer(keys)
        return np.where(pos >= 0, pos % max(self.n, 1), -1)


def application_index(ds: Dataset, hash_of: Callable[[str], str]) -> ApplicationIndex:
    """The join key of every row of a dataset (the decision log pseudonymises ids the same way), under
    each key `hash_of` accepts (govrisk.core.pseudonym: the current key and earlier ones)."""
    c = ds.contract
    ids = [str(k) for k in ds.applicants[c.key]]
    dates = pd.to_datetime(ds.applicants[c.applicants.application_date]).to_numpy()
    functions = pseudonym_functions(hash_of)
    hashes = np.array([f(i) for f in functions for i in ids], dtype=object)
    return ApplicationIndex(application_keys(hashes, np.tile(dates, len(functions))), len(ids))


def _quantiles(x: pd.Series) -> dict[str, float] | None:
    x = x.dropna().to_numpy(dtype=np.float64)
    if not len(x):
        return None
    q = np.quantile(x, [0.5, 0.95, 0.99])
    return {"n": len(x), "p50": q[0], "p95": q[1], "p99": q[2], "max": float(x.max())}


def operations(log: pd.DataFrame) -> dict[str, Any]:
    """The challenger's answers and the latency, from every decision about the pair of models."""
    status = log["challenger_status"].value_counts().to_dict()
    due = log["challenger_status"] != "off"  # champion_only decisions never asked the challenger
    failed = log["challenger_status"].isin(FAILED_STATUSES) & due
    by_endpoint = {}
    endpoints = log["endpoint"] if "endpoint" in log.columns else pd.Series("all", index=log.index)
    for endpoint, part in log.groupby(endpoints, sort=True):
        by_endpoint[str(endpoint)] = {c: _quantiles(part[c]) for c in LATENCIES}
    return {
        "decisions": len(log),
        "challenger_status": {str(k): int(v) for k, v in status.items()},
        "challenger_due": int(due.sum()),
        "challenger_failed": int(failed.sum()),
        "challenger_error_rate": float(failed.sum() / due.sum()) if due.any() else 0.0,
        # A batch's rows share the batch's timings: quantiles per endpoint, weighted by applicants.
        "latency_ms": by_endpoint,
    }


def _rate(y: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n, d = int(mask.sum()), int(y[mask].sum())
    lo, hi = stats.jeffreys_interval(d, n) if n else (None, None)
    return {"n": n, "defaults": d, "bad_rate": d / n if n else None, "rate_low": lo, "rate_high": hi}


def decision_swap(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> dict[str, Any]:
    """Swap sets of the decisions actually taken (champion) and logged as the challenger's would-be
    decision: approved means `approve` (a referral is not an approval)."""
    a, b = champion == "approve", challenger == "approve"
    n = len(y)
    return {
        "champion_approval_rate": float(a.mean()),
        "challenger_approval_rate": float(b.mean()),
        "champion_approved": _rate(y, a),
        "challenger_approved": _rate(y, b),
        "swap_in": _rate(y, b & ~a),
        "swap_out": _rate(y, a & ~b),
        "both_approve": _rate(y, a & b),
        "neither_approves": _rate(y, ~a & ~b),
        "decisions": {
            f"{x} / {z}": int(((champion == x) & (challenger == z)).sum())
            for x in ("approve", "refer", "decline")
            for z in ("approve", "refer", "decline")
        },
        "rows": n,
    }


def split_arms(y: np.ndarray, ev: pd.DataFrame) -> dict[str, Any] | None:
    """Split mode: each arm's own decisions and their realised bad rates; arms are drawn by hashed
    applicant id, so the arms are comparable populations (an A/B test of the two models' decisions)."""
    split = (ev["routing_mode"] == "split").to_numpy()
    if not split.any():
        return None
    arms = {}
    for arm in ("champion", "challenger"):
        mask = split & (ev["arm"] == arm).to_numpy()
        approved = mask & (ev["decision"] == "approve").to_numpy()
        decided = ev["decided_by"].to_numpy()[mask]
        pd_col = ev["pd"].to_numpy(dtype=np.float64)
        d = int(y[mask].sum())
        arms[arm] = {
            "applicants": int(mask.sum()),
            "decided_by": {
                str(k): int(v) for k, v in zip(*np.unique(decided, return_counts=True), strict=True)
            },
            "approval_rate": float(approved.sum() / mask.sum()) if mask.any() else None,
            "approved": _rate(y, approved),
            "mean_pd_of_approved": float(pd_col[approved].mean()) if approved.any() else None,
            "auc_of_deciding_pd": stats.auc(y[mask], pd_col[mask]) if 0 < d < mask.sum() else None,
        }
    a, b = arms["champion"]["approved"], arms["challenger"]["approved"]
    p_value = None
    if a["n"] and b["n"]:  # Fisher's exact test: do the approved bad rates of the arms differ?
        table = [[a["defaults"], a["n"] - a["defaults"]], [b["defaults"], b["n"] - b["defaults"]]]
        p_value = float(sps.fisher_exact(table).pvalue)
    return {"arms": arms, "approved_bad_rate_fisher_p": p_value, "rows": int(split.sum())}


def would_decide(log: pd.DataFrame, role: str, approve_below: float, decline_at: float) -> np.ndarray:
    """Each model's decision on every logged row: the logged one where that model decided (or, for
    the challenger, its logged would-be decision); otherwise the hard rule that fired (it binds both
    models) or the policy's PD cut-offs applied to that model's logged PD."""
    pd_ = log[f"{role}_pd"].to_numpy(dtype=np.float64)
    cut = np.where(pd_ < approve_below, "approve", np.where(pd_ < decline_at, "refer", "decline"))
    derived = np.where(log["hard_rule"].notna().to_numpy(), log["decision"].to_numpy(), cut)
    if role == "challenger":
        logged = log["challenger_decision"]
        return np.where(logged.notna().to_numpy(), logged.astype(object).to_numpy(), derived)
    return np.where((log["decided_by"] == "champion").to_numpy(), log["decision"].to_numpy(), derived)


def _dataset_of(ds: Dataset, rows: np.ndarray) -> Dataset:
    """The applicants `rows` of a dataset with all its monthly records (features ignore the others)."""
    tables = dict(ds.tables)
    tables["applicants"] = ds.applicants.iloc[rows].reset_index(drop=True)
    return Dataset(ds.path, ds.manifest, ds.contract, tables)


def build_live_report(
    *,
    log: pd.DataFrame,
    outcomes: pd.DataFrame,
    data: Path,
    hash_of: Callable[[str], str],
    config: MonitoringConfig,
    policy: GovernancePolicy,
    policy_name: str,
    cutoffs: tuple[float, float],
    champion: str | None = None,
    challenger: str | None = None,
) -> dict[str, Any]:
    """The live governance report with its `live` section and `alerts` (see the module docstring).

    `log` is `read_decisions(...)`, `outcomes` `read_outcomes(...)`, `data` the dataset that holds the
    logged applicants' records, `hash_of` the serving hash of an applicant id, `cutoffs` the credit
    policy's (approve below, decline from) PD cut-offs. Raises NotEnoughOutcomes when too few
    applications have a mature outcome."""
    champ_tag, chall_tag = model_pair(log, champion, challenger)
    pair = (log["champion_model"] == champ_tag) & (log["challenger_model"] == chall_tag)
    notes = []
    if (~pair).any():
        notes.append(f"{int((~pair).sum()):,} logged decisions about other models are left out")
    logged = log[pair.to_numpy()].reset_index(drop=True)
    ops = operations(logged)
    apps, repeats = first_decisions(logged)
    if repeats:
        notes.append(f"{repeats:,} repeated decisions about the same application: the first one counts")

    # Outcomes: joined per application; only mature ones are labels.
    window = config.outcome_window_months
    out = outcomes.assign(mature=mature(outcomes, window_months=window))
    joined = apps.merge(out, on=["applicant_hash", "application_date"], how="left", validate="one_to_one")
    has_outcome = joined["default_12m"].notna().to_numpy()
    is_mature = has_outcome & joined["mature"].eq(True).to_numpy()
    both = joined["challenger_pd"].notna().to_numpy()
    ds = read_dataset(data)
    index = application_index(ds, hash_of)
    position = index.get_indexer(
        application_keys(joined["applicant_hash"].to_numpy(), joined["application_date"])
    )
    in_data = position >= 0
    keep = is_mature & both & in_data
    counts = {
        "decisions": len(logged),
        "applications": len(apps),
        "with_outcome": int(has_outcome.sum()),
        "mature": int(is_mature.sum()),
        "immature": int((has_outcome & ~is_mature).sum()),
        "without_outcome": int((~has_outcome).sum()),
        "challenger_missing": int((is_mature & ~both).sum()),
        "not_in_data": int((is_mature & both & ~in_data).sum()),
        "evaluated": int(keep.sum()),
    }
    ev_log = joined[keep].reset_index(drop=True)
    y = ev_log["default_12m"].to_numpy(dtype=bool).astype(int)
    lv = config.live
    if len(y) < lv.min_outcomes or min(y.sum(), len(y) - y.sum()) < lv.min_defaults:
        raise NotEnoughOutcomes(
            f"{len(y):,} applications with a mature outcome scored by both models ({int(y.sum()):,} defaults); "
            f"the live report needs at least {lv.min_outcomes:,} and {lv.min_defaults} of each outcome "
            f"(configs/monitoring live.min_outcomes / min_defaults). Counts: {counts}",
            checks=[challenger_check(ops, config)],
        )

    models = {"champion": resolve_model(champ_tag), "challenger": resolve_model(chall_tag)}
    rows = position[keep]
    live_ds = _dataset_of(ds, rows)
    # The records the report reads for these applicants, scored again: they must give the logged PDs,
    # or the data is not what the server scored (and CSI and segments would describe other applicants).
    p_logged = {role: ev_log[f"{role}_pd"].to_numpy(dtype=np.float64) for role in ROLES}
    p_again, raw = {}, None
    for role, m in models.items():
        p_again[role], fs = score(m, live_ds)
        if role == "champion":
            raw = fs.raw
    parity = {role: float(np.max(np.abs(p_again[role] - p_logged[role]))) for role in ROLES}
    groups, seg_info = segment_groups(live_ds, np.arange(len(rows)), policy.segments)
    ev = Scored(y=y, pd=p_logged, raw=raw, segments=groups, segment_info=seg_info)

    dev_pop, _, _, dev_notes = development_population(models["challenger"], policy)
    dev = score_development(models, dev_pop)

    created = ev_log["created_at"]
    data_info = {
        "evaluation_dataset": str(data),
        "evaluation_hash": verify_hash(data),
        "population": "live decisions: the decision log joined to mature outcomes",
        "development": {"what": dev_pop.name},
        "evaluation": {
            "what": f"applications decided {created.min():%Y-%m-%d %H:%M} .. {created.max():%Y-%m-%d %H:%M} UTC "
            f"with a mature outcome, scored by both models (PDs as logged)"
        },
        "notes": notes + dev_notes,
    }
    report = report_from_scores(
        models=models, dev=dev, ev=ev, data_info=data_info, policy=policy, policy_name=policy_name
    )
    report["title"] = f"Live: champion {models['champion'].label} vs challenger {models['challenger'].label}"

    decisions = {role: would_decide(ev_log, role, *cutoffs) for role in ROLES}
    d = report["discrimination"]
    offline = {
        role: {
            "offline_oot_auc": models[role].metrics.get("oot/auroc"),
            "live_auc": d[role]["auc"]["estimate"],
            "live_auc_low": d[role]["auc"]["low"],
            "live_auc_high": d[role]["auc"]["high"],
        }
        for role in ROLES
    }
    report["live"] = {
        "counts": counts,
        "operations": ops,
        "decision_swap": decision_swap(y, decisions["champion"], decisions["challenger"]),
        "split": split_arms(y, ev_log),
        "offline_vs_live": offline,
        "input_parity": {"max_abs_pd_difference": parity, "rows": len(rows)},
        "routing_modes": {str(k): int(v) for k, v in logged["routing_mode"].value_counts().items()},
        "outcome_window_months": window,
    }
    report["alerts"] = alerts(report, config)
    report["monitoring_config"] = config.model_dump(mode="json")
    return report


def challenger_check(ops: dict[str, Any], config: MonitoringConfig) -> dict[str, Any]:
    """The challenger's error rate against its threshold: read from the log alone, no outcome needed."""
    t = config.live.alerts
    return check_row(
        "challenger answers", ops["challenger_error_rate"] <= t.max_challenger_error_rate,
        ops["challenger_error_rate"], f"error rate <= {t.max_challenger_error_rate}",
        f"{ops['challenger_failed']:,} of {ops['challenger_due']:,} decisions without the challenger's answer "
        f"({ops['challenger_status']})",
    )  # fmt: skip


def alerts(report: dict[str, Any], config: MonitoringConfig) -> dict[str, Any]:
    """Every alert check of the live report, with its figure and threshold; `breaches` names the failed."""
    t = config.live.alerts
    live = report["live"]
    checks = []
    for role in ROLES:
        psi = report["stability"]["score_psi"][role]["value"]
        checks.append(check_row(
            f"{role} score stable (PSI)", psi <= t.max_score_psi, psi, f"PSI <= {t.max_score_psi}",
            f"PSI of the {role}'s live PD against its development PDs: {psi:.4f}",
        ))  # fmt: skip
    csi = report["stability"]["csi"]
    shifted = [c["characteristic"] for c in csi if c["csi"] > t.max_characteristic_psi]
    worst = max(csi, key=lambda c: c["csi"], default=None)
    checks.append(check_row(
        "inputs stable (CSI of the champion's main characteristics)", not shifted, shifted,
        f"every CSI <= {t.max_characteristic_psi}",
        f"largest: {worst['characteristic']} {worst['csi']:.4f}" if worst else "no characteristic checked",
    ))  # fmt: skip
    for role in ROLES:
        o = live["offline_vs_live"][role]
        if o["offline_oot_auc"] is None:
            checks.append(
                check_row(f"{role} AUC held up", True, None, "-", "no offline oot/auroc in metrics.json")
            )
            continue
        drop = o["offline_oot_auc"] - o["live_auc"]
        significant = o["live_auc_high"] < o["offline_oot_auc"]
        checks.append(check_row(
            f"{role} AUC held up", not (drop > t.max_auc_drop and significant), drop,
            f"drop <= {t.max_auc_drop}, or not significant", f"offline OOT AUC {o['offline_oot_auc']:.4f}, "
            f"live {o['live_auc']:.4f} [{o['live_auc_low']:.4f}, {o['live_auc_high']:.4f}]",
        ))  # fmt: skip
    for role in ROLES:
        hl = report["calibration"][role]["hosmer_lemeshow"]
        checks.append(check_row(
            f"{role} calibrated (Hosmer-Lemeshow)", hl["p_value"] >= t.calibration_alpha, hl["p_value"],
            f"p >= {t.calibration_alpha}", f"HL statistic {hl['statistic']:.2f} on {hl['df']} df; mean PD "
            f"{report['calibration'][role]['mean_pd']:.2%} against a default rate of "
            f"{report['calibration'][role]['default_rate']:.2%}",
        ))  # fmt: skip
    checks.append(challenger_check(live["operations"], config))
    parity = live["input_parity"]["max_abs_pd_difference"]
    worst_parity = max(parity.values())
    checks.append(check_row(
        "records match what was scored", worst_parity <= t.max_input_pd_difference, parity,
        f"max |PD logged - PD rescored| <= {t.max_input_pd_difference}",
        "the dataset's records of the evaluated applicants, scored again by both models, against the logged PDs",
    ))  # fmt: skip
    breaches = [c["check"] for c in checks if not c["passed"]]
    return {"checks": checks, "breaches": breaches, "ok": not breaches}
