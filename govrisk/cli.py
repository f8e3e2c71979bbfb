"""The `govrisk` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="govrisk: credit risk for small businesses, sole proprietors and farmers from government records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, import, validate and describe datasets.", no_args_is_help=True)
data_import = typer.Typer(help="Map real data onto the record contract.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(data_import, name="import")
console = Console(stderr=True)
out = Console()


@data_app.command("generate")
def data_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    applicants: Annotated[int, typer.Option(help="Number of applicants.", min=1)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, byte-identical files.")] = 0,
    config: Annotated[str, typer.Option(help="Generator config name or YAML path.")] = "county",
    drift: Annotated[
        bool, typer.Option(help="Shift the population (drift scenario for monitoring).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset folder.")] = False,
) -> None:
    """Generate a synthetic county with a known true PD.

    Example: govrisk data generate --applicants 20000 --seed 7 --out runs/data/county
    """
    from data.synthetic import generate, load_generator_config

    cfg = load_generator_config(config)
    manifest = generate(
        cfg, n_applicants=applicants, seed=seed, out=out_dir, drift=drift, overwrite=overwrite
    )
    rows = ", ".join(f"{t} {m['rows']:,}" for t, m in manifest["tables"].items())
    out.print(f"wrote {out_dir}: {rows}")
    out.print(f"content hash {manifest['content_hash']}")


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="Dataset folder (with manifest.json).")],
    contract: Annotated[
        str | None, typer.Option(help="Contract name or YAML path; default: the one in the manifest.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many errors.")] = 50,
) -> None:
    """Check a dataset against its record contract; exit 1 and list every error if it breaks it.

    Example: govrisk data validate runs/data/county
    """
    from data.validate import validate_dataset

    try:
        report = validate_dataset(path, contract=contract)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error[/red]: {e}")
        raise typer.Exit(2) from None
    if report.ok:
        out.print(f"[green]valid[/green]: {path} ({report.summary})")
        return
    table = Table(title=f"{report.n_errors:,} contract violations in {path}")
    for col in ("table", "column", "check", "applicant", "value"):
        table.add_column(col, overflow="fold")
    for e in report.errors[:limit]:
        table.add_row(e.table, e.column, e.check, str(e.applicant), repr(e.value))
    out.print(table)
    if report.n_errors > limit:
        out.print(f"... and {report.n_errors - limit:,} more")
    raise typer.Exit(1)


@data_app.command("describe")
def data_describe(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Row counts, default rates by segment and vintage, oracle AUC and a plain-aggregate baseline AUC.

    Example: govrisk data describe runs/data/county --json
    """
    from data.describe import describe, render

    report = describe(path)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report, out)


@data_import.command("taiwan")
def data_import_taiwan(
    csv: Annotated[Path, typer.Argument(help="UCI_Credit_Card.csv (a copy ships in data/real/taiwan/).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset folder.")] = False,
) -> None:
    """Map the UCI Taiwan credit-card file onto the contract (one monthly table of six statements).

    Example: govrisk data import taiwan data/real/taiwan/UCI_Credit_Card.csv --out runs/data/taiwan
    """
    from data.taiwan import import_taiwan

    manifest = import_taiwan(csv, out=out_dir, overwrite=overwrite)
    rows = ", ".join(f"{t} {m['rows']:,}" for t, m in manifest["tables"].items())
    out.print(f"wrote {out_dir}: {rows}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
