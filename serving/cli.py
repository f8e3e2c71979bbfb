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

        API keys: set GOVRISK_API_KEYS=key1,key2 or put sha256 digests in the config's auth.key_hashes.

        Example: GOVRISK_API_KEYS=demo-key govrisk serve --config default --port 3000
        """
        import subprocess
        import sys

        from govrisk.serving.config import load_serving_config

        env = serve_env(config)
        cfg = load_serving_config(env["GOVRISK_SERVING_CONFIG"])  # a bad key fails before BentoML starts
        cmd = [sys.executable, "-m", "bentoml", "serve", "govrisk.serving.service:Scoring"]
        cmd += ["--port", str(port or cfg.port), "--host", host or cfg.host]
        raise typer.Exit(subprocess.call(cmd, env=env))

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
        n = export_parquet(url=url or dl.resolved_url(), out=out, table=dl.table, schema=dl.schema_)
        typer.echo(f"wrote {n:,} decisions to {out}")
