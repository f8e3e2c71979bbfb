"""Outcomes of applications: what happened after the decision, and the format they are joined in.

The outcomes format is one row per application, the way a lender's own repayment data can be
brought in too (a Parquet or CSV file with these columns, joined to the decision log):

| column | type | meaning |
|---|---|---|
| `applicant_hash` | string, 64 lower-case hex | HMAC-SHA256 of the applicant id under the secret applicant key, as the decision log stores it |
| `application_date` | date | the application it belongs to (an applicant may apply more than once) |
| `observation_date` | date | the date up to which repayment was observed |
| `default_12m` | bool (or 0/1) | defaulted within 12 months of the application month, as of the observation date |

An outcome is mature (usable as a label) when it is a default, or when it was observed at least
the outcome window (12 months) after the application month; a non-default observed earlier may
still default and is left out of any report (see `mature`).

The synthetic county can produce outcomes itself (`play_forward`): every dataset manifest records
the generator config, the seed and the drift flag, and `simulate_chunk` already simulates
`forward_months` months after the application from the same random stream. Replaying the chunks
that hold the wanted applicants gives their later monthly records, in the contract's format, and
the default flag the dataset's label was drawn with from the true PD; the replay is checked against
the dataset (label and true PD) before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from govrisk.core.pseudonym import pseudonym_functions
from govrisk.data.contract import Contract
from govrisk.data.store import DatasetWriter, read_manifest, read_table
from govrisk.data.synthetic import (
    GENERATOR_VERSION,
    TRUTH_TABLE,
    GeneratorConfig,
    applicant_ids,
    monthly_tables,
    simulate_chunk,
)

OUTCOMES_TABLE = "outcomes"
OUTCOME_COLUMNS = ("applicant_hash", "application_date", "observation_date", "default_12m")
OUTCOMES_SCHEMA = pa.schema([
    pa.field("applicant_hash", pa.string()),
    pa.field("application_date", pa.date32()),
    pa.field("observation_date", pa.date32()),
    pa.field("default_12m", pa.bool_()),
])  # fmt: skip
_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_SHOWN = 5  # problems listed per error message


class OutcomesError(ValueError):
    """An outcomes file or folder that breaks the format; the message names each field and value."""


def months_later(dates: pd.Series | np.ndarray, months: int) -> np.ndarray:
    """The first day of the month `months` after each date's month, as datetime64[D]."""
    m = np.asarray(pd.to_datetime(pd.Series(dates)).to_numpy().astype("datetime64[M]")) + months
    return m.astype("datetime64[D]")


# --- the synthetic county, played forward ---------------------------------------------------------


def _generator_config(dataset: Path, manifest: dict[str, Any]) -> GeneratorConfig:
    meta = manifest.get("meta", {})
    if meta.get("source") != "synthetic":
        raise ValueError(
            f"{dataset}: meta.source is {meta.get('source')!r}, not 'synthetic': only a generated county can "
            "be played forward; bring a lender's own outcomes in the outcomes format instead"
        )
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(
            f"{dataset}: generator_version {meta.get('generator_version')!r} != {GENERATOR_VERSION!r} "
            "of this code: its random stream cannot be replayed"
        )
    return GeneratorConfig.model_validate(meta["generator_config"])


def play_forward(
    dataset: Path,
    *,
    out: Path,
    hash_of: Callable[[str], str],
    applications: pd.DataFrame | None = None,
    window_months: int = 12,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Outcomes of a synthetic county's applicants, written as a dataset folder at `out`.

    `applications` (columns `applicant_hash`, `application_date`: the decisions to follow, e.g. read
    from the decision log) picks the applicants; None takes every applicant of the dataset.
    `hash_of` is the serving pseudonym of an applicant id (a `govrisk.core.pseudonym.Pseudonymizer`:
    HMAC-SHA256 under the applicant key, earlier keys accepted). The folder holds the matched
    `applicants` rows, the forward months of every monthly table (contract format) and the
    `outcomes` table; its manifest says how many applications matched. Returns the manifest."""
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    cfg = _generator_config(dataset, manifest)
    contract = Contract.model_validate(manifest["contract_spec"])
    key, date_col, label = contract.key, contract.applicants.application_date, contract.applicants.label
    seed, drift = int(manifest["meta"]["seed"]), bool(manifest["meta"]["drift"])

    applicants = read_table(dataset, "applicants")
    ids = [str(k) for k in applicants[key]]
    # the pseudonym of each applicant under each accepted key (current first; earlier keys after a
    # rotation), so a decision logged under any of them is found; outcomes carry the logged hash
    functions = pseudonym_functions(hash_of)
    hashes = np.array([functions[0](i) for i in ids], dtype=object)
    app_dates = applicants[date_col].to_numpy().astype("datetime64[D]")
    if applications is None:
        positions = np.arange(len(applicants))
        unmatched = 0
    else:
        missing = [c for c in ("applicant_hash", "application_date") if c not in applications.columns]
        if missing:
            raise ValueError(f"applications: missing columns {missing}")
        wanted = applications[["applicant_hash", "application_date"]].drop_duplicates()
        wanted_dates = pd.to_datetime(wanted["application_date"]).to_numpy().astype("datetime64[D]")
        every = [hashes, *(np.array([f(i) for i in ids], dtype=object) for f in functions[1:])]
        index = pd.MultiIndex.from_arrays([np.concatenate(every), np.tile(app_dates, len(every))])
        found = index.get_indexer(
            pd.MultiIndex.from_arrays([wanted["applicant_hash"].to_numpy(), wanted_dates])
        )
        logged = wanted["applicant_hash"].to_numpy()[found >= 0]
        # one outcome per application, under the hash it was (first) logged with, whichever key made it
        positions, first = np.unique(found[found >= 0] % max(len(ids), 1), return_index=True)
        hashes[positions] = logged[first]
        unmatched = int((found < 0).sum())
        if len(positions) == 0:
            raise ValueError(
                f"none of the {len(wanted):,} logged applications is in {dataset} (matched on the keyed "
                "applicant hash and the application date): another dataset, or another applicant key "
                "(GOVRISK_APPLICANT_KEY / _FILE; earlier keys: GOVRISK_APPLICANT_KEY_OLD_FILE) than the server's?"
            )

    truth = read_table(dataset, TRUTH_TABLE)["true_pd"].to_numpy()
    labels = applicants[label].to_numpy().astype(bool)
    forward: dict[str, list[pa.Table]] = {}
    chunks = positions // cfg.chunk_size
    for chunk in np.unique(chunks):
        start = int(chunk) * cfg.chunk_size
        n = min(cfg.chunk_size, len(applicants) - start)
        sim = simulate_chunk(cfg, seed=seed, chunk=int(chunk), n=n, drift=drift)
        # The replay must be the dataset: the same label and true PD for every applicant of the chunk.
        if not (
            np.array_equal(sim["default"], labels[start : start + n])
            and np.array_equal(sim["true_pd"], truth[start : start + n])
        ):
            raise ValueError(
                f"{dataset}: replaying chunk {chunk} (seed {seed}, drift {drift}) does not reproduce the "
                "dataset's labels and true PDs; was it generated by other code or edited?"
            )
        rows = np.zeros(n, dtype=bool)
        rows[positions[chunks == chunk] - start] = True
        for table, arrow in monthly_tables(sim, applicant_ids(start + 1, n), forward=True, rows=rows).items():
            forward.setdefault(table, []).append(arrow)

    picked = applicants.iloc[positions].reset_index(drop=True)
    outcomes = pd.DataFrame({
        "applicant_hash": hashes[positions],
        "application_date": app_dates[positions],
        # The 12-month flag is known once the window has run: its observation date is its end.
        "observation_date": months_later(picked[date_col], window_months),
        "default_12m": labels[positions],
    })  # fmt: skip
    info = {
        "source": "outcomes",
        "dataset": str(dataset),
        "dataset_hash": manifest["content_hash"],
        "seed": seed,
        "drift": drift,
        "forward_months": cfg.forward_months,
        "outcome_window_months": window_months,
        "applications": len(positions),
        "unmatched_applications": unmatched,
    } | (meta or {})
    with DatasetWriter(out, contract=contract, extra_tables={OUTCOMES_TABLE: OUTCOMES_SCHEMA},
                       overwrite=overwrite) as writer:  # fmt: skip
        writer.write("applicants", picked)
        for table, parts in forward.items():  # a table with no forward record is written empty
            writer.write(table, pa.concat_tables(parts))
        writer.write(OUTCOMES_TABLE, outcomes)
        return writer.close(meta=info)


# --- reading and checking outcomes ----------------------------------------------------------------


def _problems(name: str, column: str, bad: np.ndarray, values: pd.Series, why: str) -> list[str]:
    rows = np.flatnonzero(bad)
    plain = [v.item() if isinstance(v, np.generic) else v for v in values.iloc[rows[:MAX_SHOWN]]]
    shown = [f"{name}: {column} row {r}: {why} (got {v!r})" for r, v in zip(rows, plain, strict=False)]
    if len(rows) > MAX_SHOWN:
        shown.append(f"{name}: {column}: ... and {len(rows) - MAX_SHOWN:,} more rows")
    return shown


def _dates(name: str, column: str, values: pd.Series, problems: list[str]) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values.astype(object), errors="coerce", format="mixed")
    problems += _problems(name, column, parsed.isna().to_numpy(), values, "is not a date")
    return parsed


def _flags(name: str, column: str, values: pd.Series, problems: list[str]) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) and values.notna().all():
        return values.astype(bool)
    number = pd.to_numeric(values, errors="coerce")
    ok = number.isin([0, 1]).to_numpy()
    problems += _problems(name, column, ~ok, values, "is not a default flag (0/1 or true/false)")
    return number.where(ok, 0).astype(bool)


def validate_outcomes(df: pd.DataFrame, *, name: str = "outcomes") -> pd.DataFrame:
    """The outcomes in a clean form (hash str, dates datetime64, flag bool), or OutcomesError listing
    every problem by column, row and value: missing columns, malformed hashes, dates that do not
    parse, flags that are not 0/1, an observation before its application, duplicate applications."""
    missing = [c for c in OUTCOME_COLUMNS if c not in df.columns]
    if missing:
        raise OutcomesError(
            f"{name}: missing columns {missing} (the outcomes format has {list(OUTCOME_COLUMNS)})"
        )
    df = df.reset_index(drop=True)
    problems: list[str] = []
    h = df["applicant_hash"]
    bad_hash = ~h.map(lambda v: isinstance(v, str) and bool(_HASH.match(v))).to_numpy(dtype=bool)
    problems += _problems(name, "applicant_hash", bad_hash, h, "is not a lower-case sha256 hex digest")
    app = _dates(name, "application_date", df["application_date"], problems)
    obs = _dates(name, "observation_date", df["observation_date"], problems)
    flag = _flags(name, "default_12m", df["default_12m"], problems)
    if not problems:
        before = (obs < app).to_numpy()
        problems += _problems(name, "observation_date", before, df["observation_date"],
                              "is before the application_date of its row")  # fmt: skip
        dup = pd.DataFrame({"h": h, "a": app}).duplicated().to_numpy()
        problems += _problems(name, "applicant_hash", dup, h, "a second outcome for the same application")
    if problems:
        raise OutcomesError("bad outcomes:\n  " + "\n  ".join(problems))
    return pd.DataFrame({
        "applicant_hash": h.astype(str).to_numpy(),
        "application_date": app.to_numpy().astype("datetime64[ns]"),
        "observation_date": obs.to_numpy().astype("datetime64[ns]"),
        "default_12m": flag.to_numpy(dtype=bool),
    })  # fmt: skip


def read_outcomes(path: Path) -> pd.DataFrame:
    """Outcomes from an outcomes folder (`govrisk data outcomes`) or a Parquet / CSV file in the
    outcomes format, validated (`validate_outcomes`)."""
    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        if OUTCOMES_TABLE not in manifest["tables"]:
            raise OutcomesError(f"{path}: a dataset folder without an {OUTCOMES_TABLE!r} table")
        file = path / manifest["tables"][OUTCOMES_TABLE]["file"]
        df = pq.read_table(file).to_pandas(date_as_object=False)
    elif path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path, dtype={"applicant_hash": str})
    elif not path.exists():
        raise FileNotFoundError(f"outcomes not found: {path}")
    else:
        raise OutcomesError(f"{path}: outcomes must be a folder, a .parquet or a .csv file")
    return validate_outcomes(df, name=path.name)


def mature(outcomes: pd.DataFrame, *, window_months: int) -> np.ndarray:
    """Which outcomes are final: a default, or observed at least `window_months` after the month of
    the application (a non-default observed earlier could still default)."""
    end = months_later(outcomes["application_date"], window_months)
    return outcomes["default_12m"].to_numpy() | (outcomes["observation_date"].to_numpy() >= end)
