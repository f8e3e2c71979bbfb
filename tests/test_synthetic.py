"""The synthetic county: determinism, contract conformance and the mechanisms the models rely on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from govrisk.data.describe import describe
from govrisk.data.features import month_number
from govrisk.data.store import read_dataset, read_table, verify_hash
from govrisk.data.synthetic import generate, load_generator_config, simulate_chunk
from govrisk.data.validate import validate_dataset


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    cfg = load_generator_config("county")
    a = generate(cfg, n_applicants=1500, seed=3, out=tmp_path / "a", progress=False)
    b = generate(cfg, n_applicants=1500, seed=3, out=tmp_path / "b", progress=False)
    c = generate(cfg, n_applicants=1500, seed=4, out=tmp_path / "c", progress=False)
    assert a["content_hash"] == b["content_hash"]
    assert a["content_hash"] != c["content_hash"]
    for name in ("applicants", "tax_monthly", "social_security_monthly", "truth"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (
            tmp_path / "b" / f"{name}.parquet"
        ).read_bytes()
    assert verify_hash(tmp_path / "a") == a["content_hash"]


def test_generated_county_passes_its_contract(tiny_county_path: Path) -> None:
    report = validate_dataset(tiny_county_path)
    assert report.ok, report.errors[:5]


def test_records_stop_before_the_application_month(tiny_county) -> None:
    a = tiny_county.applicants.set_index("applicant_id")
    for table, df in tiny_county.monthly.items():
        lag = month_number(a.loc[df.applicant_id, "application_date"]) - month_number(df.month)
        assert lag.min() >= 1, table
        assert lag.max() <= 36, table


def test_small_scale_taxpayers_file_quarterly(tiny_county) -> None:
    tax = tiny_county.tables["tax_monthly"]
    small = tax[tax.taxpayer_type == "small_scale"]
    general = tax[tax.taxpayer_type == "general"]
    assert len(small) and len(general)
    assert set(pd.to_datetime(small.month).dt.month.unique()) <= {3, 6, 9, 12}
    assert len(set(pd.to_datetime(general.month).dt.month.unique())) == 12


def test_farms_and_individuals_have_sparse_employer_records(tiny_county) -> None:
    a = tiny_county.applicants
    with_ss = set(tiny_county.tables["social_security_monthly"].applicant_id)
    share = a.assign(ss=a.applicant_id.isin(with_ss)).groupby("entity_type").ss.mean()
    assert share["individual"] == 0.0
    assert share["family_farm"] < 0.15
    assert share["micro_enterprise"] > 0.8


def test_thin_files_and_missing_months_exist(tiny_county) -> None:
    a = tiny_county.applicants
    tax = tiny_county.tables["tax_monthly"]
    months_on_file = tax.groupby("applicant_id").size().reindex(a.applicant_id, fill_value=0)
    assert (months_on_file == 0).mean() > 0.01  # no tax file at all
    assert ((months_on_file > 0) & (months_on_file < 12)).mean() > 0.05  # thin files


def test_stress_shows_in_records_of_defaulters(tiny_county) -> None:
    a = tiny_county.applicants.set_index("applicant_id")
    tax = tiny_county.tables["tax_monthly"]
    lag = month_number(a.loc[tax.applicant_id, "application_date"]) - month_number(tax.month)
    recent = tax[lag <= 6]
    stress = (
        (~recent.filed_on_time | recent.zero_declaration | (recent.tax_arrears > 0))
        .groupby(recent.applicant_id)
        .mean()
    )
    bad = a.loc[stress.index, "default_12m"].to_numpy()
    assert stress[bad].mean() > 1.3 * stress[~bad].mean()


def test_true_pd_drives_defaults_and_drift_raises_risk() -> None:
    cfg = load_generator_config("county")
    base = simulate_chunk(cfg, seed=5, chunk=0, n=20000)
    drifted = simulate_chunk(cfg, seed=5, chunk=0, n=20000, drift=True)
    assert abs(base["default"].mean() - base["true_pd"].mean()) < 0.01
    assert drifted["true_pd"].mean() > base["true_pd"].mean() * 1.2


def test_shock_year_raises_herb_defaults(tiny_county_path: Path) -> None:
    a = read_table(tiny_county_path, "applicants")
    truth = read_table(tiny_county_path, "truth").set_index("applicant_id").true_pd
    herbs = a[a.industry == "tcm_herbs"].assign(pd_=lambda d: truth.reindex(d.applicant_id).to_numpy())
    year = pd.to_datetime(herbs.application_date).dt.year
    assert herbs[year == 2022].pd_.mean() > herbs[year == 2021].pd_.mean()


def test_bad_generator_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="chunk_sizes"):
        load_generator_config("county", chunk_sizes=10)
    with pytest.raises(ValueError, match="persistence"):
        load_generator_config("county", health={"persistence": 1.5})


def test_refuses_to_overwrite_an_existing_dataset(tmp_path: Path) -> None:
    cfg = load_generator_config("county")
    generate(cfg, n_applicants=1000, seed=1, out=tmp_path / "d", progress=False)
    before = (tmp_path / "d" / "manifest.json").read_text()
    with pytest.raises(FileExistsError):
        generate(cfg, n_applicants=1000, seed=2, out=tmp_path / "d", progress=False)
    assert (tmp_path / "d" / "manifest.json").read_text() == before


@pytest.mark.slow
def test_realism_targets_at_100k(tmp_path: Path) -> None:
    generate(
        load_generator_config("county"), n_applicants=100_000, seed=7, out=tmp_path / "c", progress=False
    )
    report = describe(tmp_path / "c")
    failed = {k: v for k, v in report["realism"].items() if not v["ok"]}
    assert not failed, failed
    assert read_dataset(tmp_path / "c").applicants.shape[0] == 100_000
