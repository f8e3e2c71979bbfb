"""Shared features: the leakage guard, one-vs-batch equality, the schema round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from govrisk.core.schema import FEATURE_SCHEMA_VERSION, FeatureSchema
from govrisk.data.features import FeatureBuilder, FeatureSet, month_number
from govrisk.data.months import month_of, months_since_1970
from govrisk.data.store import Dataset


def _records_of(ds: Dataset, ids: list[str]) -> dict[str, pd.DataFrame]:
    return {t: df[df.applicant_id.isin(ids)].reset_index(drop=True) for t, df in ds.monthly.items()}


def _assert_same(a: FeatureSet, b: FeatureSet) -> None:
    assert np.array_equal(a.sequence, b.sequence)
    assert np.array_equal(a.static, b.static)
    pd.testing.assert_frame_equal(a.raw.reset_index(drop=True), b.raw.reset_index(drop=True))


def test_shapes_match_the_schema(tiny_features) -> None:
    builder, fs = tiny_features
    schema = builder.schema()
    n = len(fs)
    assert fs.sequence.shape == (n, builder.config.lookback_months, len(schema.sequence_channels))
    assert fs.static.shape == (n, len(schema.static_features))
    assert list(fs.raw.columns) == schema.raw_features
    assert fs.sequence.dtype == np.float32 and fs.static.dtype == np.float32
    assert np.isfinite(fs.sequence).all() and np.isfinite(fs.static).all()
    assert set(np.unique(fs.labels)) == {0.0, 1.0}


def test_leakage_guard_ignores_records_in_and_after_the_application_month(tiny_county, tiny_features) -> None:
    builder, _ = tiny_features
    a = tiny_county.applicants.iloc[:50].reset_index(drop=True)
    monthly = _records_of(tiny_county, list(a.applicant_id))
    before = builder.transform(a, monthly)

    # Poison: a record dated in the application month and one a year after, with extreme values.
    app_month = pd.to_datetime(a.application_date).dt.to_period("M").dt.to_timestamp()
    tax = monthly["tax_monthly"]
    template = (
        tax.groupby("applicant_id").head(1).set_index("applicant_id").reindex(a.applicant_id).reset_index()
    )
    template["taxpayer_type"] = template["taxpayer_type"].fillna("general")
    template = template.fillna(0)
    poison = []
    for offset in (0, 12):
        p = template.copy()
        p["month"] = (app_month + pd.DateOffset(months=offset)).to_numpy()
        p["declared_sales"] = 1e12
        p["filed_on_time"] = False
        p["tax_arrears"] = 1e9
        poison.append(p)
    poisoned = dict(monthly, tax_monthly=pd.concat([tax, *poison], ignore_index=True))
    _assert_same(before, builder.transform(a, poisoned))

    # Control: the same record one month before the application does reach the features.
    control = template.copy()
    control["month"] = (app_month - pd.DateOffset(months=1)).to_numpy()
    control["declared_sales"] = 1e12
    prev = tax[
        month_number(tax.month)
        == month_number(a.set_index("applicant_id").loc[tax.applicant_id, "application_date"]) - 1
    ]
    keep = tax.drop(prev.index)
    changed = builder.transform(a, dict(monthly, tax_monthly=pd.concat([keep, control], ignore_index=True)))
    assert not np.array_equal(before.sequence, changed.sequence)


def test_one_applicant_alone_equals_the_batch_bit_for_bit(tiny_county, tiny_features) -> None:
    builder, batch = tiny_features
    a = tiny_county.applicants
    with_tax = set(tiny_county.tables["tax_monthly"].applicant_id)
    no_records = a.index[~a.applicant_id.isin(with_tax)][:2].tolist()
    rows = [0, 1, 17, 1234, len(a) - 1, *no_records]
    for i in rows:
        one = a.iloc[[i]].reset_index(drop=True)
        single = builder.transform(one, _records_of(tiny_county, list(one.applicant_id)))
        assert np.array_equal(single.sequence[0], batch.sequence[i]), i
        assert np.array_equal(single.static[0], batch.static[i]), i
        assert np.array_equal(single.raw.to_numpy()[0], batch.raw.to_numpy()[i], equal_nan=True), i


def test_schema_round_trip_gives_identical_features(tmp_path: Path, tiny_county, tiny_features) -> None:
    builder, batch = tiny_features
    path = builder.save(tmp_path / "feature_schema.json")
    served = FeatureBuilder.from_schema(path)
    _assert_same(batch, served.transform(tiny_county.applicants, tiny_county.monthly))


def test_a_schema_with_reordered_raw_features_is_refused(tmp_path: Path, tiny_county, tiny_features) -> None:
    builder, _ = tiny_features
    schema = json.loads(builder.save(tmp_path / "feature_schema.json").read_text())
    first, second = schema["fitted"]["raw_features"][:2]
    schema["fitted"]["raw_features"][:2] = [second, first]
    served = FeatureBuilder.from_schema(schema)
    with pytest.raises(
        ValueError, match=rf"position 0 is '{re.escape(second)}', expected '{re.escape(first)}'"
    ):
        served.transform(tiny_county.applicants, tiny_county.monthly)


def test_unknown_categories_fall_into_the_unknown_bucket(tiny_county, tiny_features) -> None:
    builder, _ = tiny_features
    a = tiny_county.applicants.iloc[:3].copy()
    a["township"] = "T-never-seen"
    fs = builder.transform(a, _records_of(tiny_county, list(a.applicant_id)))
    names = builder.schema().static_features
    assert (fs.static[:, names.index("township=__unknown__")] == 1).all()
    assert (fs.raw["township"] == -1).all()


def test_duplicate_month_is_refused_with_the_applicant(tiny_county, tiny_features) -> None:
    builder, _ = tiny_features
    a = tiny_county.applicants.iloc[:20].reset_index(drop=True)
    monthly = _records_of(tiny_county, list(a.applicant_id))
    tax = monthly["tax_monthly"]
    dup = pd.concat([tax, tax.iloc[[-1]]], ignore_index=True)
    with pytest.raises(ValueError, match=tax.applicant_id.iloc[-1]):
        builder.transform(a, dict(monthly, tax_monthly=dup))


def test_lookback_of_36_months_and_transforms_fitted_on_training_rows_only(tiny_county) -> None:
    a = tiny_county.applicants
    builder36 = FeatureBuilder.from_config("county", lookback_months=36, windows=[3, 12, 36])
    fs = builder36.fit(a.iloc[:1000], tiny_county.monthly).transform(a, tiny_county.monthly)
    assert fs.sequence.shape[1] == 36
    assert "tax_monthly.declared_sales__mean_36m" in fs.raw.columns
    refit = FeatureBuilder.from_config("county", lookback_months=36, windows=[3, 12, 36]).fit(
        a, tiny_county.monthly
    )
    assert (
        builder36.fitted["numeric"] != refit.fitted["numeric"]
    )  # statistics come from the rows given to fit


def test_bad_feature_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="lookback_months"):
        FeatureBuilder.from_config("county", lookback_months=48)
    with pytest.raises(ValueError, match="windowz"):
        FeatureBuilder.from_config("county", windowz=[3])
    with pytest.raises(ValueError, match="not a numeric monthly column"):
        FeatureBuilder.from_config(
            "county",
            ratios=[
                {"name": "x", "numerator": "tax_monthly.nope", "denominator": "property_value", "window": 3}
            ],
        )


def test_taiwan_features(tmp_path: Path) -> None:
    from govrisk.data.store import read_dataset
    from govrisk.data.taiwan import import_taiwan

    import_taiwan(Path("data/real/taiwan/UCI_Credit_Card.csv"), out=tmp_path / "tw")
    ds = read_dataset(tmp_path / "tw")
    fs = (
        FeatureBuilder.from_config("taiwan")
        .fit(ds.applicants, ds.monthly)
        .transform(ds.applicants, ds.monthly)
    )
    assert fs.sequence.shape == (30_000, 6, 4)  # presence + three statement columns
    assert fs.raw["statements.repayment_status__last"].iloc[0] == 2  # ID 1: PAY_0 = 2
    assert abs(fs.labels.mean() - 0.2212) < 1e-4


def test_batch_size_never_changes_a_value(tiny_county, tiny_features) -> None:
    builder, batch = tiny_features
    small = FeatureBuilder.from_schema(builder.schema())
    small.batch_size = 7
    _assert_same(batch, small.transform(tiny_county.applicants, tiny_county.monthly))


# --- the typed feature schema ------------------------------------------------------------------------
def test_schema_is_typed_and_its_file_keeps_the_format(tmp_path: Path, tiny_features) -> None:
    """`schema()` is a FeatureSchema whose file is, byte for byte, the dict the builder always wrote
    (keys in this order, feature lists unsorted): models registered before the type still load, and
    their schema digests (which decide whether champion and challenger share a transform) still match."""
    builder, _ = tiny_features
    schema = builder.schema()
    assert isinstance(schema, FeatureSchema)
    fitted = builder.fitted
    legacy = {
        "schema_version": FEATURE_SCHEMA_VERSION,
        "config": builder.config.model_dump(mode="json"),
        "contract": builder.contract.model_dump(mode="json"),
        "fitted": fitted,
        "sequence_channels": fitted["sequence_channels"],
        "static_features": fitted["static_features"],
        "raw_features": fitted["raw_features"],
        "categorical_raw": sorted(fitted["vocab"]),
    }
    text = builder.save(tmp_path / "feature_schema.json").read_text()
    assert text == json.dumps(legacy, indent=1) + "\n" == schema.to_json()
    loaded = FeatureSchema.load(tmp_path / "feature_schema.json")
    assert loaded == schema and loaded.to_json() == text
    assert loaded.raw_features == list(fitted["raw_features"]) and loaded.categorical_raw == sorted(
        fitted["vocab"]
    )


def test_from_schema_takes_the_model_its_json_or_a_path(tmp_path: Path, tiny_county, tiny_features) -> None:
    builder, _ = tiny_features
    path = builder.save(tmp_path / "feature_schema.json")
    a = tiny_county.applicants.iloc[:40].reset_index(drop=True)
    monthly = _records_of(tiny_county, list(a.applicant_id))
    want = builder.transform(a, monthly)
    for given in (builder.schema(), json.loads(path.read_text()), path, str(path)):
        served = FeatureBuilder.from_schema(given)
        assert served.schema() == builder.schema()
        _assert_same(want, served.transform(a, monthly))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": FEATURE_SCHEMA_VERSION + 1}, "feature schema version"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"raw_features": "not a list"}, "raw_features"),
    ],
)
def test_a_schema_of_another_format_is_refused(tiny_features, change: dict, message: str) -> None:
    builder, _ = tiny_features
    text = builder.schema().to_json()
    with pytest.raises(ValueError, match=message):
        FeatureBuilder.from_schema(json.loads(text) | change)
    with pytest.raises(ValueError, match=message):
        FeatureSchema.from_json(json.dumps(json.loads(text) | change))


def test_a_schema_missing_a_key_is_refused(tiny_features) -> None:
    builder, _ = tiny_features
    data = json.loads(builder.schema().to_json())
    del data["fitted"]
    with pytest.raises(ValueError, match="fitted"):
        FeatureBuilder.from_schema(data)


# --- month arithmetic ------------------------------------------------------------------------------
def test_month_arithmetic_has_one_answer() -> None:
    """The scalar form (request parser) and the array form (features, training, monitoring) count the
    same months from the same epoch."""
    import datetime as dt

    from govrisk.serving.request import RequestParser

    years, months = np.meshgrid(np.arange(1900, 2101), np.arange(1, 13), indexing="ij")
    dates = np.array(
        [f"{y:04d}-{m:02d}-15" for y, m in zip(years.ravel(), months.ravel(), strict=True)],
        dtype="datetime64[D]",
    )
    vector = month_number(dates)
    assert vector.tolist() == [
        months_since_1970(int(y), int(m)) for y, m in zip(years.ravel(), months.ravel(), strict=True)
    ]
    assert vector.tolist() == [month_of(d) for d in dates.tolist()]
    assert months_since_1970(1970, 1) == 0 and month_of(dt.date(1969, 12, 31)) == -1
    assert month_number(pd.Series(["2024-03-01", "2024-03-31"])).tolist() == [months_since_1970(2024, 3)] * 2
    # the request parser's value-by-value check reads a month with the same count
    errors: list = []
    assert (
        RequestParser._month(None, "m", "2024-03", errors)
        == month_number(np.array(["2024-03"], "datetime64[M]"))[0]
    )
    assert not errors
