"""User errors on the command line: one line naming the problem and exit 2, never a traceback.

Every command is run with what a user gets wrong: a missing path, an unknown config, an existing
output without --overwrite, an unknown model tag, an empty decision log, a dataset whose bytes changed.
A real bug still shows its traceback. Also: `data validate` groups violations per column and check and
checks the content hash; a skipped tuning trial is one line without Optuna's traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.data.store import verify_hash
from govrisk.data.synthetic import generate, load_generator_config

runner = CliRunner()
TAIWAN_CSV = Path(__file__).resolve().parents[1] / "data" / "real" / "taiwan" / "UCI_Credit_Card.csv"


def _leaf_commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += _leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


LEAVES = _leaf_commands(typer.main.get_command(app))
# Commands that take no path, config, tag or log from the user: nothing to get wrong.
NO_USER_INPUT = {("models", "list"), ("models", "audit")}


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-errors") / "county"
    generate(load_generator_config("county"), n_applicants=400, seed=5, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def changed_county(county: Path) -> Path:
    """The county with applicants.parquet rewritten: the same rows, other bytes (another codec)."""
    changed = county.with_name("changed-county")
    changed.mkdir()
    for f in county.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    pq.write_table(
        pq.read_table(changed / "applicants.parquet"), changed / "applicants.parquet", compression="snappy"
    )
    return changed


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    csv = tmp_path_factory.mktemp("taiwan") / "small.csv"
    csv.write_text("".join(TAIWAN_CSV.read_text().splitlines(keepends=True)[:21]))
    return csv


@pytest.fixture(scope="module")
def bad_csv(small_csv: Path) -> Path:
    lines = small_csv.read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    row = lines[3].strip().split(",")
    row[header.index("BILL_AMT1")] = "n/a"  # row ID 3
    lines[3] = ",".join(row) + "\n"
    bad = small_csv.with_name("bad.csv")
    bad.write_text("".join(lines))
    return bad


@pytest.fixture(scope="module")
def scorecard_experiment(tmp_path_factory: pytest.TempPathFactory, changed_county: Path) -> Path:
    path = tmp_path_factory.mktemp("exp") / "changed.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "changed-data",
                "seed": 0,
                "data": {"dataset": str(changed_county), "features": "county"},
                "split": {"kind": "vintage", "val_start": "2023-01", "oot_start": "2023-07"},
                "model": {"kind": "scorecard"},
            }
        )
    )
    return path


def _cases(tmp: Path, county: Path, changed: Path, small_csv: Path, bad_csv: Path, exp: Path) -> list:
    """(command, argv, what the line must name)."""
    missing = str(tmp / "missing")
    none_db = f"sqlite:///{tmp / 'no-decisions.db'}"
    return [
        (("config", "list"), ["config", "list", "nosuch"], "nosuch"),
        (("config", "show"), ["config", "show", "serving", "nosuch"], "nosuch"),
        (("data", "generate"), ["data", "generate", "--applicants", "50", "--out", str(county)], "--overwrite"),
        (("data", "generate"), ["data", "generate", "--config", "nosuch", "--out", missing], "nosuch"),
        (("data", "validate"), ["data", "validate", missing], missing),
        (("data", "validate"), ["data", "validate", str(county), "--contract", "nosuch"], "nosuch"),
        (("data", "describe"), ["data", "describe", missing], missing),
        (("data", "outcomes"), ["data", "outcomes", str(county), "--out", missing, "--config", "nosuch"], "nosuch"),
        (("data", "outcomes"), ["data", "outcomes", str(county), "--out", missing, "--log", missing + ".parquet"], missing),
        (("data", "import", "taiwan"), ["data", "import", "taiwan", missing + ".csv", "--out", missing], missing),
        (("data", "import", "taiwan"), ["data", "import", "taiwan", str(bad_csv), "--out", missing], "BILL_AMT1"),
        (("data", "import", "taiwan"), ["data", "import", "taiwan", str(small_csv), "--out", str(county)], "--overwrite"),
        (("train",), ["train", "--config", "nosuch"], "nosuch"),
        (("train",), ["train", "--config", str(exp)], "applicants.parquet"),
        (("tune",), ["tune", "--search", "nosuch"], "nosuch"),
        (("report",), ["report", "--champion", "nosuch:1", "--challenger", "nosuch:2", "--out", missing], "nosuch:1"),
        (("report",), ["report", "--champion", "a:1", "--challenger", "b:1", "--out", missing, "--data", missing], missing),
        (("promote",), ["promote", "nosuch:1", "--report", missing], missing),
        (("serve",), ["serve", "--config", "nosuch"], "nosuch"),
        (("models", "verify"), ["models", "verify", "nosuch:1"], "nosuch:1"),
        (("models", "resign"), ["models", "resign", "nosuch:1"], "nosuch:1"),
        (("decisions", "export"), ["decisions", "export", "--out", missing, "--config", "nosuch"], "nosuch"),
        (("decisions", "export"), ["decisions", "export", "--out", missing, "--url", none_db], "no decisions"),
        (("monitor", "live"), ["monitor", "live", "--outcomes", missing, "--out", missing, "--config", "nosuch"], "nosuch"),
        (("monitor", "live"), ["monitor", "live", "--outcomes", missing, "--out", missing, "--log", missing + ".parquet"], missing),
        (("monitor", "book"), ["monitor", "book", "--data", missing, "--outcomes", missing, "--out", missing, "--as-of", "2024-01", "--config", "nosuch"], "nosuch"),
        (("monitor", "book"), ["monitor", "book", "--data", missing, "--outcomes", missing, "--out", missing, "--as-of", "2024-01"], missing),
    ]  # fmt: skip


CASE_IDS = [
    "config list: unknown kind",
    "config show: unknown config",
    "data generate: existing output",
    "data generate: unknown config",
    "data validate: missing path",
    "data validate: unknown contract",
    "data describe: missing path",
    "data outcomes: unknown config",
    "data outcomes: missing log",
    "data import taiwan: missing CSV",
    "data import taiwan: bad value",
    "data import taiwan: existing output",
    "train: unknown config",
    "train: changed dataset",
    "tune: unknown search space",
    "report: unknown model tag",
    "report: missing data folder",
    "promote: missing report",
    "serve: unknown config",
    "models verify: unknown model tag",
    "models resign: unknown model tag",
    "decisions export: unknown config",
    "decisions export: empty log",
    "monitor live: unknown config",
    "monitor live: missing log",
    "monitor book: unknown config",
    "monitor book: missing data",
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, county, changed_county, small_csv, bad_csv, scorecard_experiment) -> list:
    tmp = tmp_path_factory.mktemp("cases")
    return _cases(tmp, county, changed_county, small_csv, bad_csv, scorecard_experiment)


def _one_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_every_command_has_a_user_error_case(cases: list) -> None:
    covered = {command for command, _, _ in cases}
    assert len(cases) == len(CASE_IDS)
    assert set(LEAVES) - NO_USER_INPUT <= covered, set(LEAVES) - NO_USER_INPUT - covered


@pytest.mark.parametrize("i", range(len(CASE_IDS)), ids=CASE_IDS)
def test_user_error_is_one_line_and_exit_2(cases: list, i: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _, argv, named = cases[i]
    monkeypatch.setenv("GOVRISK_MODEL_KEY_OLD", "test-only-integrity-key-" + "0" * 32)
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    line = _one_line(result)
    assert line.startswith("error:"), line
    assert named in line, line


def test_a_bug_keeps_its_traceback(county: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only user errors become one line: a KeyError from a lookup that went wrong is a bug."""
    import govrisk.data.describe

    def broken(path: Path) -> dict:
        return {}["oracle_auc"]

    monkeypatch.setattr(govrisk.data.describe, "describe", broken)
    result = runner.invoke(app, ["data", "describe", str(county)])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)


# --- data validate: grouped violations, the content hash --------------------------------------------


def test_changed_bytes_are_a_violation_naming_the_file(county: Path, changed_county: Path) -> None:
    assert runner.invoke(app, ["data", "validate", str(county)]).exit_code == 0
    result = runner.invoke(app, ["data", "validate", str(changed_county)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "content_hash" in line]
    assert len(lines) == 1 and "applicants.parquet" in lines[0], result.output
    with pytest.raises(ValueError, match=r"applicants\.parquet no longer matches"):
        verify_hash(changed_county)


def test_a_wrong_type_is_one_line_per_column_with_a_count_and_examples(county: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in county.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    table = pq.read_table(broken / "tax_monthly.parquet")
    rows = table.num_rows
    assert rows > 1000  # a wrong type in every row: once listed per row, now one line
    for name in ("revenue", "vat_paid"):
        if name in table.column_names:
            break
    else:
        name = next(f.name for f in table.schema if pa.types.is_floating(f.type))
    i = table.column_names.index(name)
    table = table.set_column(i, name, pa.array([str(v) for v in table.column(i).to_pylist()]))
    pq.write_table(table, broken / "tax_monthly.parquet")
    result = runner.invoke(app, ["data", "validate", str(broken)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if f"tax_monthly.{name} " in line]
    assert len(lines) == 1, result.output
    assert "type float" in lines[0] and f"{rows:,}" in lines[0], lines[0]
    assert 1 <= lines[0].count(": '") <= 5, lines[0]  # at most five examples (applicant: value)
    assert len(result.output.splitlines()) < 10, result.output  # not one line per row
    # the content hash names the rewritten file too
    assert any(
        "content_hash" in line and "tax_monthly.parquet" in line for line in result.output.splitlines()
    )


def test_report_groups_keep_exact_counts_and_at_most_five_examples(county: Path, tmp_path: Path) -> None:
    from govrisk.data.validate import validate_dataset

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in county.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    table = pq.read_table(broken / "applicants.parquet")
    i = table.column_names.index("requested_amount")
    table = table.set_column(i, "requested_amount", pa.array([str(v) for v in table.column(i).to_pylist()]))
    pq.write_table(table, broken / "applicants.parquet")
    report = validate_dataset(broken)
    groups = {(g.table, g.column, g.check): g for g in report.groups()}
    g = groups[("applicants", "requested_amount", "type float")]
    assert g.count == table.num_rows and len(g.examples) == 5
    assert groups[("applicants", "*", "content_hash")].count == 1


# --- tuning: a trial skipped on purpose ---------------------------------------------------------------


def test_a_skipped_trial_logs_no_traceback() -> None:
    import optuna

    from govrisk.research.tune import SkippedTrial, _quiet_skips

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    try:

        def objective(trial: optuna.Trial) -> float:
            if trial.number == 0:
                trial.set_user_attr("skipped", "trial budget full")
                raise SkippedTrial(f"trial {trial.number}: the study already has 3 finished trials")
            raise ZeroDivisionError("a real failure")

        study = optuna.create_study()
        with _quiet_skips():
            study.optimize(objective, n_trials=2, catch=(SkippedTrial, ZeroDivisionError))
    finally:
        logger.removeHandler(handler)
    skipped = [r for r in records if r.getMessage().startswith("Trial 0 ")]
    assert skipped == [], [r.getMessage() for r in skipped]
    real = [r for r in records if r.getMessage().startswith("Trial 1 failed with parameters")]
    assert real and real[0].exc_info is not None  # a real failure keeps its traceback
