"""MkDocs hook: write `reference/cli.md` from the Typer app at build time.

The CLI reference is never edited by hand: every build walks `typer.main.get_command(govrisk.cli.app)`
and renders each command's usage, help text, arguments and options, so the page cannot drift from the
code. Registered in mkdocs.yml under `hooks:`.
"""

from __future__ import annotations

import html
import re
from typing import Any

import typer
from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"


def _escape(text: str) -> str:
    """HTML-escape text outside `code spans` (help texts say <experiment>), and table pipes."""
    parts = re.split(r"(`[^`]*`)", text)
    out = [
        p if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p, quote=False)
        for p in parts
    ]
    return "".join(out).replace("|", "\\|")


def _help_markdown(help_text: str) -> str:
    """A command's docstring as Markdown: paragraphs kept, `Example:` lines as shell blocks."""
    lines: list[str] = []
    for para in (help_text or "").strip().split("\n\n"):
        para = para.strip()
        if para.startswith("Example:"):
            lines += ["```bash", para.removeprefix("Example:").strip(), "```", ""]
        else:
            lines += [_escape(" ".join(para.split())), ""]
    return "\n".join(lines)


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    rows = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            rows += _walk(sub, [*path, name])
    return rows


def render() -> str:
    from govrisk.cli import app

    ctx_cls = typer.main.get_command(app).context_class
    root = typer.main.get_command(app)
    out = [
        "# CLI reference",
        "",
        "Generated from the Typer app (`govrisk.cli:app`) every time the site is built; "
        "`govrisk COMMAND --help` prints the same.",
        "",
    ]
    for path, cmd in _walk(root, ["govrisk"]):
        name = " ".join(path)
        ctx = ctx_cls(cmd, info_name=path[-1])
        level = "#" * min(len(path) + 1, 4)
        out += [f"{level} `{name}`", ""]
        if getattr(cmd, "commands", None):
            out += [_help_markdown(cmd.help or ""), "| command | what it does |", "|---|---|"]
            for sub_name, sub in cmd.commands.items():
                summary = (sub.help or "").strip().split("\n")[0]
                out.append(f"| `{name} {sub_name}` | {_escape(summary)} |")
            out.append("")
            continue
        usage = " ".join([name, *cmd.collect_usage_pieces(ctx)])
        if (cmd.context_settings or {}).get("allow_extra_args"):
            usage += " [KEY=VALUE ...]"
        out += ["```text", usage, "```", "", _help_markdown(cmd.help or "")]
        records = [(p, p.get_help_record(ctx)) for p in cmd.params if not getattr(p, "hidden", False)]
        records = [(p, r) for p, r in records if r]
        if records:
            out += ["| argument / option | description |", "|---|---|"]
            for p, (decl, help_) in records:
                shown = decl if p.param_type_name == "option" else f"{decl} (argument)"
                out.append(f"| `{shown}` | {_escape(help_ or '')} |")
            out.append("")
    return "\n".join(out) + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files
