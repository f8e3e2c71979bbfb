"""`govrisk data outcomes`, `govrisk monitor live`, `govrisk monitor book`.

Exit codes of `monitor live` (for a scheduler): 0 no alert, 1 at least one alert breached (listed),
2 bad input (a file, a config, a model that cannot be read), 3 too few mature outcomes to judge the
models and no breach in what the log alone shows (the challenger's error rate; the counts are printed).

Library imports sit inside the commands (start-up cost): `govrisk --help` and each command load only
what they use, never torch, Optuna or BentoML for a command that does not need them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the commands import their libraries lazily: `govrisk --help` stays quick
    import pandas as pd

console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width
out = Console(width=None if sys.stdout.isatty() else 160)
monitor_app = typer.Typer(help="Live challenger results and in-loan early warning.", no_args_is_help=True)

EXIT_BREACH, EXIT_BAD_INPUT, EXIT_TOO_FEW_OUTCOMES = 1, 2, 3

LOG_HELP = "Decision log: a database URL or a Parquet file (govrisk decisions export); default: the serving config's."
ServingOpt = Annotated[
    str, typer.Option("--serving-config", help="Serving config: the log, its hash salt, the policy.")
]
ConfigOpt = Annotated[
    str, typer.Option("--config", help="Monitoring config in configs/monitoring/ (name or YAML path).")
]


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    console.print(f"[red]error[/red]: {message}")
    return typer.Exit(code)


def _serving(name: str) -> tuple[object, Callable[[str], str]]:
    """The serving config and the pseudonym it logs applicants under: HMAC-SHA256 under the applicant
    key of the environment, current and earlier keys (rotation: govrisk.core.pseudonym). A missing key
    is a ValueError naming the variables."""
    from govrisk.core.pseudonym import load_pseudonymizer
    from govrisk.core.signing import SigningKeyError
    from govrisk.serving.config import load_serving_config

    cfg = load_serving_config(name)
    try:
        return cfg, load_pseudonymizer()
    except SigningKeyError as e:
        raise ValueError(str(e)) from None


def _decisions(log: str | None, serving_cfg: object):
    from govrisk.monitoring.decisions import read_decisions

    dl = serving_cfg.decision_log  # type: ignore[attr-defined]
    return read_decisions(log or dl.resolved_url(), table=dl.table, schema=dl.schema_)


def outcomes_cmd(
    dataset: Annotated[Path, typer.Argument(help="The synthetic county whose applicants were scored.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Outcomes folder to write.")],
    log: Annotated[str | None, typer.Option(help=LOG_HELP)] = None,
    all_applicants: Annotated[
        bool, typer.Option("--all", help="Every applicant of the dataset, not only the logged ones.")
    ] = False,
    serving_config: ServingOpt = "default",
    config: ConfigOpt = "default",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing outcomes folder.")] = False,
) -> None:
    """Play a synthetic county forward for the logged applications: later records and 12-month defaults.

    The forward monthly records follow each application; the default flag is the dataset's own label,
    drawn from its true PD.

    Writes a dataset folder (contract format: the forward months of every monthly table) with an
    `outcomes` table in the outcomes format: applicant_hash, application_date, observation_date, default_12m.

    Example: govrisk data outcomes runs/data/live-county --log runs/serving/decisions.parquet --out runs/outcomes/live
    """
    from govrisk.data.outcomes import play_forward
    from govrisk.monitoring.config import load_monitoring_config

    try:
        mon = load_monitoring_config(config)
        serving_cfg, hash_of = _serving(serving_config)
        applications, source = None, "every applicant of the dataset"
        if not all_applicants:
            decisions = _decisions(log, serving_cfg)
            applications = decisions[["applicant_hash", "application_date"]]
            source = log or serving_cfg.decision_log.resolved_url()  # type: ignore[attr-defined]
        with console.status("replaying the county forward"):
            manifest = play_forward(
                dataset, out=out_dir, hash_of=hash_of, applications=applications,
                window_months=mon.outcome_window_months, overwrite=overwrite, meta={"decision_log": source},
            )  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        raise _fail(str(e).strip("'\"")) from None
    m = manifest["meta"]
    rows = ", ".join(f"{t} {v['rows']:,}" for t, v in manifest["tables"].items())
    out.print(f"wrote {out_dir}: {rows}")
    if applications is not None:
        out.print(
            f"applications  {m['applications']:,} logged applications matched in {dataset}; "
            f"{m['unmatched_applications']:,} logged ones are not in it"
        )
    out.print(f"forward       {m['forward_months']} months after each application month (contract format)")


@monitor_app.command("live")
def live_cmd(
    outcomes: Annotated[
        Path, typer.Option(help="Outcomes: a folder (govrisk data outcomes) or a Parquet/CSV file.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.html and report.json.")],
    log: Annotated[str | None, typer.Option(help=LOG_HELP)] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset with the logged applicants' records; default: the outcomes folder's source."
        ),
    ] = None,
    champion: Annotated[
        str | None, typer.Option(help="Champion tag as logged; default: the latest decision's.")
    ] = None,
    challenger: Annotated[
        str | None, typer.Option(help="Challenger tag as logged; default: the latest decision's.")
    ] = None,
    serving_config: ServingOpt = "default",
    config: ConfigOpt = "default",
) -> None:
    """The governance report on the live population (decision log joined to outcomes), with alerts.

    Exit 0: no alert; 1: alerts breached (listed); 2: bad input; 3: too few mature outcomes to judge.

    Example: govrisk monitor live --log runs/serving/decisions.parquet --outcomes runs/outcomes/live --out runs/reports/live
    """
    from govrisk.core.registry import TamperedModelError
    from govrisk.data.outcomes import OutcomesError, read_outcomes
    from govrisk.data.store import read_manifest
    from govrisk.monitoring.config import load_monitoring_config
    from govrisk.monitoring.live import NotEnoughOutcomes, build_live_report
    from govrisk.research.governance import load_governance_policy
    from govrisk.research.report import write_report
    from govrisk.serving.config import load_credit_policy

    try:
        mon = load_monitoring_config(config)
        policy = load_governance_policy(mon.live.governance_policy)
        serving_cfg, hash_of = _serving(serving_config)
        credit = load_credit_policy(serving_cfg.policy)  # type: ignore[attr-defined]
        decisions = _decisions(log, serving_cfg)
        table = read_outcomes(outcomes)
        if data is None:
            if not outcomes.is_dir():
                raise ValueError(
                    "--data DIR: the dataset with the logged applicants' records (outcomes is a file)"
                )
            data = Path(read_manifest(outcomes)["meta"]["dataset"])
        with console.status(
            "joining the log to the outcomes, scoring the development rows, computing the report"
        ):
            report = build_live_report(
                log=decisions, outcomes=table, data=data, hash_of=hash_of, config=mon, policy=policy,
                policy_name=mon.live.governance_policy,
                cutoffs=(credit.admission.approve_below_pd, credit.admission.decline_at_pd),
                champion=champion, challenger=challenger,
            )  # fmt: skip
    except NotEnoughOutcomes as e:
        console.print(f"[yellow]not enough outcomes[/yellow]: {e}")
        failed = [c for c in e.checks if not c["passed"]]
        for check in failed:  # what the log alone shows still counts
            out.print(f"  BREACH {check['check']}: {check['detail']} (threshold {check['threshold']})")
        raise typer.Exit(EXIT_BREACH if failed else EXIT_TOO_FEW_OUTCOMES) from None
    except (OutcomesError, ValueError, FileNotFoundError, KeyError, TamperedModelError) as e:
        raise _fail(str(e).strip("'\"")) from None
    json_path, html_path = write_report(report, out_dir)
    lv, d = report["live"], report["discrimination"]
    out.print(f"live report {html_path}")
    out.print(f"figures     {json_path}")
    c = lv["counts"]
    out.print(
        f"population  {c['evaluated']:,} applications judged ({report['data']['evaluation']['defaults']:,} defaults) "
        f"of {c['applications']:,} logged; {c['immature']:,} immature, {c['without_outcome']:,} without outcome"
    )
    for role in ("champion", "challenger"):
        o = lv["offline_vs_live"][role]
        offline = f"{o['offline_oot_auc']:.4f}" if o["offline_oot_auc"] is not None else "-"
        out.print(
            f"{role:<11} live AUC {o['live_auc']:.4f} [{o['live_auc_low']:.4f}, {o['live_auc_high']:.4f}]  "
            f"offline OOT {offline}  PD PSI {report['stability']['score_psi'][role]['value']:.4f}"
        )
    out.print(
        f"difference  challenger - champion AUC {d['difference']['auc']['estimate']:+.4f} "
        f"[{d['difference']['auc']['low']:+.4f}, {d['difference']['auc']['high']:+.4f}], DeLong p {d['delong']['p_value']:.3g}"
    )
    rec = report["recommendation"]
    out.print(f"recommend   {rec['decision'].upper()} (on live evidence): {rec['summary']}")
    alerts = report["alerts"]
    if alerts["ok"]:
        out.print(f"[green]alerts      none[/green] ({len(alerts['checks'])} checks within their thresholds)")
        return
    out.print(f"[red]alerts      {len(alerts['breaches'])} breached[/red]")
    for check in alerts["checks"]:
        if not check["passed"]:
            out.print(f"  BREACH {check['check']}: {check['detail']} (threshold {check['threshold']})")
    raise typer.Exit(EXIT_BREACH)


@monitor_app.command("book")
def book_cmd(
    data: Annotated[Path, typer.Option(help="Dataset with the loans' application records.")],
    outcomes: Annotated[
        Path, typer.Option(help="Outcomes folder with the months since (govrisk data outcomes).")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for book.parquet, watchlist.parquet, summary.json.")
    ],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Rescore the book as of this month (YYYY-MM).")
    ] = None,
    months_on_book: Annotated[
        int | None,
        typer.Option(help="Instead: rescore each loan this many months after its application.", min=1),
    ] = None,
    log: Annotated[str | None, typer.Option(help=LOG_HELP)] = None,
    all_applicants: Annotated[
        bool,
        typer.Option("--all", help="The book is every applicant of --data (origination PDs recomputed)."),
    ] = False,
    champion: Annotated[
        str | None, typer.Option(help="Champion tag; default: the log's latest, else the serving config's.")
    ] = None,
    challenger: Annotated[str | None, typer.Option(help="Challenger tag; default: as --champion.")] = None,
    serving_config: ServingOpt = "default",
    config: ConfigOpt = "default",
    show: Annotated[int, typer.Option(help="Watched loans to print.", min=0)] = 10,
) -> None:
    """Rescore the active book as of a month with both models and write the watch list.

    A loan is watched when its PD rose by more than the configured factor or its grade fell by the
    configured number of grades (configs/monitoring/default.yaml, book).

    The book: the approved decisions of the log (origination PDs as logged), or with --all every
    applicant of --data. A loan is active from the month after its application for `term_months`.

    Example: govrisk monitor book --data runs/data/live-county --outcomes runs/outcomes/live --as-of 2024-01 --out runs/book
    """
    import numpy as np

    from govrisk.core.registry import TamperedModelError
    from govrisk.data.store import read_dataset, read_manifest
    from govrisk.monitoring.book import as_of_months, on_book, rescore_book, summarise, write_book
    from govrisk.monitoring.config import load_monitoring_config
    from govrisk.monitoring.decisions import first_decisions
    from govrisk.monitoring.live import application_index, application_keys, model_pair
    from govrisk.research.report import resolve_model

    try:
        mon = load_monitoring_config(config)
        cfg = mon.book
        if months_on_book is not None and months_on_book >= cfg.term_months:
            raise ValueError(
                f"--months-on-book {months_on_book}: a loan matures after term_months={cfg.term_months}"
            )
        serving_cfg, hash_of = _serving(serving_config)
        meta = read_manifest(outcomes)["meta"]
        ds = read_dataset(data)
        if meta.get("dataset_hash") != ds.manifest["content_hash"]:
            raise ValueError(
                f"--outcomes {outcomes} was played forward from {meta.get('dataset')} "
                f"(hash {str(meta.get('dataset_hash'))[:12]}), not from --data {data}"
            )
        fwd = read_dataset(outcomes, tables=list(ds.monthly))
        forward_months = int(meta.get("forward_months", 0))
        origination = None
        if all_applicants:
            rows = np.arange(len(ds.applicants))
            champion = champion or serving_cfg.champion  # type: ignore[attr-defined]
            challenger = challenger or serving_cfg.challenger.tag  # type: ignore[attr-defined]
            if not challenger:
                raise ValueError("--challenger TAG: the serving config has no challenger")
        else:
            decisions = _decisions(log, serving_cfg)
            champion, challenger = model_pair(decisions, champion, challenger)
            apps, _ = first_decisions(decisions)
            approved = apps[apps["decision"] == "approve"].reset_index(drop=True)
            pos = application_index(ds, hash_of).get_indexer(
                application_keys(approved["applicant_hash"].to_numpy(), approved["application_date"])
            )
            if not (pos >= 0).any():
                raise ValueError(
                    f"none of the {len(approved):,} approved decisions is an application of {data}"
                )
            approved, rows = approved[pos >= 0].reset_index(drop=True), pos[pos >= 0]
            # PDs at origination as logged, where the model scoring the book now is the one that scored
            # them then; otherwise (another version, no challenger answer) rescore_book recomputes them.
            origination = {
                role: np.where(approved[f"{role}_model"] == tag, approved[f"{role}_pd"].astype(float), np.nan)
                for role, tag in (("champion", champion), ("challenger", challenger))
            }
        dates = ds.applicants[ds.contract.applicants.application_date].iloc[rows]
        months = as_of_months(dates, as_of=as_of, months_on_book=months_on_book)
        masks = on_book(dates, months, term_months=cfg.term_months, forward_months=forward_months)
        keep = masks["rescored"]
        models = {"champion": resolve_model(champion), "challenger": resolve_model(challenger)}
        with console.status(f"rescoring {int(keep.sum()):,} loans"):
            book = rescore_book(
                ds=ds, forward=fwd.monthly, rows=rows[keep], as_of=months[keep], models=models, config=cfg,
                origination=None if origination is None else {r: v[keep] for r, v in origination.items()},
            )  # fmt: skip
    except (ValueError, FileNotFoundError, KeyError, TamperedModelError) as e:
        raise _fail(str(e).strip("'\"")) from None
    excluded = {k: int(v.sum()) for k, v in masks.items() if k != "rescored"}
    tags = {role: m.label for role, m in models.items()}
    summary = summarise(book, excluded=excluded, config=cfg, tags=tags)
    paths = write_book(book, summary, out_dir)
    _print_book(book, summary, paths, show=show)


def _print_book(book: pd.DataFrame, summary: dict[str, Any], paths: dict[str, Path], *, show: int) -> None:
    s = summary
    out.print(
        f"book        {paths['book']} ({s['loans_rescored']:,} loans rescored as of {', '.join(s['as_of']) or '-'})"
    )
    out.print(f"watch list  {paths['watchlist']} ({s['watched']:,} loans, {s['watched_share']:.1%}; "
              f"on the {s['watch_on']}'s PD: up more than x{s['pd_rise_factor']:g} to {s['min_pd_now']:.2%} or more, or {s['grade_drop']}+ grades worse)")  # fmt: skip
    out.print(f"summary     {paths['summary']}")
    ex = s["excluded"]
    out.print(f"not rescored: {ex['not_yet_seasoned']:,} not yet a month on the book, {ex['matured']:,} matured, "
              f"{ex['beyond_records']:,} beyond the forward records")  # fmt: skip
    table = Table(title="PD and grade now against origination")
    for col in ("model", "tag", "mean PD then", "mean PD now", "median ratio", "improved", "unchanged",
                f"worse by < {s['grade_drop']}", f"worse by {s['grade_drop']}+", f"PD up > x{s['pd_rise_factor']:g}"):  # fmt: skip
        table.add_column(col)
    for role, m in s["models"].items():
        g = list(m["grade_migration"].values())
        table.add_row(role, m["tag"], _pct(m["mean_pd_origination"]), _pct(m["mean_pd_now"]),
                      "-" if m["median_pd_ratio"] is None else f"{m['median_pd_ratio']:.2f}",
                      *(f"{x:,}" for x in g), f"{m['pd_rose_by_factor']:,}")  # fmt: skip
    out.print(table)
    if not show or not s["watched"]:
        return
    role = s["watch_on"] if s["watch_on"] != "either" else "champion"
    watched = book[book["watch"]].sort_values(f"{role}_pd_ratio", ascending=False, kind="stable").head(show)
    key = book.columns[0]
    wl = Table(title=f"watch list: the {len(watched)} largest PD rises of {s['watched']:,}")
    for col in (
        key,
        "on book",
        "champion PD then -> now",
        "grade",
        "challenger PD then -> now",
        "why",
        "reasons now",
        "lost most points",
    ):
        wl.add_column(col, overflow="fold")
    for r in watched.itertuples(index=False):
        r = r._asdict()
        wl.add_row(str(r[key]), f"{r['months_on_book']} m",
                   f"{_pct(r['champion_pd_origination'])} -> {_pct(r['champion_pd_now'])}",
                   f"{r['champion_grade_origination']} -> {r['champion_grade_now']}",
                   f"{_pct(r['challenger_pd_origination'])} -> {_pct(r['challenger_pd_now'])}",
                   r["watch_reasons"], ", ".join(r["reason_codes"][:2]), ", ".join(r["deteriorated"][:2]))  # fmt: skip
    out.print(wl)


def _pct(x: float | None) -> str:
    import math

    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2%}"


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Attach the monitoring commands to the main CLI (called once by govrisk.cli)."""
    data_app.command("outcomes")(outcomes_cmd)
    app.add_typer(monitor_app, name="monitor")
