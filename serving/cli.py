"""`govrisk serve` and `govrisk decisions export`.

Library imports sit inside the commands (start-up cost): `govrisk --help` and each command load only
what they use, never torch, Optuna or BentoML for a command that does not need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

decisions_app = typer.Typer(help="The decision log of the scoring endpoint.", no_args_is_help=True)


def serve_env(config: str) -> dict[str, str]:
    """Environment for `bentoml serve`: the config, and the model store inside the work folder
    (BentoML reads BENTOML_HOME when it starts, before any govrisk code runs)."""
    import os

    from govrisk.core.config import config_path, work_dir

    path = config_path("serving", config)  # fails here, naming the config, if it does not exist
    env = dict(os.environ)
    env["GOVRISK_SERVING_CONFIG"] = str(Path(path).resolve())
    env.setdefault("GOVRISK_WORK", str(work_dir()))
    env.setdefault("BENTOML_HOME", str(Path(env["GOVRISK_WORK"]) / "bentoml"))
    return env


def register(app: typer.Typer) -> None:
    """Attach the serving commands to the main CLI (called once by govrisk.cli)."""
    app.add_typer(decisions_app, name="decisions")

    @app.command("serve")
    def serve(
        config: Annotated[
            str, typer.Option(help="Serving config name in configs/serving/ or a YAML path.")
        ] = "default",
        port: Annotated[int | None, typer.Option(help="Port; default: the config's (3000).")] = None,
        host: Annotated[str | None, typer.Option(help="Host; default: the config's (127.0.0.1).")] = None,
    ) -> None:
        """Start the BentoML scoring endpoint (champion + challenger, decision log) in the foreground.

        API keys: set GOVRISK_API_KEYS=key1,key2 or put sha256 digests in the config's auth.key_hashes
        (no key: refused, unless the config says auth.open: true). Applicant pseudonym key:
        GOVRISK_APPLICANT_KEY or GOVRISK_APPLICANT_KEY_FILE (refused without one).

        SIGTERM, SIGINT and SIGHUP stop the server (forwarded); if this process is killed, the server
        and its workers stop with it (serving/supervise.py).

        Example: GOVRISK_API_KEYS=demo-key GOVRISK_APPLICANT_KEY_FILE=secrets/applicant.key govrisk serve
        """
        import sys

        from govrisk.serving.config import load_serving_config, startup_problem
        from govrisk.serving.supervise import run_supervised

        env = serve_env(config)
        cfg = load_serving_config(env["GOVRISK_SERVING_CONFIG"])  # a bad key fails before BentoML starts
        if problem := startup_problem(cfg):
            typer.echo(f"error: refusing to start: {problem}", err=True)
            raise typer.Exit(2)
        cmd = [sys.executable, "-m", "bentoml", "serve", "govrisk.serving.service:Scoring"]
        cmd += ["--port", str(port or cfg.port), "--host", host or cfg.host]
        raise typer.Exit(run_supervised(cmd, env=env))

    @decisions_app.command("export")
    def export(
        out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
        config: Annotated[str, typer.Option(help="Serving config whose decision log to read.")] = "default",
        url: Annotated[str | None, typer.Option(help="Database URL; default: the config's.")] = None,
    ) -> None:
        """Write the decision log to Parquet for the governance report (outcomes join on applicant_hash).

        Example: govrisk decisions export --out runs/serving/decisions.parquet
        """
        from govrisk.serving.config import load_serving_config
        from govrisk.serving.decision_log import export_parquet

        dl = load_serving_config(config).decision_log
        target = url or dl.resolved_url()
        _has_decisions(target, dl.table, dl.schema_)  # an empty or unreachable log: one line, exit 2
        n = export_parquet(url=target, out=out, table=dl.table, schema=dl.schema_)
        typer.echo(f"wrote {n:,} decisions to {out}")


def _has_decisions(url: str, table: str, schema: str | None) -> None:
    """Raise a UserError (one line, exit 2) naming the log when it holds no decision or cannot be read.

    A SQLite file that does not exist yet is not created by looking at it."""
    import sqlalchemy as sa

    from govrisk.core.errors import UserError
    from govrisk.serving.decision_log import make_engine

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError("--url: not a database URL (e.g. sqlite:///runs/serving/decisions.db)") from None
    shown = parsed.render_as_string(hide_password=True)
    empty = f"decision log {shown} has no decisions yet"
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if database not in (None, "", ":memory:") and not Path(database).is_file():
        raise UserError(f"{empty} (no file {database}); serve and score first")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table, schema=schema):
                raise UserError(f"{empty} (no table {table!r}); serve and score first")
            t = sa.Table(table, sa.MetaData(), schema=schema)
            if conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 0:
                raise UserError(f"{empty} (table {table!r} is empty)")
    except sa.exc.OperationalError as e:
        first = str(e.orig or e).strip().splitlines()[0]
        raise UserError(f"decision log {shown}: cannot read it: {first}") from None
    finally:
        engine.dispose()
