"""The synthetic county: applicants, their monthly tax and social-security records, and a known true PD.

Real government data cannot ship, so every model is developed and measured here. The mechanisms:

1. Each applicant has a latent monthly business health `h` = firm quality + firm drift + an AR(1)
   idiosyncratic component with rare negative jumps + industry-wide shocks (the herb-price crash).
2. Sales are health times industry seasonality times noise; invoices follow sales; VAT and income
   tax follow sales and margin; small-scale taxpayers file quarterly; headcount follows health with
   a lag; stress (low health) shows up as late filings, zero declarations, unpaid tax, social-security
   arrears and penalties. Farms and individuals often have no tax or employer records; young firms
   have thin files; a few months are lost in the join.
3. The 12-month default is drawn from a true PD that is logit-linear in the firm's realised
   performance (health plus monthly luck) relative to its own past over completed calendar quarters
   on file (year on year and against the half-year before), in the volatility of its monthly
   performance, in recency-weighted stress events and in static facts and leverage.
   The records are partial views of that state (quarterly filings, lost months, no tax file), so a
   model that reads the sequence well can approach the oracle while a plain 12-month average cannot.

Everything is vectorised over a chunk of applicants and seeded by (seed, chunk index), so the same
seed gives byte-identical Parquet whatever the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator
from rich.progress import Progress

from govrisk.core.config import StrictModel, load_config
from govrisk.data.contract import load_contract
from govrisk.data.months import months_since_1970
from govrisk.data.store import DatasetWriter

TRUTH_TABLE = "truth"
TRUTH_SCHEMA = pa.schema([pa.field("applicant_id", pa.string()), pa.field("true_pd", pa.float64())])
GENERATOR_VERSION = "2"


class EntityConfig(StrictModel):
    share: float = Field(ge=0)
    revenue: float = Field(gt=0)
    employer_ss: float = Field(ge=0, le=1)
    no_tax: float = Field(ge=0, le=1)
    young: float = Field(ge=0, le=1)
    general_taxpayer: float = Field(ge=0, le=1)


class IndustryConfig(StrictModel):
    volatility: float = Field(gt=0)
    margin: float = Field(gt=0, lt=1)
    ticket: float = Field(gt=0)
    entity_weights: list[float]


class ShockConfig(StrictModel):
    industry: str
    start: str = Field(pattern=r"^\d{4}-\d{2}$")
    ramp: int = Field(ge=1)
    hold: int = Field(ge=0)
    recover: int = Field(ge=1)
    depth: float


class HealthConfig(StrictModel):
    persistence: float = Field(ge=0, lt=1)
    quality_loading: float
    trend_sd: float = Field(ge=0)
    jump_prob: float = Field(ge=0, le=1)
    jump_mean: float
    jump_sd: float = Field(ge=0)
    observation_noise: float = Field(ge=0)
    ss_lag: int = Field(ge=0, le=12)


class StressConfig(StrictModel):
    late_filing: tuple[float, float]
    zero_declaration: tuple[float, float]
    unpaid_tax: tuple[float, float]
    ss_arrears: tuple[float, float]
    penalty: tuple[float, float]
    record_gap: float = Field(ge=0, lt=1)


class PdConfig(StrictModel):
    intercept: float
    level: float
    trend: float
    volatility: float
    stress: float
    leverage: float
    property: float
    abnormal_operation: float
    admin_penalty: float
    young_business: float
    entity: dict[str, float]
    industry: dict[str, float]


class DriftConfig(StrictModel):
    quality_shift: float
    leverage_shift: float
    entity_shares: dict[str, float]


class GeneratorConfig(StrictModel):
    contract: str
    first_vintage: str = Field(pattern=r"^\d{4}-\d{2}$")
    vintages: int = Field(ge=1)
    history_months: int = Field(ge=12, le=60)
    forward_months: int = Field(default=12, ge=0, le=24)
    chunk_size: int = Field(ge=1000)
    townships: int = Field(ge=1)
    entities: dict[str, EntityConfig]
    industries: dict[str, IndustryConfig]
    seasonality: dict[str, list[float]]
    shocks: list[ShockConfig]
    health: HealthConfig
    stress: StressConfig
    pd: PdConfig
    drift: DriftConfig

    @model_validator(mode="after")
    def _consistent(self) -> GeneratorConfig:
        contract = load_contract(self.contract)
        cols = contract.applicants.columns
        for field, names in (("entities", self.entities), ("industries", self.industries)):
            column = "entity_type" if field == "entities" else "industry"
            declared = set(cols[column].categories or ())
            if set(names) != declared:
                raise ValueError(
                    f"{field}: {sorted(names)} must equal contract {column} categories {sorted(declared)}"
                )
        for ind, cfg in self.industries.items():
            if len(cfg.entity_weights) != len(self.entities):
                raise ValueError(
                    f"industries.{ind}.entity_weights has {len(cfg.entity_weights)} values, need {len(self.entities)}"
                )
        for ind, season in self.seasonality.items():
            if ind not in self.industries or len(season) != 12:
                raise ValueError(f"seasonality.{ind}: need a known industry and 12 values, got {len(season)}")
        for s in self.shocks:
            if s.industry != "all" and s.industry not in self.industries:
                raise ValueError(f"shocks: unknown industry {s.industry!r}")
        for field, known in (("pd.entity", self.entities), ("pd.industry", self.industries)):
            given = self.pd.entity if field == "pd.entity" else self.pd.industry
            if set(given) != set(known):
                raise ValueError(f"{field}: keys {sorted(given)} must be {sorted(known)}")
        if set(self.drift.entity_shares) != set(self.entities):
            raise ValueError(f"drift.entity_shares: keys must be {sorted(self.entities)}")
        return self


def load_generator_config(name_or_path: str | Path, **overrides: Any) -> GeneratorConfig:
    """Load `configs/generator/<name>.yaml` (or a path); errors name the offending key."""
    return load_config("generator", name_or_path, GeneratorConfig, **overrides)


def month_index(ym: str) -> int:
    """'2021-03' -> absolute month number (year * 12 + month - 1)."""
    year, month = (int(x) for x in ym.split("-"))
    return year * 12 + month - 1


def month_to_date32(m: np.ndarray) -> pa.Array:
    """Absolute month numbers -> date32 array of the first day of each month."""
    years, months = np.divmod(np.asarray(m, dtype=np.int64), 12)
    ym = months_since_1970(years, months + 1)
    return pa.array(ym.astype("datetime64[M]").astype("datetime64[D]"), type=pa.date32())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _shock_curve(cfg: GeneratorConfig, months: np.ndarray) -> np.ndarray:
    """Industry x absolute-month matrix of additive health shocks."""
    out = np.zeros((len(cfg.industries), len(months)))
    names = list(cfg.industries)
    for s in cfg.shocks:
        d = months - month_index(s.start)
        ramp = np.clip((d + 1) / s.ramp, 0, 1)
        recover = np.clip(1 - (d - s.ramp - s.hold + 1) / s.recover, 0, 1)
        curve = s.depth * np.where(d < 0, 0.0, np.minimum(ramp, recover))
        rows = range(len(names)) if s.industry == "all" else [names.index(s.industry)]
        for r in rows:
            out[r] += curve
    return out


def simulate_chunk(
    cfg: GeneratorConfig, *, seed: int, chunk: int, n: int, drift: bool = False
) -> dict[str, Any]:
    """Simulate `n` applicants; returns numpy arrays (static facts, monthly paths, true PD).

    Monthly arrays are [n, history + forward] in relative time; column `history - 1` is the month
    before application. The forward months exist so that outcomes can later be played forward from
    the same random stream (the records written now stop at the application month).
    """
    rng = np.random.default_rng([seed, chunk])
    H, L = cfg.history_months, cfg.history_months + cfg.forward_months
    ent_names, ind_names = list(cfg.entities), list(cfg.industries)
    E = [cfg.entities[e] for e in ent_names]
    I_ = [cfg.industries[i] for i in ind_names]

    # --- static facts -------------------------------------------------------------------------
    shares = np.array(
        [
            (cfg.drift.entity_shares if drift else {e: x.share for e, x in cfg.entities.items()})[e]
            for e in ent_names
        ]
    )
    ent = rng.choice(len(E), size=n, p=shares / shares.sum())
    weights = np.array([c.entity_weights for c in I_]).T  # [entity, industry]
    cum = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    ind = np.minimum((rng.random(n)[:, None] > cum[ent]).sum(1), len(I_) - 1)
    quality = rng.standard_normal(n) + (cfg.drift.quality_shift if drift else 0.0)
    app_m = month_index(cfg.first_vintage) + rng.integers(0, cfg.vintages, n)
    app_day = rng.integers(1, 29, n)
    young = rng.random(n) < np.array([e.young for e in E])[ent]
    age_months = np.where(young, rng.integers(3, 24, n), 24 + rng.gamma(2.0, 45.0, n).astype(np.int64))
    reg_m = app_m - age_months
    reg_day = rng.integers(1, 29, n)
    scale = np.array([e.revenue for e in E])[ent] * np.exp(0.35 * quality + 0.5 * rng.standard_normal(n))
    margin = np.array([c.margin for c in I_])[ind] * np.exp(0.2 * rng.standard_normal(n))
    ticket = np.array([c.ticket for c in I_])[ind] * np.exp(0.3 * rng.standard_normal(n))
    is_ind = ent == ent_names.index("individual")
    capital = np.where(
        is_ind, 0.0, np.round(12 * scale * np.exp(np.log(0.4) + 0.8 * rng.standard_normal(n)), -3)
    )
    legal_rep_age = np.clip(np.round(rng.normal(45, 10, n)), 20, 75).astype(np.int64)
    property_count = rng.poisson(np.exp(-0.3 + 0.35 * quality))
    property_value = np.where(
        property_count > 0,
        np.round(property_count * 350_000 * np.exp(0.2 * quality + 0.5 * rng.standard_normal(n)), -3),
        0.0,
    )
    has_mortgage = (property_count > 0) & (rng.random(n) < 0.45)
    abnormal = rng.random(n) < _sigmoid(-4.2 - 0.8 * quality)
    penalties = rng.poisson(np.exp(-2.2 - 0.5 * quality))
    township_p = 1.0 / np.arange(1, cfg.townships + 1) ** 0.8
    township = rng.choice(cfg.townships, size=n, p=township_p / township_p.sum())
    general = rng.random(n) < np.array([e.general_taxpayer for e in E])[ent]
    has_tax = rng.random(n) >= np.array([e.no_tax for e in E])[ent]
    employer = rng.random(n) < np.array([e.employer_ss for e in E])[ent]
    leverage_draw = np.log(0.3) + 0.5 * rng.standard_normal(n) + (cfg.drift.leverage_shift if drift else 0.0)
    requested = np.maximum(np.round(12 * scale * np.exp(leverage_draw), -3), 1000.0)

    # --- latent health ------------------------------------------------------------------------
    hc = cfg.health
    cal = app_m[:, None] - H + np.arange(L)[None, :]  # absolute calendar month of each step
    lo = cal.min()
    shock = _shock_curve(cfg, np.arange(lo, cal.max() + 1))[ind[:, None], cal - lo]
    season = np.array(
        [
            np.array(cfg.seasonality.get(i, [0.0] * 12)) - np.mean(cfg.seasonality.get(i, [0.0] * 12))
            for i in ind_names
        ]
    )
    season = season[ind[:, None], cal % 12]
    sigma = np.array([c.volatility for c in I_])[ind] * np.exp(0.25 * rng.standard_normal(n))
    firm_trend = hc.trend_sd * rng.standard_normal(n)
    eps = rng.standard_normal((n, L))
    jumps = (rng.random((n, L)) < hc.jump_prob) * rng.normal(hc.jump_mean, hc.jump_sd, (n, L))
    x = np.empty((n, L))
    prev = sigma / np.sqrt(1 - hc.persistence**2) * eps[:, 0]
    for t in range(L):
        prev = hc.persistence * prev + sigma * eps[:, t] + jumps[:, t]
        x[:, t] = prev
    health = (
        hc.quality_loading * quality[:, None]
        + firm_trend[:, None] * (np.arange(L) - H)[None, :] / 12
        + x
        + shock
    )

    # --- observed records -----------------------------------------------------------------------
    st = cfg.stress
    active = cal >= reg_m[:, None]
    quarter_end = cal % 3 == 2
    u = rng.random((n, L, 6))
    late = u[..., 0] < _sigmoid(st.late_filing[0] + st.late_filing[1] * health)
    zero = u[..., 1] < _sigmoid(st.zero_declaration[0] + st.zero_declaration[1] * health)
    unpaid = u[..., 2] < _sigmoid(st.unpaid_tax[0] + st.unpaid_tax[1] * health)
    penalty = (u[..., 3] < _sigmoid(st.penalty[0] + st.penalty[1] * health)) | (late & (u[..., 4] < 0.15))
    gap = u[..., 5] < st.record_gap

    # Realised performance: health plus this month's luck. It is what pays (or misses) instalments,
    # so the true PD below reads it, not the smoother latent health.
    performance = health + hc.observation_noise * rng.standard_normal((n, L))
    sales = np.where(zero | ~active, 0.0, scale[:, None] * np.exp(performance + season))
    # Small-scale taxpayers declare the quarter's sales at quarter end.
    padded = np.concatenate([np.zeros((n, 2)), sales], axis=1)
    quarter_sales = padded[:, 2:] + padded[:, 1:-1] + padded[:, :-2]
    declared = np.round(np.where(general[:, None], sales, quarter_sales), 2)
    declared = np.where(zero, 0.0, declared)
    invoice_ratio = rng.uniform(0.6, 1.0, n)[:, None]
    invoice_amount = np.round(declared * invoice_ratio * np.exp(0.05 * rng.standard_normal((n, L))), 2)
    invoice_count = rng.poisson(invoice_amount / ticket[:, None])
    vat = np.where(
        general[:, None],
        0.13 * margin[:, None] * declared,
        np.where(declared > 300_000, 0.01 * declared, 0.0),
    )
    months_in_period = np.where(general[:, None], 1.0, 3.0)
    fixed_costs = 0.5 * scale[:, None] * margin[:, None] * months_in_period
    income_tax = np.where(
        quarter_end | general[:, None], 0.05 * np.maximum(0.0, declared * margin[:, None] - fixed_costs), 0.0
    )
    vat, income_tax = np.round(vat, 2), np.round(income_tax, 2)
    due = vat + income_tax
    arrears = np.zeros((n, L))
    owed = np.zeros(n)
    for t in range(L):
        owed = np.where(unpaid[:, t], owed + due[:, t] + 0.01 * declared[:, t], 0.5 * owed)
        owed = np.where(owed < 100, 0.0, owed)
        arrears[:, t] = owed
    arrears = np.round(arrears, 2)

    headcount_base = np.maximum(1.0, np.round(scale / 25_000 * np.exp(0.4 * rng.standard_normal(n))))
    lagged = np.concatenate([np.repeat(health[:, :1], hc.ss_lag, axis=1), health[:, : L - hc.ss_lag]], axis=1)
    headcount = np.maximum(
        0, np.round(headcount_base[:, None] * np.exp(0.7 * lagged) + 0.3 * rng.standard_normal((n, L)))
    ).astype(np.int64)
    headcount = np.where(active, headcount, 0)
    prev_hc = np.concatenate([headcount[:, :1], headcount[:, :-1]], axis=1)
    churn = rng.poisson(0.03 * headcount)
    new_hires = np.maximum(0, headcount - prev_hc) + churn
    separations = np.maximum(0, prev_hc - headcount) + churn
    wage = 4500 * np.exp(0.25 * rng.standard_normal(n))
    contribution_base = np.round(headcount * wage[:, None] * np.exp(0.02 * rng.standard_normal((n, L))), 2)
    ss_arrears = rng.random((n, L)) < _sigmoid(st.ss_arrears[0] + st.ss_arrears[1] * lagged)
    contributions = np.round(
        np.where(ss_arrears, 0.3 * contribution_base * rng.uniform(0, 0.5, (n, L)), 0.3 * contribution_base),
        2,
    )

    # Which months have a record, over the whole simulated span; the dataset keeps the history part,
    # `data.outcomes` the forward part (the months of the loan) when time is played forward.
    hist = np.arange(L)[None, :] < H
    tax_on_file = active & has_tax[:, None] & (general[:, None] | quarter_end) & ~gap
    ss_on_file = active & employer[:, None] & ~np.roll(gap, 1, axis=1)
    tax_present = hist & tax_on_file
    ss_present = hist & ss_on_file

    # --- true PD at application -------------------------------------------------------------------
    p = cfg.pd
    # Performance relative to the firm's own past, read over completed calendar quarters (the
    # periods a firm's accounts and its quarterly filings close on): the last two quarters against
    # the same two quarters a year before (year on year, so seasonality cancels) and against the two
    # quarters before them (momentum). Only months the firm existed count: a firm registered a year
    # ago has no "a year before" to compare with (its youth is priced by `young_business`).
    since_quarter_end = (cal[:, H - 1] % 3 + 1) % 3  # months of the current, unfinished quarter
    on = np.concatenate([np.zeros((n, 1)), np.cumsum(active[:, :H], axis=1)], axis=1)
    total = np.concatenate([np.zeros((n, 1)), np.cumsum(performance[:, :H] * active[:, :H], axis=1)], axis=1)
    rows = np.arange(n)

    def quarters_mean(first: int, count: int) -> np.ndarray:
        """Mean performance over `count` quarters, the most recent being `first` completed quarters back."""
        hi = H - since_quarter_end - 3 * first
        lo = hi - 3 * count
        months = on[rows, hi] - on[rows, lo]
        return np.divide(total[rows, hi] - total[rows, lo], months, out=np.full(n, np.nan), where=months > 0)

    recent = quarters_mean(0, 2)  # never empty: registration is at least 3 months before application
    level = np.nan_to_num(recent - quarters_mean(4, 2))
    trend = np.nan_to_num(recent - quarters_mean(2, 2))
    steps = np.diff(performance[:, H - 13 : H], axis=1)
    both = active[:, H - 13 : H - 1] & active[:, H - 12 : H]
    k = np.maximum(both.sum(1), 1)
    mean_step = (steps * both).sum(1) / k
    volatility = np.sqrt((((steps - mean_step[:, None]) ** 2) * both).sum(1) / k)
    # Stress events as the departments recorded them, weighted by recency (half-life 4 months).
    recency = 0.5 ** ((H - 1 - np.arange(H)) / 4.0)
    events = (late | zero | (arrears > 0))[:, :H] * tax_present[:, :H] + ss_arrears[:, :H] * ss_present[:, :H]
    stress = (events * recency).sum(1)
    leverage = np.log(requested / (12 * scale * np.exp(recent)))
    logit = (
        p.intercept
        + p.level * level
        + p.trend * trend
        + p.volatility * volatility
        + p.stress * stress
        + p.leverage * leverage
        + p.property * np.log1p(property_value / 1e5)
        + p.abnormal_operation * abnormal
        + p.admin_penalty * penalties
        + p.young_business * (age_months < 24)
        + np.array([p.entity[e] for e in ent_names])[ent]
        + np.array([p.industry[i] for i in ind_names])[ind]
    )
    true_pd = _sigmoid(logit)
    default = rng.random(n) < true_pd

    return {
        "entity": ent, "industry": ind, "township": township, "app_m": app_m, "app_day": app_day,
        "reg_m": reg_m, "reg_day": reg_day, "capital": capital, "legal_rep_age": legal_rep_age,
        "property_count": property_count, "property_value": property_value, "has_mortgage": has_mortgage,
        "abnormal": abnormal, "penalties": penalties, "requested": requested, "true_pd": true_pd,
        "default": default, "general": general, "cal": cal, "health": health,
        "tax_present": tax_present, "ss_present": ss_present,
        "tax_forward": tax_on_file & ~hist, "ss_forward": ss_on_file & ~hist,
        "tax": {
            "declared_sales": declared, "vat_paid": vat, "income_tax_paid": income_tax,
            "invoice_count": invoice_count, "invoice_amount": invoice_amount, "filed_on_time": ~late,
            "zero_declaration": zero, "tax_arrears": arrears, "penalty_flag": penalty,
        },
        "ss": {
            "insured_headcount": headcount, "contribution_base": contribution_base,
            "contributions_paid": contributions, "arrears_flag": ss_arrears,
            "new_hires": new_hires, "separations": separations,
        },
    }  # fmt: skip


def _dates(m: np.ndarray, day: np.ndarray) -> pa.Array:
    first = np.asarray(month_to_date32(m).cast(pa.int32()))
    return pa.array((first + day - 1).astype(np.int32)).cast(pa.date32())


def applicant_ids(first_id: int, n: int) -> pa.Array:
    """The ids of `n` applicants from the `first_id`-th of a dataset on (1-based): C00000001, ..."""
    return pa.array([f"C{k:08d}" for k in range(first_id, first_id + n)], type=pa.string())


def monthly_tables(
    sim: dict[str, Any], ids: pa.Array, *, forward: bool = False, rows: np.ndarray | None = None
) -> dict[str, pa.Table]:
    """The monthly tables of a simulated chunk in the contract's long format: the history months
    (what `generate` writes) or, with `forward`, the months from the application month on (what
    `data.outcomes` plays forward). `rows` (a boolean mask over the chunk) keeps only those applicants."""

    def long(present: np.ndarray, columns: dict[str, np.ndarray], extra: dict[str, pa.Array]) -> pa.Table:
        if rows is not None:
            present = present & rows[:, None]
        r, steps = np.nonzero(present)  # row-major: sorted by applicant, then month
        out = {
            "applicant_id": pa.DictionaryArray.from_arrays(
                pa.array(r.astype(np.int32)), ids
            ).dictionary_decode(),
            "month": month_to_date32(sim["cal"][r, steps]),
        }
        out |= {k: v.take(pa.array(r)) for k, v in extra.items()}
        out |= {k: v[r, steps] for k, v in columns.items()}
        return pa.table(out)

    tax, ss = ("tax_forward", "ss_forward") if forward else ("tax_present", "ss_present")
    taxpayer = pa.array(np.where(sim["general"], "general", "small_scale").astype(object), type=pa.string())
    return {
        "tax_monthly": long(sim[tax], sim["tax"], {"taxpayer_type": taxpayer}),
        "social_security_monthly": long(sim[ss], sim["ss"], {}),
    }


def _chunk_tables(cfg: GeneratorConfig, sim: dict[str, Any], first_id: int) -> dict[str, pa.Table]:
    n = len(sim["entity"])
    ids = applicant_ids(first_id, n)
    ent_names, ind_names = list(cfg.entities), list(cfg.industries)
    applicants = pa.table({
        "applicant_id": ids,
        "entity_type": pa.array(np.array(ent_names, dtype=object)[sim["entity"]], type=pa.string()),
        "industry": pa.array(np.array(ind_names, dtype=object)[sim["industry"]], type=pa.string()),
        "township": pa.array(np.array([f"T{k + 1:02d}" for k in range(cfg.townships)], dtype=object)[sim["township"]]),
        "registration_date": _dates(sim["reg_m"], sim["reg_day"]),
        "registered_capital": sim["capital"],
        "legal_rep_age": sim["legal_rep_age"],
        "property_count": sim["property_count"],
        "property_value": sim["property_value"],
        "has_mortgage": sim["has_mortgage"],
        "abnormal_operation_flag": sim["abnormal"],
        "admin_penalties": sim["penalties"],
        "application_date": _dates(sim["app_m"], sim["app_day"]),
        "requested_amount": sim["requested"],
        "default_12m": sim["default"],
    })  # fmt: skip
    return {
        "applicants": applicants,
        **monthly_tables(sim, ids),
        TRUTH_TABLE: pa.table({"applicant_id": ids, "true_pd": sim["true_pd"]}),
    }


def generate(
    cfg: GeneratorConfig,
    *,
    n_applicants: int,
    seed: int,
    out: Path,
    drift: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate a county dataset folder; returns its manifest (content hash included)."""
    if n_applicants < 1:
        raise ValueError(f"n_applicants must be >= 1, got {n_applicants=}")
    contract = load_contract(cfg.contract)
    meta = {
        "source": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "applicants": n_applicants,
        "drift": drift,
        "generator_config": cfg.model_dump(mode="json"),
    }
    with (
        DatasetWriter(
            out, contract=contract, extra_tables={TRUTH_TABLE: TRUTH_SCHEMA}, overwrite=overwrite
        ) as writer,
        Progress(disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task("generating county", total=n_applicants)
        for chunk, start in enumerate(range(0, n_applicants, cfg.chunk_size)):
            n = min(cfg.chunk_size, n_applicants - start)
            sim = simulate_chunk(cfg, seed=seed, chunk=chunk, n=n, drift=drift)
            for table, arrow in _chunk_tables(cfg, sim, first_id=start + 1).items():
                writer.write(table, arrow)
            bar.advance(task, n)
        return writer.close(meta=meta)
