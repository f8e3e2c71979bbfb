"""The `govrisk` command line. Each subcommand is a thin shell over a library function.

Library imports sit inside the commands (start-up cost): `govrisk --help` and each command load only
what they use, never torch, Optuna or BentoML for a command that does not need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from govrisk.core.config import KINDS, config_path, list_configs
from govrisk.core.errors import user_message

console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


class _Govrisk(typer.core.TyperGroup):
    """The root command: a user error raised by any command (a missing path, an unknown config or
    tag, an existing output, bad input: `govrisk.core.errors`) becomes one line and exit 2; any other
    exception is a bug and keeps its traceback. GOVRISK_DEBUG=1 shows the traceback of both."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as e:
            message = user_message(e)
            if message is None or os.environ.get("GOVRISK_DEBUG"):
                raise
            console.print(f"[red]error[/red]: {escape(message)}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None


app = typer.Typer(
    help="govrisk: credit risk for small businesses, sole proprietors and farmers from government records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Govrisk,
)
data_app = typer.Typer(help="Generate, import, validate and describe datasets.", no_args_is_help=True)
data_import = typer.Typer(help="Map real data onto the record contract.", no_args_is_help=True)
models_app = typer.Typer(
    help="The model registry (BentoML's model store in the work folder).", no_args_is_help=True
)
config_app = typer.Typer(
    help="Configs on the search path: ./configs, then $GOVRISK_CONFIG_PATH, then the packaged defaults.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
data_app.add_typer(data_import, name="import")
# Piped output (logs, CI, tests) is not a terminal: give tables room instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


@config_app.command("list")
def config_list(
    kind: Annotated[str | None, typer.Argument(help=f"Only this kind: {', '.join(KINDS)}.")] = None,
) -> None:
    """Every config on the search path, and which file wins for each name.

    Example: govrisk config list contract
    """
    try:
        entries = list_configs(kind)
    except ValueError as e:
        console.print(f"[red]error[/red]: {e}")
        raise typer.Exit(2) from None
    table = Table(title=f"{sum(not e.shadowed for e in entries)} configs")
    for col in ("kind", "name", "source", "path"):
        table.add_column(col, overflow="fold")
    for e in entries:
        source = f"{e.source} (shadowed)" if e.shadowed else e.source
        table.add_row(e.kind, e.name, source, str(e.path), style="dim" if e.shadowed else None)
    out.print(table)


@config_app.command("show")
def config_show(
    kind: Annotated[str, typer.Argument(help=f"Config kind: {', '.join(KINDS)}.")],
    name: Annotated[str, typer.Argument(help="Config name, or a YAML path.")],
) -> None:
    """Print the file that `KIND NAME` resolves to, and its text.

    Example: govrisk config show serving default
    """
    try:
        path = config_path(kind, name)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error[/red]: {e}")
        raise typer.Exit(2) from None
    print(f"# {kind}/{name}: {path}")  # a YAML comment: the output stays a valid YAML file
    print(path.read_text(), end="")


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
    from govrisk.data.synthetic import generate, load_generator_config

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
    limit: Annotated[int, typer.Option(help="Show at most this many checks (column and check pairs).")] = 50,
) -> None:
    """Check a dataset against its record contract and its manifest's content hash; exit 1 if it breaks either.

    One line per table, column and check that fails: how many rows, and the first few (applicant: value).

    Example: govrisk data validate runs/data/county
    """
    from govrisk.data.validate import EXAMPLES_PER_CHECK, validate_dataset

    try:
        report = validate_dataset(path, contract=contract)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error[/red]: {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if report.ok:
        out.print(f"[green]valid[/green]: {path} ({report.summary})")
        return
    groups = report.groups()
    out.print(
        f"[red]{report.n_errors:,} contract violation{'s' if report.n_errors != 1 else ''}[/red] in {escape(str(path))} "
        f"({len(groups)} check{'s' if len(groups) != 1 else ''}; {escape(report.summary)})",
        soft_wrap=True,
    )
    for g in groups[:limit]:
        shown = ", ".join(
            repr(e.value) if e.applicant is None else f"{e.applicant}: {e.value!r}" for e in g.examples
        )
        more = ", …" if g.count > len(g.examples) else ""
        line = f"  {g.table}.{g.column}  {g.check}  {g.count:,}: {shown}{more}"
        out.print(escape(line), soft_wrap=True, highlight=False)
    if len(groups) > limit:
        out.print(f"... and {len(groups) - limit:,} more checks (--limit)")
    if any(len(g.examples) == EXAMPLES_PER_CHECK and g.count > EXAMPLES_PER_CHECK for g in groups):
        out.print(f"(at most {EXAMPLES_PER_CHECK} examples per check; govrisk.api.validate returns the rows)")
    raise typer.Exit(1)


@data_app.command("describe")
def data_describe(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Row counts, default rates by segment and vintage, oracle AUC and a plain-aggregate baseline AUC.

    Example: govrisk data describe runs/data/county --json
    """
    from govrisk.data.describe import describe, render

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
    import warnings

    from govrisk.data.taiwan import import_taiwan

    with warnings.catch_warnings(record=True) as caught:  # a changed file: one line, not Python's two
        warnings.simplefilter("always", UserWarning)
        manifest = import_taiwan(csv, out=out_dir, overwrite=overwrite)
    for w in caught:
        console.print(f"[yellow]warning[/yellow]: {escape(str(w.message))}", soft_wrap=True)
    rows = ", ".join(f"{t} {m['rows']:,}" for t, m in manifest["tables"].items())
    out.print(f"wrote {out_dir}: {rows}")


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_cmd(
    ctx: typer.Context,
    config: Annotated[
        str, typer.Option("--config", help="Experiment name in configs/experiment/ or a YAML path.")
    ],
    devices: Annotated[int, typer.Option(help="Processes (DDP on CPU with gloo when > 1).", min=1)] = 1,
) -> None:
    """Train one model from an experiment config, export it to ONNX, evaluate and register it.

    Extra arguments are `key=value` overrides of the config, checked before any training.

    Example: govrisk train --config configs/experiment/county_cnn.yaml model.params.trainer.max_epochs=5
    """
    from govrisk.training.config import load_experiment

    try:
        cfg, params = load_experiment(config, list(ctx.args))
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error[/red]: {e}")
        raise typer.Exit(2) from None
    from govrisk.training.train import train

    callbacks = []
    if cfg.model.kind != "scorecard":
        # A line per epoch (val AUROC, KS, Brier): printed through the spinner's console, above it.
        from govrisk.training.lightning import EpochProgress

        callbacks.append(EpochProgress(console))
    # DDP relaunches this command once per extra rank (LOCAL_RANK set): one spinner, rank 0's.
    rank0 = os.environ.get("LOCAL_RANK", "0") == "0"
    with console.status(f"training {cfg.name} ({cfg.model.kind})") if rank0 else contextlib.nullcontext():
        result = train(
            cfg, params, callbacks=callbacks, devices=devices, strategy="ddp" if devices > 1 else "auto"
        )
    m = result.metrics
    if not m:  # a DDP rank other than 0: rank 0 reports
        return
    out.print(f"run folder  {result.run_dir}")
    out.print(f"model tag   {result.tag or '(not registered)'}")
    out.print(
        f"ONNX parity max |Δp| {result.onnx_parity['max_abs_diff']:.2e} on {result.onnx_parity['rows']:,} rows"
    )
    if (result.run_dir / "tensorboard").is_dir():
        out.print(f"TensorBoard tensorboard --logdir {result.run_dir / 'tensorboard'}")
    for split in ("train", "val", "oot"):
        out.print(
            f"{split:5s} AUC {m[f'{split}/auroc']:.4f}  KS {m[f'{split}/ks']:.4f}  Brier {m[f'{split}/brier']:.4f}"
        )


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Registered models: name, version, kind, key metrics and data hash.

    Example: govrisk models list
    """
    from govrisk.core.registry import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} registered models")
    for col in ("name", "version", "kind", "created", "val/auroc", "oot/auroc", "oot/ks", "data hash"):
        table.add_column(col, overflow="fold")
    for r in rows:
        figures = [
            f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "-"
            for k in ("val/auroc", "oot/auroc", "oot/ks")
        ]
        table.add_row(r["name"], r["version"], r["kind"], r["created"], *figures, r["data_hash"][:12])
    out.print(table)


@models_app.command("verify")
def models_verify(tag: Annotated[str, typer.Argument(help="Model tag, e.g. county-cnn:latest.")]) -> None:
    """Check every file of a registered model, and its metadata, against its HMAC-signed manifest.

    Exit 1 with one line naming the file that differs (or the manifest, when its signature fails).

    Example: govrisk models verify county-scorecard:latest
    """
    from govrisk.core.registry import TamperedModelError, verify_model

    try:
        manifest = verify_model(tag)
    except KeyError as e:
        console.print(f"[red]error[/red]: {str(e).strip(chr(39) + chr(34))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except TamperedModelError as e:
        console.print(f"[red]refused[/red]: {e}", soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(
        f"[green]ok[/green] {manifest['tag']}: {len(manifest['files'])} files and the metadata match the "
        f"manifest signed by key {manifest['key_id']}; model.onnx sha256 {manifest['files']['model.onnx']}",
        soft_wrap=True,
    )


@models_app.command("resign")
def models_resign(
    tags: Annotated[list[str] | None, typer.Argument(help="Model tags to re-sign (or --all).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every govrisk model and the audit log.")] = False,
    adopt_unsigned_audit: Annotated[
        bool,
        typer.Option(
            help="Sign an audit log written before audit signatures (its hash chain must be intact)."
        ),
    ] = False,
) -> None:
    """Key rotation: verify manifests (and, with --all, the audit log) with the old key, sign them with the new.

    The old key comes from $GOVRISK_MODEL_KEY_OLD or $GOVRISK_MODEL_KEY_OLD_FILE, the new one from
    $GOVRISK_MODEL_KEY or $GOVRISK_MODEL_KEY_FILE (else the demo key file <work>/secrets/model.key).
    Everything is verified with the old key first; if anything fails, nothing is re-signed (exit 1).
    Rotation, step by step:

    1. make a new key: openssl rand -hex 32 > new.key; chmod 600 new.key

    2. GOVRISK_MODEL_KEY_OLD_FILE=old.key GOVRISK_MODEL_KEY_FILE=new.key govrisk models resign --all

    3. give the servers, monitoring and reviewers the new key (restart the servers); destroy the old one.

    A model registered before manifests cannot be re-signed (nothing trustworthy to sign): register it
    again with `govrisk train --config <its folder>/config.yaml`.

    Example: GOVRISK_MODEL_KEY_OLD_FILE=runs/secrets/model.key GOVRISK_MODEL_KEY_FILE=/run/secrets/govrisk govrisk models resign --all
    """
    from govrisk.core import signing
    from govrisk.core.registry import TamperedModelError, list_models, resign_model, verify_model
    from govrisk.research.governance import AuditTampered, resign_audit

    if all_models == bool(tags):
        console.print("[red]error[/red]: give model tags or --all (not both)", soft_wrap=True)
        raise typer.Exit(2)
    try:
        new_key = signing.load_key()
        old_key = signing.load_key(old=True)
    except signing.SigningKeyError as e:
        console.print(f"[red]error[/red]: {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    todo = [r["tag"] for r in list_models()] if all_models else list(tags or [])
    try:
        for tag in todo:  # every check first: a failure re-signs nothing
            verify_model(tag, key=old_key)
        for tag in todo:
            resign_model(tag, old_key=old_key, new_key=new_key)
            out.print(f"re-signed   {tag} (key {signing.key_id(new_key)})")
        if all_models:
            n = resign_audit(old_key=None if adopt_unsigned_audit else old_key, new_key=new_key)
            out.print(f"re-signed   the audit log, {n} entries")
    except KeyError as e:
        console.print(f"[red]error[/red]: {str(e).strip(chr(39) + chr(34))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (TamperedModelError, AuditTampered) as e:
        console.print(f"[red]refused[/red]: {e}", soft_wrap=True)
        raise typer.Exit(1) from None


# Research, serving and monitoring keep their commands beside their code; imports inside commands stay lazy.
from govrisk.monitoring.cli import register as _register_monitoring  # noqa: E402
from govrisk.research.cli import register as _register_research  # noqa: E402
from govrisk.serving.cli import register as _register_serving  # noqa: E402

_register_research(app, models_app)
_register_serving(app)
_register_monitoring(app, data_app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
