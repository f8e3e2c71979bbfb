"""The WOE logistic scorecard on a small synthetic county: learning, scaling, reason codes, ONNX parity."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from govrisk.core.config import config_path
from govrisk.core.onnx import OnnxParityError
from govrisk.data.features import FeatureBuilder, FeatureSet
from govrisk.data.store import read_dataset
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.training.scorecard import (
    Scorecard,
    ScorecardConfig,
    export_scorecard,
    load_scorecard_config,
    reasons_from_points,
)

CUTOFF = pd.Timestamp("2023-01-01")  # train on applications before, hold out those after


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureBuilder, FeatureSet, FeatureSet]:
    out = tmp_path_factory.mktemp("scorecard") / "county"
    generate(load_generator_config("county"), n_applicants=3000, seed=1, out=out, progress=False)
    ds = read_dataset(out)
    a = ds.applicants
    tr, te = a[a["application_date"] < CUTOFF], a[a["application_date"] >= CUTOFF]
    builder = FeatureBuilder.from_config("county").fit(tr, _records_of(ds.monthly, tr))
    return (
        builder,
        builder.transform(tr, _records_of(ds.monthly, tr)),
        builder.transform(te, _records_of(ds.monthly, te)),
    )


def _records_of(monthly: dict[str, pd.DataFrame], applicants: pd.DataFrame) -> dict[str, pd.DataFrame]:
    ids = set(applicants["applicant_id"])
    return {t: df[df["applicant_id"].isin(ids)] for t, df in monthly.items()}


@pytest.fixture(scope="module")
def config() -> ScorecardConfig:
    return load_scorecard_config()


@pytest.fixture(scope="module")
def card(county, config: ScorecardConfig) -> Scorecard:
    builder, train, _ = county
    return Scorecard.fit(
        train.raw,
        train.labels,
        categorical=builder.fitted["categorical"],
        config=config,
        vocabulary=builder.fitted["vocab"],
    )


def _onnx_run(card: Scorecard, raw: pd.DataFrame, input_dtype: str = "float64") -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(
        card.to_onnx(input_dtype=input_dtype).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = raw[card.raw_features].to_numpy(dtype=np.float64 if input_dtype == "float64" else np.float32)
    return dict(zip(["pd", "score", "points"], sess.run(["pd", "score", "points"], {"raw": x}), strict=True))


def _awkward_rows(card: Scorecard, raw: pd.DataFrame) -> pd.DataFrame:
    """Real rows plus: every split point and the float just below it, NaN, ±inf, category -1 and a
    category never seen in training, each put into one characteristic of an otherwise real row."""
    base = raw.iloc[: min(200, len(raw))].reset_index(drop=True)
    edits = []
    for i, c in enumerate(card.selected):
        t = card.tables[c]
        values = [np.nan]
        if t.kind == "numeric":
            values += [np.inf, -np.inf, *t.splits, *np.nextafter(t.splits, -np.inf)]
        else:
            values += [-1.0, 999.0, *t.codes]
        for j, v in enumerate(values):
            row = base.iloc[(i + j) % len(base)].copy()
            row[c] = v
            edits.append(row)
    all_nan = base.iloc[0].copy()
    all_nan[card.selected] = np.nan
    return pd.concat([base, pd.DataFrame(edits), all_nan.to_frame().T], ignore_index=True).astype(np.float64)


def test_config_file_is_the_single_source_of_defaults() -> None:
    raw = yaml.safe_load(config_path("model", "scorecard").read_text())
    cfg = ScorecardConfig.model_validate(raw)
    assert (cfg.scaling.base_points, cfg.scaling.base_odds, cfg.scaling.pdo) == (600, 50, 20)
    assert cfg.binning.numeric_monotonic_trend == "auto_asc_desc" and cfg.reason_codes == 4
    with pytest.raises(ValueError, match="min_ivv"):
        ScorecardConfig.model_validate(raw | {"selection": raw["selection"] | {"min_ivv": 0.1}})
    with pytest.raises(ValueError, match="max_n_bins=30 exceeds max_n_prebins=20"):
        ScorecardConfig.model_validate(
            raw | {"binning": raw["binning"] | {"max_n_bins": 30, "max_n_prebins": 20}}
        )


def test_learns_and_ranks_held_out_applicants(card: Scorecard, county) -> None:
    _, train, test = county
    auc = roc_auc_score(test.labels, card.predict_proba(test.raw))
    assert auc > 0.7, f"held-out AUC {auc:.3f}"
    assert 1 <= len(card.selected) <= card.config.selection.max_features
    assert (card.coef < 0).all(), "higher WOE (safer bin) must lower the PD"
    assert card.summary.loc[card.selected, "iv"].min() >= card.config.selection.min_iv
    pd_ = card.predict_proba(test.raw)
    assert pd_.dtype == np.float64 and pd_.shape == (len(test),) and ((pd_ > 0) & (pd_ < 1)).all()
    # Calibrated in the large on its own training data, as an unweighted logistic fit must be.
    assert card.predict_proba(train.raw).mean() == pytest.approx(train.labels.mean(), rel=0.02)


def test_points_scaling(card: Scorecard, county) -> None:
    _, _, test = county
    raw = test.raw.iloc[:300]
    assert card.points_for_odds(50.0) == pytest.approx(600.0)
    assert card.points_for_odds(100.0) - card.points_for_odds(50.0) == pytest.approx(20.0)
    pd_ = card.predict_proba(raw)
    np.testing.assert_allclose(card.points(raw), 600 + 20 * np.log2((1 - pd_) / pd_ / 50), atol=1e-8)
    np.testing.assert_allclose(card.characteristic_points(raw).sum(axis=1), card.points(raw), atol=1e-9)

    # Move the intercept so that applicant 0 sits at exactly 50:1, then double their odds.
    at50 = copy.deepcopy(card)
    at50.intercept += -math.log(50.0) - card.logit(raw.iloc[:1])[0]
    assert at50.predict_proba(raw.iloc[:1])[0] == pytest.approx(1 / 51, rel=1e-12)
    assert at50.points(raw.iloc[:1])[0] == pytest.approx(600.0, abs=1e-9)
    assert _onnx_run(at50, raw.iloc[:1])["score"][0] == pytest.approx(600.0, abs=1e-9)
    at100 = copy.deepcopy(at50)
    at100.intercept -= math.log(2.0)
    assert at100.points(raw.iloc[:1])[0] == pytest.approx(620.0, abs=1e-9)


def test_reason_codes_are_the_largest_shortfalls(card: Scorecard, county) -> None:
    _, _, test = county
    raw = test.raw
    s = card.config.scaling
    factor, offset, K = (
        s.pdo / math.log(2),
        s.base_points - s.pdo / math.log(2) * math.log(s.base_odds),
        len(card.selected),
    )
    # Points computed here from optbinning's WOE and the fitted coefficients alone.
    indep = pd.DataFrame(
        {
            c: -(
                card.coef[j]
                * card.binnings[c].transform(raw[c].to_numpy(), metric="woe", metric_missing="empirical")
                + card.intercept / K
            )
            * factor
            + offset / K
            for j, c in enumerate(card.selected)
        }
    )
    np.testing.assert_allclose(card.characteristic_points(raw).to_numpy(), indep.to_numpy(), atol=1e-9)
    table = card.table()
    best = table[table["count"] > 0].groupby("characteristic")["points"].max()[card.selected]
    np.testing.assert_allclose(
        [r["max_points"] for r in card.reason_code_table()], best.to_numpy(), atol=1e-9
    )

    shortfall = best.to_numpy()[None, :] - indep.to_numpy()
    reasons = card.reason_codes(raw, k=4)
    assert len(reasons) == len(raw)
    for i, got in enumerate(reasons):
        assert len(got) <= 4
        if shortfall[i].max() > 1e-9:
            assert got[0] == card.selected[int(np.argmax(shortfall[i]))]
            gaps = [shortfall[i, card.selected.index(c)] for c in got]
            assert all(g > 0 for g in gaps) and gaps == sorted(gaps, reverse=True)
        else:
            assert got == []
    assert len({r[0] for r in reasons if r}) > 1, "the top reason should vary across applicants"

    # Serving: the ONNX points output plus the JSON table give the same reasons.
    served = reasons_from_points(
        _onnx_run(card, raw)["points"], json.loads(json.dumps(card.reason_code_table())), 4
    )
    assert served == reasons


@pytest.mark.parametrize("unknown_category", ["category", "missing"])
def test_onnx_parity_on_real_and_awkward_rows(
    unknown_category: str, card: Scorecard, county, config, tmp_path: Path
) -> None:
    builder, train, test = county
    if unknown_category != config.binning.unknown_category:
        cfg = config.model_copy(
            update={"binning": config.binning.model_copy(update={"unknown_category": unknown_category})}
        )
        card = Scorecard.fit(train.raw, train.labels, categorical=builder.fitted["categorical"], config=cfg)
    assert set(card.selected) & set(card.categorical), "parity must cover a categorical characteristic"
    rows = pd.concat([test.raw, _awkward_rows(card, test.raw)], ignore_index=True)

    # The edge rows are real tests of [a, b) bins: at a split the WOE differs from just below it.
    t = next(
        card.tables[c]
        for c in card.selected
        if card.tables[c].kind == "numeric" and len(card.tables[c].splits)
    )
    assert not np.array_equal(t.apply(t.splits), t.apply(np.nextafter(t.splits, -np.inf)))

    report = export_scorecard(card, tmp_path / "scorecard.onnx", rows)
    assert report["rows"] == len(rows) and report["max_abs_diff"] <= 1e-12
    out = _onnx_run(card, rows)
    np.testing.assert_allclose(out["pd"], card.predict_proba(rows), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["score"], card.points(rows), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["points"], card.characteristic_points(rows).to_numpy(), rtol=0, atol=1e-9)
    # float32 input: the graph widens to float64, so it equals Python on the float32-rounded values.
    narrowed = rows.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(
        _onnx_run(card, rows, "float32")["pd"], card.predict_proba(narrowed), rtol=0, atol=1e-12
    )

    model = card.to_onnx()
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["govrisk.raw_features"]) == list(train.raw.columns)
    assert json.loads(meta["govrisk.reason_code_table"]) == card.reason_code_table()
    assert model.opset_import[0].version == 17


def test_tampered_threshold_breaks_parity(card: Scorecard, county, tmp_path: Path) -> None:
    _, _, test = county
    rows = _awkward_rows(card, test.raw)
    tampered = copy.deepcopy(card)
    # The split whose bins differ most in points, so that the move shows well beyond atol.
    _, name, k = max(
        (abs(card.coef[j] * np.diff(card.tables[c].woe)[k]), c, k)
        for j, c in enumerate(card.selected)
        for k in range(len(card.tables[c].splits))
    )
    # The smallest possible move: only a value exactly at the split changes bin ([a, b) -> (a, b]).
    tampered.tables[name].splits[k] = np.nextafter(tampered.tables[name].splits[k], np.inf)
    path = tmp_path / "tampered.onnx"
    with pytest.raises(OnnxParityError, match=r"scorecard pd: ONNX vs reference max \|Δ\| = .* at row \d+"):
        export_scorecard(tampered, path, rows)
    assert not path.exists(), "a model that fails parity must not be written"
    assert export_scorecard(card, path, rows)["max_abs_diff"] <= 1e-12


def test_table_is_the_scorecard(card: Scorecard, county) -> None:
    _, train, _ = county
    table = card.table()
    assert list(table.columns) == [
        "characteristic",
        "bin",
        "count",
        "count_share",
        "event_rate",
        "woe",
        "iv",
        "coefficient",
        "points",
    ]
    assert list(dict.fromkeys(table["characteristic"])) == card.selected
    assert (table.groupby("characteristic")["count"].sum() == len(train)).all()
    # Every applicant's points are one row of the table.
    cp = card.characteristic_points(train.raw.iloc[:500])
    for c in card.selected:
        assert np.isin(cp[c].round(9), table.loc[table["characteristic"] == c, "points"].round(9)).all(), c
    cats = table[table["characteristic"].isin(card.categorical)]
    assert cats["bin"].str.contains("not seen in training").any()


def test_bad_inputs_are_refused(card: Scorecard, county, config: ScorecardConfig) -> None:
    builder, train, _ = county
    y = train.labels.copy()
    y[3] = 2
    with pytest.raises(ValueError, match="0/1, got 2 at row 3"):
        Scorecard.fit(train.raw, y, categorical=builder.fitted["categorical"], config=config)
    with pytest.raises(ValueError, match="categorical columns not in train: \\['nope'\\]"):
        Scorecard.fit(train.raw, train.labels, categorical=["nope"], config=config)
    with pytest.raises(ValueError, match=card.selected[0]):
        card.predict_proba(train.raw.drop(columns=[card.selected[0]]))


def test_single_bin_characteristic_and_unseen_categories_in_the_graph(
    config: ScorecardConfig, tmp_path: Path
) -> None:
    """Hand-made data: `filed` has one value (its only signal is being missing), so its graph path is
    the single-bin one; `sector` is categorical and scored below with a code it never saw (7)."""
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.2).astype(np.float64)
    sector = rng.choice([0.0, 1.0, 2.0, -1.0], size=n)
    raw = pd.DataFrame(
        {
            "income": rng.normal(50 - 10 * y, 15),
            "filed": np.where(rng.random(n) < np.where(y == 1, 0.5, 0.1), np.nan, 1.0),
            "sector": np.where((y == 1) & (rng.random(n) < 0.4), 2.0, sector),
        }
    )
    card = Scorecard.fit(raw, y, categorical=["sector"], config=config)
    assert {"filed", "sector"} <= set(card.selected) and len(card.tables["filed"].splits) == 0
    odd = pd.DataFrame(
        {"income": [np.nan, 50.0, 50.0], "filed": [1.0, np.nan, 7.0], "sector": [7.0, np.nan, -1.0]}
    )
    check = pd.concat([raw, odd], ignore_index=True)
    assert export_scorecard(card, tmp_path / "m.onnx", check)["max_abs_diff"] <= 1e-12
    np.testing.assert_allclose(
        _onnx_run(card, check)["points"], card.characteristic_points(check).to_numpy(), atol=1e-9
    )
