"""The command line: every subcommand explains itself with an example; bad input exits cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from govrisk.cli import app

runner = CliRunner()


def _leaf_commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            out += _leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


LEAVES = _leaf_commands(typer.main.get_command(app))


def test_there_are_subcommands() -> None:
    assert ("data", "generate") in LEAVES and ("data", "validate") in LEAVES


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_subcommand_help_has_an_example(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, result.output


def test_generate_validate_describe_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "c"
    result = runner.invoke(app, ["data", "generate", "--applicants", "800", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "content hash" in result.output
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0
    described = runner.invoke(app, ["data", "describe", str(out), "--json"])
    assert described.exit_code == 0, described.output
    assert '"oracle_auc"' in described.output


def test_validate_of_a_missing_folder_exits_2_with_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "nope" in result.output
