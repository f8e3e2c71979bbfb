"""`govrisk serve` and `govrisk decisions export`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the serving commands to the main CLI (called once by govrisk.cli)."""
