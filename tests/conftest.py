"""Shared fixtures: one tiny synthetic county per session, and PostgreSQL availability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from govrisk.data.features import FeatureBuilder, FeatureSet
from govrisk.data.store import Dataset, read_dataset
from govrisk.data.synthetic import generate, load_generator_config

# The PostgreSQL every machine runs (trust auth, database `test`); tests of PostgreSQL paths use it.
PG_URL = os.environ.get("GOVRISK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

TINY_APPLICANTS = 3000
TINY_SEED = 1
APPLICANT_KEY = b"test-only-applicant-key-" + b"1" * 32


def tiny_experiment(dataset: Path, kind: str, *, name: str, **params: object) -> dict:
    """An experiment dict over a given county with the shipped vintage split (tests import it)."""
    return {
        "name": name,
        "seed": 3,
        "data": {"dataset": str(dataset), "features": "county"},
        "split": {"kind": "vintage", "val_start": "2023-01", "oot_start": "2023-07"},
        "model": {"kind": kind, "params": params},
    }


@pytest.fixture(scope="session", autouse=True)
def _work_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Everything the code under test writes goes to a temporary work folder."""
    os.environ["GOVRISK_WORK"] = str(tmp_path_factory.mktemp("work"))
    # One integrity key for the session (manifests and the audit log), whatever work folder a test
    # points at; tests of the key's sources (tests/test_integrity.py) unset it where they need to.
    os.environ["GOVRISK_MODEL_KEY"] = "test-only-integrity-key-" + "0" * 32
    # The applicant pseudonym key (govrisk.core.pseudonym): servers and the join commands need one.
    os.environ["GOVRISK_APPLICANT_KEY"] = APPLICANT_KEY.decode()


@pytest.fixture(scope="session")
def tiny_county_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny-county"
    generate(
        load_generator_config("county"), n_applicants=TINY_APPLICANTS, seed=TINY_SEED, out=out, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_county(tiny_county_path: Path) -> Dataset:
    return read_dataset(tiny_county_path)


@pytest.fixture(scope="session")
def tiny_features(tiny_county: Dataset) -> tuple[FeatureBuilder, FeatureSet]:
    builder = FeatureBuilder.from_config("county").fit(tiny_county.applicants, tiny_county.monthly)
    return builder, builder.transform(tiny_county.applicants, tiny_county.monthly)


def postgres_problem() -> str | None:
    """None when the PostgreSQL of PG_URL answers, else one line saying why not."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}".splitlines()[0]


def need_postgres() -> None:
    """Skip with the reason where no PostgreSQL answers; under CI=true, fail instead."""
    problem = postgres_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {problem}")
        pytest.skip(f"no PostgreSQL at {PG_URL}: {problem}")
