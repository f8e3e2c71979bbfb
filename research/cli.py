"""`govrisk tune`, `govrisk report`, `govrisk promote`, `govrisk models audit`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Attach the research commands to the main CLI (called once by govrisk.cli)."""
