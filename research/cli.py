"""`govrisk tune`, `govrisk report`, `govrisk promote`, `govrisk models audit`.

Library imports sit inside the commands (start-up cost): `govrisk --help` and each command load only
what they use, never torch, Optuna or BentoML for a command that does not need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width
out = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error[/red]: {message}")
    return typer.Exit(code)


def tune_cmd(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Model kind to tune: cnn or tabular.")] = None,
    trials: Annotated[
        int, typer.Option(help="Finished (complete + pruned) trials the study should reach in total.", min=1)
    ] = 20,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Time budget in seconds: no trial starts after it, nor one that the median "
            "complete trial says would overrun it.",
            min=1,
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL; default: sqlite:///<work>/tuning/studies.db. "
            "postgresql://... lets workers on several machines share one study."
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name; default: <experiment>-<digest of search space and config>."),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(help="Search space in configs/search/ (name or YAML path); default: the model kind."),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="Base experiment; default: the search space's `experiment`.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads of this worker (default: all CPUs).", min=1)
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Seconds between a running trial's heartbeats; a trial silent for 2x this "
            "long is marked failed and retried.",
            min=1,
        ),
    ] = 30,
    pruner_startup_trials: Annotated[
        int | None,
        typer.Option(
            help="Median pruner: complete trials before any trial may be pruned; "
            "default: the search space's pruner.n_startup_trials.",
            min=0,
        ),
    ] = None,
    pruner_warmup_steps: Annotated[
        int | None,
        typer.Option(
            help="Median pruner: epochs every trial gets before it may be pruned; "
            "default: the search space's pruner.n_warmup_steps.",
            min=0,
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Print the study's report instead of tuning.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --report: print JSON.")] = False,
) -> None:
    """Tune a challenger with Optuna (TPE + pruning) over the shared train(cfg); write the best config.

    Extra `key=value` arguments override the base experiment for every trial (e.g. data.generate.applicants=50000).
    Run the same command again, or on another machine with the same --storage, to resume or join the study.

    Example: govrisk tune --model cnn --trials 30 --timeout 900 data.generate.applicants=50000
    """
    from govrisk.research import tune

    try:
        if model is not None and model not in ("cnn", "tabular"):
            raise ValueError(f"--model must be cnn or tabular, got {model!r}")
        if model is None and search is None:
            raise ValueError("give --model cnn|tabular (or --search NAME)")
        space = tune.load_search_space(search or model)
        if model is not None and space.model != model:
            raise ValueError(f"search space {search!r} tunes {space.model!r}, not --model {model!r}")
        space = tune.with_pruner(
            space, n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_steps
        )
        spec = tune.StudySpec.create(
            space,
            experiment=experiment,
            overrides=list(ctx.args),
            storage=storage,
            study=study,
            heartbeat=heartbeat,
        )
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    if report:
        try:
            summary = tune.study_report(spec)
        except KeyError as e:
            raise _fail(str(e).strip("'\"")) from None
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            tune.print_report(summary, out)
        return
    result = tune.run_worker(spec, trials=trials, timeout=timeout, threads=threads)
    tune.print_report(result, out)


def report_cmd(
    champion: Annotated[str, typer.Option(help="Champion: a registry tag or a model/run folder.")],
    challenger: Annotated[str, typer.Option(help="Challenger: a registry tag or a model/run folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.html and report.json.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder to judge on; default: the challenger's training data (its OOT rows)."
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Policy in configs/governance/ (name or YAML path).")
    ] = "default",
) -> None:
    """Write the champion-challenger governance report (self-contained HTML plus the same figures as JSON).

    Example: govrisk report --champion county-scorecard:latest --challenger county-cnn:latest --out runs/reports/county
    """
    from govrisk.core.registry import TamperedModelError
    from govrisk.research.governance import load_governance_policy
    from govrisk.research.report import build_report, write_report

    if data is not None and not (data / "manifest.json").exists():
        raise _fail(f"--data {data}: not a dataset folder (no manifest.json)")
    try:
        pol = load_governance_policy(policy)
        with console.status("scoring both models and computing the report"):
            rep = build_report(champion, challenger, data=data, policy=pol, policy_name=policy)
    except (KeyError, ValueError, FileNotFoundError, TamperedModelError) as e:
        raise _fail(str(e).strip("'\"")) from None
    json_path, html_path = write_report(rep, out_dir)
    rec = rep["recommendation"]
    d = rep["discrimination"]
    out.print(f"report      {html_path}")
    out.print(f"figures     {json_path}")
    out.print(
        f"AUC         champion {d['champion']['auc']['estimate']:.4f}  challenger {d['challenger']['auc']['estimate']:.4f}"
        f"  (DeLong p {d['delong']['p_value']:.3g})"
    )
    colour = "green" if rec["decision"] == "promote" else "yellow"
    out.print(f"recommend   [{colour}]{rec['decision'].upper()}[/{colour}]: {rec['summary']}")


def promote_cmd(
    model: Annotated[str, typer.Argument(help="The challenger's registry tag, e.g. county-cnn:latest.")],
    report: Annotated[Path, typer.Option("--report", help="Folder of the governance report about it.")],
    override: Annotated[bool, typer.Option(help="Promote although the report says hold.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --override).")] = None,
) -> None:
    """Make a challenger the champion if its governance report recommends it; log who, what, when, why.

    Example: govrisk promote county-cnn:latest --report runs/reports/county
    """
    from govrisk.core.registry import TamperedModelError
    from govrisk.research.governance import PromotionRefused, champion_file, promote

    try:
        entry = promote(model, report, override=override, reason=reason)
    except PromotionRefused as e:
        raise _fail(f"promotion refused: {e}", 1) from None
    except (KeyError, TamperedModelError) as e:
        raise _fail(str(e).strip("'\"")) from None
    how = " (OVERRIDE)" if entry["override"] else ""
    out.print(f"champion    {entry['model']}{how}, was {entry['previous_champion'] or '(none)'}")
    out.print(f"recorded    audit entry {entry['seq']} by {entry['by']} at {entry['at']}; {champion_file()}")


def audit_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the append-only promotion audit log and check its hash chain (exit 1 if it was altered).

    Example: govrisk models audit
    """
    from govrisk.research.governance import audit_file, current_champion, read_audit

    entries, problems = read_audit()
    if as_json:
        print(
            json.dumps({"entries": entries, "problems": problems, "champion": current_champion()}, indent=2)
        )
    else:
        table = Table(title=f"{len(entries)} audit entries in {audit_file()}")
        for col in ("seq", "at", "by", "action", "model", "previous", "recommendation", "override", "reason"):
            table.add_column(col, overflow="fold")
        for e in entries:
            table.add_row(str(e["seq"]), e["at"], e["by"], e["action"], e["model"], str(e["previous_champion"]),
                          e["recommendation"], "yes" if e["override"] else "no", e["reason"])  # fmt: skip
        out.print(table)
        champ = current_champion()
        out.print(f"champion    {champ['tag'] if champ else '(none designated)'}")
        for p in problems:
            out.print(f"[red]tampered[/red]: {p}")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Attach the research commands to the main CLI (called once by govrisk.cli)."""
    app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(
        tune_cmd
    )
    app.command("report")(report_cmd)
    app.command("promote")(promote_cmd)
    models_app.command("audit")(audit_cmd)
