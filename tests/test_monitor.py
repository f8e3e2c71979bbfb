"""Monitoring (issue #6): outcomes played forward, the live governance report and its alerts, the book.

The decision logs here are written by the serving code itself, in-process: `serving.engine.Scorer`
scores request bodies built from a fresh county and `DecisionLog` commits each record's `log_row()`,
which is what the server does per request (the real server's version of the loop is the slow test
at the end). Models: a scorecard and a small CNN trained on the tiny county, as in test_report.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import APPLICANT_KEY, tiny_experiment
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.core.config import config_path
from govrisk.data.outcomes import OutcomesError, play_forward, read_outcomes, validate_outcomes
from govrisk.data.store import read_dataset
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.serving.engine import applicant_hash

runner = CliRunner()
LIVE_APPLICANTS = 2500
SMALL_CNN = {
    "trainer": {"max_epochs": 3, "patience": 2, "batch_size": 256},
    "net": {"hidden": 16, "dilations": [1, 2, 4], "stem_hidden": 0, "static_bins": 0, "ensemble_size": 1},
}


def h(applicant_id: str) -> str:
    return applicant_hash(applicant_id, APPLICANT_KEY)  # the session's key (conftest)


# --- fixtures: models, live populations, decision logs ---------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_county_path: Path) -> dict[str, str]:
    from govrisk.training.config import experiment_from_dict
    from govrisk.training.train import train

    card = train(
        *experiment_from_dict(tiny_experiment(tiny_county_path, "scorecard", name="monitor-scorecard"))
    )
    net = train(
        *experiment_from_dict(tiny_experiment(tiny_county_path, "cnn", name="monitor-cnn", **SMALL_CNN))
    )
    return {"champion": str(card.tag), "challenger": str(net.tag)}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitor")


def county(work: Path, name: str, *, seed: int, drift: bool = False) -> Path:
    out = work / name
    if not (out / "manifest.json").exists():
        generate(load_generator_config("county"), n_applicants=LIVE_APPLICANTS, seed=seed, out=out,
                 drift=drift, progress=False)  # fmt: skip
    return out


def write_log(
    dataset: Path, url: str, models: dict[str, str], *, rows: slice = slice(None), **over: Any
) -> None:
    """Score the dataset's applicants through the serving engine and commit each record to the log."""
    from devtools.client import request_bodies
    from govrisk.serving.config import load_serving_config
    from govrisk.serving.decision_log import DecisionLog
    from govrisk.serving.engine import Scorer

    fault = over.pop("fault", None)  # devtools/faults.py: "raise" or "sleep:<ms>"
    challenger = {"tag": models["challenger"], "budget_ms": 10_000} | over.pop("challenger", {})
    cfg = load_serving_config("default", champion=models["champion"], challenger=challenger,
                              decision_log={"url": url}, **over)  # fmt: skip
    scorer, log = Scorer(config=cfg), DecisionLog(url=url)
    if fault:
        from devtools.faults import inject

        inject(scorer, fault)
    try:
        bodies = request_bodies(read_dataset(dataset))[rows]
        for start in range(0, len(bodies), 500):
            records = scorer.score(scorer.parser.parse(bodies[start : start + 500]), endpoint="score_batch")
            log.write([r.log_row() for r in records])
    finally:
        log.close()
        scorer.close()


def monitoring_config(work: Path, **alerts: float) -> Path:
    """The default monitoring config with a quicker governance policy (100 bootstrap resamples)."""
    policy = yaml.safe_load(config_path("governance", "default").read_text())
    policy["bootstrap"]["n_boot"] = 100
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    cfg = yaml.safe_load(config_path("monitoring", "default").read_text())
    cfg["live"]["governance_policy"] = str(work / "policy.yaml")
    cfg["live"]["alerts"] |= alerts
    path = work / f"monitoring-{len(alerts)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Run:
    """A CLI run: exit code, and the output with rich's line wrapping undone (messages are checked whole)."""

    def __init__(self, args: list[str]) -> None:
        result = runner.invoke(app, args)
        self.exit_code = result.exit_code
        self.output = " ".join(result.output.split())


def cli(*args: object) -> Run:
    return Run([str(a) for a in args])


@pytest.fixture(scope="module")
def live(models: dict[str, str], work: Path) -> dict[str, Path | str]:
    """An undrifted county scored in split mode (both models score everyone; half decided by each),
    its outcomes and its live report."""
    data = county(work, "live", seed=21)
    url = f"sqlite:///{work / 'live.db'}"
    write_log(data, url, models, routing={"mode": "split", "split_share": 0.5})
    result = cli("data", "outcomes", data, "--log", url, "--out", work / "live-outcomes")
    assert result.exit_code == 0, result.output
    config = monitoring_config(work)
    report = cli("monitor", "live", "--log", url, "--outcomes", work / "live-outcomes", "--out", work / "live-report",
                 "--config", config)  # fmt: skip
    return {"data": data, "url": url, "outcomes": work / "live-outcomes", "report": work / "live-report",
            "config": config, "output": report.output, "exit_code": report.exit_code}  # fmt: skip


# --- outcomes ---------------------------------------------------------------------------------------
def test_outcomes_carry_the_label_and_continue_the_history(live: dict, tiny_county_path: Path) -> None:
    ds, fwd = read_dataset(live["data"]), read_dataset(live["outcomes"])
    assert fwd.manifest["meta"]["applications"] == LIVE_APPLICANTS
    assert fwd.manifest["meta"]["unmatched_applications"] == 0
    outcomes = read_outcomes(live["outcomes"])
    a = ds.applicants.set_index("applicant_id")
    expected = {h(i): (row.application_date, row.default_12m) for i, row in a.iterrows()}
    for o in outcomes.itertuples():
        app_date, label = expected[o.applicant_hash]
        assert o.application_date == app_date and o.default_12m == label  # the dataset's own label
        assert o.observation_date == (app_date.to_period("M") + 12).to_timestamp()
    assert 0 < outcomes["default_12m"].sum() < len(outcomes)

    for table, hist in ds.monthly.items():
        forward = fwd.monthly[table]
        assert list(forward.columns) == list(hist.columns)  # the contract format of the history
        app_m = forward["applicant_id"].map(a["application_date"]).dt.to_period("M")
        lag = (forward["month"].dt.to_period("M") - app_m).map(lambda d: d.n)
        assert lag.between(0, 11).all()  # from the application month, for the 12 forward months
        assert not pd.concat([hist, forward]).duplicated(["applicant_id", "month"]).any()
    # The forward months are the same firms going on: a firm's sales in the first forward months follow
    # its sales in the last history months (a replay of the wrong applicants would not).
    tax = pd.concat([ds.monthly["tax_monthly"].assign(part="history"),
                     fwd.monthly["tax_monthly"].assign(part="forward")])  # fmt: skip
    tax["lag"] = (
        tax["month"].dt.to_period("M") - tax["applicant_id"].map(a["application_date"]).dt.to_period("M")
    ).map(lambda d: d.n)
    near = tax[tax["lag"].between(-6, 5) & (tax["declared_sales"] > 0)]
    sales = (
        near.assign(log_sales=np.log(near["declared_sales"]))
        .pivot_table(index="applicant_id", columns="part", values="log_sales", aggfunc="median")
        .dropna()
    )
    shuffled = np.corrcoef(sales["history"], np.random.default_rng(0).permutation(sales["forward"]))[0, 1]
    assert len(sales) > 1000 and sales.corr().loc["history", "forward"] > 0.8 and abs(shuffled) < 0.1

    valid = cli("data", "validate", live["outcomes"])
    assert valid.exit_code == 0, valid.output


def test_outcomes_replay_every_chunk_and_refuse_an_edited_dataset(tmp_path: Path) -> None:
    cfg = load_generator_config("county", chunk_size=1000)
    generate(cfg, n_applicants=2500, seed=4, out=tmp_path / "ds", progress=False)
    ds = read_dataset(tmp_path / "ds")
    picked = ds.applicants.iloc[[3, 999, 1000, 2499]]  # chunks 0, 0, 1, 2
    wanted = pd.DataFrame({"applicant_hash": [h(i) for i in picked["applicant_id"]],
                           "application_date": picked["application_date"]})  # fmt: skip
    manifest = play_forward(tmp_path / "ds", out=tmp_path / "out", hash_of=h, applications=wanted)
    assert manifest["meta"]["applications"] == 4
    got = read_outcomes(tmp_path / "out").set_index("applicant_hash")["default_12m"]
    assert [got[x] for x in wanted["applicant_hash"]] == picked["default_12m"].tolist()
    forward = read_dataset(tmp_path / "out").monthly["social_security_monthly"]
    assert set(forward["applicant_id"]) <= set(picked["applicant_id"])

    edited = tmp_path / "edited"
    shutil.copytree(tmp_path / "ds", edited)
    table = pq.read_table(edited / "applicants.parquet").to_pandas()
    table.loc[1000, "default_12m"] = not table.loc[1000, "default_12m"]
    table.to_parquet(edited / "applicants.parquet", index=False)
    with pytest.raises(ValueError, match="does not reproduce the dataset's labels"):
        play_forward(edited, out=tmp_path / "out2", hash_of=h, applications=wanted)
    with pytest.raises(ValueError, match=r"another dataset, or another applicant key"):
        play_forward(
            tmp_path / "ds", out=tmp_path / "out3", hash_of=lambda i: h("x" + i), applications=wanted
        )


def _outcome_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "applicant_hash": [h("C1"), h("C2"), h("C3")],
        "application_date": ["2023-01-15", "2023-02-01", "2023-03-09"],
        "observation_date": ["2024-01-01", "2023-06-01", "2024-03-01"],
        "default_12m": [0, 1, 0],
    })  # fmt: skip


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (
            "applicant_hash",
            "C00000001",
            "applicant_hash row 1: is not a lower-case sha256 hex digest (got 'C00000001')",
        ),
        ("application_date", "2023-02-30", "application_date row 1: is not a date (got '2023-02-30')"),
        ("default_12m", 2, "default_12m row 1: is not a default flag (0/1 or true/false) (got 2)"),
        (
            "observation_date",
            "2022-12-01",
            "observation_date row 1: is before the application_date of its row",
        ),
        ("applicant_hash", h("C1"), "applicant_hash row 1: a second outcome for the same application"),
    ],
)
def test_bad_outcomes_name_the_field_row_and_value(column: str, value: object, message: str) -> None:
    df = _outcome_rows()
    if column == "applicant_hash" and value == h("C1"):
        df.loc[1, "application_date"] = "2023-01-15"
    df.loc[1, column] = value
    with pytest.raises(OutcomesError) as e:
        validate_outcomes(df, name="lender.csv")
    assert f"lender.csv: {message}" in str(e.value)


def test_outcome_files_and_maturity(tmp_path: Path) -> None:
    from govrisk.data.outcomes import mature

    df = _outcome_rows()
    with pytest.raises(OutcomesError, match=r"missing columns \['default_12m'\]"):
        validate_outcomes(df.drop(columns="default_12m"))
    df.to_csv(tmp_path / "lender.csv", index=False)
    clean = read_outcomes(tmp_path / "lender.csv")
    assert clean["default_12m"].tolist() == [False, True, False]
    # observed 12 months on: final; a default: final; a non-default seen after 11 months: not yet
    clean.loc[2, "observation_date"] = pd.Timestamp("2024-02-01")
    assert mature(clean, window_months=12).tolist() == [True, True, False]
    (tmp_path / "lender.json").write_text("{}")
    with pytest.raises(OutcomesError, match=r"must be a folder, a \.parquet or a \.csv file"):
        read_outcomes(tmp_path / "lender.json")


# --- the live report ---------------------------------------------------------------------------------
def test_live_report_is_the_governance_report_with_live_figures(live: dict, models: dict) -> None:
    assert live["exit_code"] in (0, 1), live["output"]  # 1 only for a breach, listed
    report = json.loads((live["report"] / "report.json").read_text())
    for section in ("discrimination", "calibration", "grades", "stability", "swap", "segments", "models",
                    "recommendation", "figures", "data", "policy", "live", "alerts"):  # fmt: skip
        assert section in report, section
    assert report["models"]["champion"]["tag"] == models["champion"]
    assert report["models"]["challenger"]["tag"] == models["challenger"]
    lv = report["live"]
    assert lv["counts"]["evaluated"] == LIVE_APPLICANTS == report["data"]["evaluation"]["rows"]
    assert lv["input_parity"]["max_abs_pd_difference"] == {"champion": 0.0, "challenger": 0.0}
    assert lv["routing_modes"] == {"split": LIVE_APPLICANTS}
    arms = lv["split"]["arms"]
    assert arms["champion"]["applicants"] + arms["challenger"]["applicants"] == LIVE_APPLICANTS
    assert arms["challenger"]["decided_by"] == {"challenger": arms["challenger"]["applicants"]}
    assert 0 <= lv["split"]["approved_bad_rate_fisher_p"] <= 1
    swap = lv["decision_swap"]
    assert sum(swap["decisions"].values()) == LIVE_APPLICANTS
    assert swap["swap_in"]["n"] + swap["both_approve"]["n"] == swap["challenger_approved"]["n"] > 0
    assert lv["operations"]["challenger_error_rate"] == 0.0
    assert lv["operations"]["latency_ms"]["score_batch"]["total_ms"]["p50"] > 0

    # The live figures are the report's own statistics on the logged PDs and the outcomes.
    from govrisk.research import stats

    log = pd.read_sql_table("decisions", live["url"])
    y = read_outcomes(live["outcomes"]).set_index("applicant_hash").loc[log["applicant_hash"], "default_12m"]
    for role in ("champion", "challenger"):
        auc = stats.auc(y.to_numpy().astype(int), log[f"{role}_pd"].to_numpy())
        assert report["discrimination"][role]["auc"]["estimate"] == pytest.approx(auc, abs=1e-12)

    checks = {c["check"]: c for c in report["alerts"]["checks"]}
    for name in ("champion score stable (PSI)", "challenger score stable (PSI)",
                 "inputs stable (CSI of the champion's main characteristics)", "challenger answers",
                 "records match what was scored"):  # fmt: skip
        assert checks[name]["passed"], checks[name]  # an undrifted population trips no PSI alert
    assert ("BREACH" in live["output"]) == (live["exit_code"] == 1)
    page = (live["report"] / "report.html").read_text()
    assert "1. Alerts" in page and "2. Live decisions" in page and "Split arms" in page


def test_live_report_ranks_the_models_as_the_offline_oot_report(live: dict, models: dict, work: Path) -> None:
    """The live population is another draw of the same county: within its intervals, the live report
    says what the offline out-of-time report says."""
    out = work / "offline"
    result = cli("report", "--champion", models["champion"], "--challenger", models["challenger"], "--out", out,
                 "--policy", work / "policy.yaml")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_ranking(json.loads((out / "report.json").read_text()),
                        json.loads((live["report"] / "report.json").read_text()))  # fmt: skip


def assert_same_ranking(offline: dict, live: dict) -> None:
    off, on = offline["discrimination"], live["discrimination"]
    diff = on["difference"]["auc"]
    # the live interval of (challenger - champion) does not contradict the offline order ...
    if off["difference"]["auc"]["estimate"] > 0:
        assert diff["high"] > 0, (off["difference"], diff)
    else:
        assert diff["low"] < 0, (off["difference"], diff)
    # ... and each model's offline OOT AUC interval meets its live one
    for role in ("champion", "challenger"):
        a, b = off[role]["auc"], on[role]["auc"]
        assert a["low"] <= b["high"] and b["low"] <= a["high"], (role, a, b)


def test_a_drifted_population_trips_the_psi_alert(models: dict, work: Path, live: dict) -> None:
    data = county(work, "drifted", seed=22, drift=True)
    url = f"sqlite:///{work / 'drifted.db'}"
    write_log(data, url, models)
    assert cli("data", "outcomes", data, "--log", url, "--out", work / "drifted-outcomes").exit_code == 0
    result = cli("monitor", "live", "--log", url, "--outcomes", work / "drifted-outcomes", "--out",
                 work / "drifted-report", "--config", live["config"])  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads((work / "drifted-report" / "report.json").read_text())
    psi = [b for b in report["alerts"]["breaches"] if "stable" in b]
    assert psi, report["alerts"]
    assert f"BREACH {psi[0]}" in result.output


def test_challenger_errors_breach_and_too_few_outcomes_exit_3(models: dict, work: Path, live: dict) -> None:
    # The live log, then 100 applications sent again while the challenger fails (the first decision
    # of an application is the one judged; the error rate counts every decision).
    shutil.copy(work / "live.db", work / "faulty.db")
    url = f"sqlite:///{work / 'faulty.db'}"
    write_log(live["data"], url, models, rows=slice(0, 100), fault="raise")
    args = ["monitor", "live", "--log", url, "--outcomes", live["outcomes"], "--config", live["config"]]
    result = cli(*args, "--out", work / "faulty-report")
    assert result.exit_code == 1, result.output
    report = json.loads((work / "faulty-report" / "report.json").read_text())
    ops = report["live"]["operations"]
    assert ops["challenger_status"] == {"ok": LIVE_APPLICANTS, "error": 100}
    assert ops["challenger_error_rate"] == pytest.approx(100 / (LIVE_APPLICANTS + 100))
    assert "challenger answers" in report["alerts"]["breaches"]
    assert "BREACH challenger answers: 100 of 2,600 decisions" in result.output
    assert report["live"]["counts"]["evaluated"] == LIVE_APPLICANTS  # the repeats are not judged twice

    strict = yaml.safe_load(live["config"].read_text())
    strict["live"]["min_outcomes"] = 10_000
    (work / "strict.yaml").write_text(yaml.safe_dump(strict))
    result = cli("monitor", "live", "--log", live["url"], "--outcomes", live["outcomes"], "--config",
                 work / "strict.yaml", "--out", work / "strict-report")  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "needs at least 10,000" in result.output and not (work / "strict-report").exists()


def test_bad_inputs_exit_2_naming_what_is_wrong(live: dict, work: Path) -> None:
    bad = yaml.safe_load(live["config"].read_text())
    bad["live"]["alerts"]["max_score_psi"] = -1
    (work / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = cli("monitor", "live", "--log", live["url"], "--outcomes", live["outcomes"], "--out", work / "x",
                 "--config", work / "bad.yaml")  # fmt: skip
    assert result.exit_code == 2 and "live.alerts.max_score_psi" in result.output, result.output

    rows = _outcome_rows().astype({"default_12m": object})
    rows.loc[2, "default_12m"] = "yes"
    rows.to_csv(work / "lender.csv", index=False)
    result = cli("monitor", "live", "--log", live["url"], "--outcomes", work / "lender.csv", "--data", live["data"],
                 "--out", work / "x", "--config", live["config"])  # fmt: skip
    assert result.exit_code == 2 and "default_12m row 2" in result.output and "'yes'" in result.output
    result = cli(
        "monitor",
        "live",
        "--log",
        work / "nothing.parquet",
        "--outcomes",
        live["outcomes"],
        "--out",
        work / "x",
    )
    assert result.exit_code == 2 and "decision log not found" in result.output
    result = cli("monitor", "live", "--log", live["url"], "--outcomes", live["outcomes"], "--out", work / "x",
                 "--champion", "county-scorecard:nope")  # fmt: skip
    assert (
        result.exit_code == 2
        and "--champion 'county-scorecard:nope': not in the decision log" in result.output
    )


# --- the book ---------------------------------------------------------------------------------------
def test_book_rescores_approved_loans_and_lists_the_watched(live: dict, models: dict, work: Path) -> None:
    out = work / "book"
    result = cli("monitor", "book", "--data", live["data"], "--outcomes", live["outcomes"], "--log", live["url"],
                 "--as-of", "2024-01", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(out / "watchlist.parquet") in result.output
    book = pd.read_parquet(out / "book.parquet")
    log = pd.read_sql_table("decisions", live["url"])
    approved = log[log["decision"] == "approve"]
    app_m = pd.to_datetime(approved["application_date"]).dt.to_period("M")
    active = approved[(app_m >= pd.Period("2023-02", "M")) & (app_m <= pd.Period("2023-12", "M"))]
    assert len(book) == len(active) > 100
    assert (book["months_on_book"].between(1, 11)).all() and (book["as_of"] == "2024-01-01").all()
    # origination PDs as logged, by the same models
    logged = active.set_index(active["applicant_hash"])
    hashes = book["applicant_id"].map(h)
    for role in ("champion", "challenger"):
        assert np.array_equal(book[f"{role}_pd_origination"], logged.loc[hashes, f"{role}_pd"].to_numpy())
        assert (book[f"{role}_origination_pd_from"] == "logged").all()
    # the watch rule, recomputed from the columns (configs/monitoring/default.yaml: x2 to >= 1 %, or 2 grades)
    rule = ((book["champion_pd_ratio"] > 2.0) & (book["champion_pd_now"] >= 0.01)) | (
        book["champion_grades_down"] >= 2
    )
    assert (book["watch"] == rule).all() and book["watch"].any()
    watched = pd.read_parquet(out / "watchlist.parquet")
    assert len(watched) == book["watch"].sum() and watched["champion_pd_ratio"].is_monotonic_decreasing
    assert all(len(r) > 0 for r in watched["reason_codes"]) and all(
        len(r) > 0 for r in watched["deteriorated"]
    )

    # "Now" is an application dated the first of the as-of month with every record before it: scored
    # independently through the training code path, it gives the same PDs.
    from govrisk.training.train import predictions

    ds, fwd = read_dataset(live["data"]), read_dataset(live["outcomes"])
    loans = ds.applicants.set_index("applicant_id").loc[book["applicant_id"]].reset_index()
    loans["application_date"] = pd.Timestamp("2024-01-01")
    monthly = {t: pd.concat([ds.monthly[t], fwd.monthly[t]], ignore_index=True) for t in ds.monthly}
    summary = json.loads((out / "summary.json").read_text())
    for role in ("champion", "challenger"):
        folder = Path(json.loads((live["report"] / "report.json").read_text())["models"][role]["folder"])
        again = predictions(folder, loans, monthly)
        assert np.max(np.abs(again - book[f"{role}_pd_now"].to_numpy())) < 1e-6
        assert summary["models"][role]["tag"] == models[role]
    assert summary["watched"] == int(book["watch"].sum())


def test_book_of_a_whole_dataset_recomputes_origination(
    live: dict, models: dict, work: Path, tiny_county_path: Path
) -> None:
    out = work / "book-all"
    result = cli("monitor", "book", "--data", live["data"], "--outcomes", live["outcomes"], "--all",
                 "--months-on-book", 6, "--champion", models["champion"], "--challenger", models["challenger"],
                 "--out", out, "--show", 0)  # fmt: skip
    assert result.exit_code == 0, result.output
    book = pd.read_parquet(out / "book.parquet")
    assert len(book) == LIVE_APPLICANTS and (book["months_on_book"] == 6).all()
    # recomputed origination PDs are the PDs the server logged for the same applications
    log = pd.read_sql_table("decisions", live["url"]).set_index("applicant_hash")
    logged = log.loc[book["applicant_id"].map(h), "champion_pd"].to_numpy()
    assert np.max(np.abs(book["champion_pd_origination"].to_numpy() - logged)) < 1e-9
    assert (book["champion_origination_pd_from"] == "recomputed").all()

    bad = cli("monitor", "book", "--data", live["data"], "--outcomes", live["outcomes"], "--all",
              "--months-on-book", 12, "--out", out)  # fmt: skip
    assert bad.exit_code == 2 and "--months-on-book 12: a loan matures after term_months=12" in bad.output
    other = cli("monitor", "book", "--data", tiny_county_path, "--outcomes", live["outcomes"], "--all",
                "--as-of", "2024-01", "--out", out)  # fmt: skip
    assert other.exit_code == 2 and "was played forward from" in other.output


# --- the whole loop through the real server --------------------------------------------------------
@pytest.mark.slow
def test_live_loop_through_the_server(models: dict, work: Path, live: dict) -> None:
    """Train (the module's models), serve in shadow mode, send a fresh county through /score_batch, play
    time forward, `govrisk monitor live`: the live report ranks the models as the offline OOT report."""
    from devtools.client import request_bodies
    from devtools.launcher import Server

    folder = work / "server"
    url = f"sqlite:///{folder / 'decisions.db'}"
    cfg = {"champion": models["champion"], "challenger": {"tag": models["challenger"], "budget_ms": 10_000},
           "routing": {"mode": "shadow"}, "decision_log": {"url": url}, "max_batch": 500}  # fmt: skip
    data = county(work, "served", seed=23)
    bodies = request_bodies(read_dataset(data))
    server = Server(folder, cfg).start()
    try:
        for start in range(0, len(bodies), 250):
            r = server.post("/score_batch", {"applicants": bodies[start : start + 250]}, timeout=120)
            assert r.status_code == 200, r.text
    finally:
        server.stop()
    exported = work / "served.parquet"
    assert cli("decisions", "export", "--out", exported, "--url", url).exit_code == 0
    assert cli("data", "outcomes", data, "--log", exported, "--out", work / "served-outcomes").exit_code == 0
    result = cli("monitor", "live", "--log", exported, "--outcomes", work / "served-outcomes", "--out",
                 work / "served-report", "--config", live["config"])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    report = json.loads((work / "served-report" / "report.json").read_text())
    assert report["live"]["counts"]["evaluated"] == LIVE_APPLICANTS
    assert report["live"]["routing_modes"] == {"shadow": LIVE_APPLICANTS}
    assert report["live"]["operations"]["challenger_status"] == {"ok": LIVE_APPLICANTS}
    assert report["live"]["input_parity"]["max_abs_pd_difference"]["champion"] <= 1e-6
    assert not [b for b in report["alerts"]["breaches"] if "stable" in b]  # undrifted: no PSI alert
    out = work / "offline-served"
    offline = cli("report", "--champion", models["champion"], "--challenger", models["challenger"], "--out", out,
                  "--policy", work / "policy.yaml")  # fmt: skip
    assert offline.exit_code == 0, offline.output
    assert_same_ranking(json.loads((out / "report.json").read_text()), report)
