"""The README and the documentation site (issue 13): the README stays a first read, every `govrisk`
command the README and the docs show exists with the options they give it, and the MkDocs site builds
with `--strict` (a broken link, anchor or page outside the nav fails)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from govrisk.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 15_000  # "README.md <= 15 KB" (issue 13): the stricter reading of a KB
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
INLINE = re.compile(r"(?<!`)`(govrisk [^`]+)`(?!`)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _root() -> Any:
    return typer.main.get_command(app)


def shell_blocks(text: str) -> list[str]:
    """The bodies of fenced code blocks marked as shell."""
    return [m["body"] for m in FENCE.finditer(text) if m["lang"].lower() in SHELL_LANGS]


def govrisk_lines(block: str) -> list[str]:
    """Each `govrisk ...` command line of a shell block: continuations joined, comments, prompts and
    leading environment assignments dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a command line we can judge
            continue
        if words and words[0] == "$":
            words = words[1:]
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words and Path(words[0]).name == "govrisk":
            out.append(shlex.join(["govrisk", *words[1:]]))
    return out


def check_command(line: str) -> list[str]:
    """Problems with one `govrisk ...` line: an unknown command, an unknown option, too many arguments."""
    words = shlex.split(line)[1:]
    cmd, path = _root(), ["govrisk"]
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        name = words.pop(0)
        if name.isupper():  # `govrisk COMMAND --help`: a placeholder for any command
            return []
        if name not in cmd.commands:
            return [f"{line!r}: {' '.join(path)} has no command {name!r} (has {sorted(cmd.commands)})"]
        cmd, path = cmd.commands[name], [*path, name]
    where = " ".join(path)
    options = {
        o: p for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)
    }
    n_arguments = sum(1 for p in cmd.params if p.param_type_name == "argument")
    extra_args = bool((cmd.context_settings or {}).get("allow_extra_args"))
    problems, positionals = [], []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            if name == "--help":
                continue
            if name not in options:
                problems.append(f"{line!r}: `{where}` has no option {name} (has {sorted(options)})")
                continue
            if "=" not in word and not options[name].is_flag:
                i += 1  # the option's value
        elif not word.startswith("["):  # `[KIND]`: an optional placeholder in prose
            positionals.append(word)
    if hasattr(cmd, "commands"):
        if positionals:
            problems.append(f"{line!r}: `{where}` is a group; {positionals[0]!r} is not one of its commands")
        return problems
    if extra_args:  # train, tune: beyond the arguments, only key=value overrides
        for word in positionals[n_arguments:]:
            if "=" not in word:
                problems.append(f"{line!r}: `{where}` takes key=value overrides, not {word!r}")
    elif len(positionals) > n_arguments:
        problems.append(f"{line!r}: `{where}` takes {n_arguments} argument(s), got {positionals}")
    return problems


def documented_commands() -> list[tuple[str, str]]:
    """(file, line) for every govrisk command line of the README (shell blocks and inline code) and of
    the shell blocks of docs/**/*.md."""
    found = []
    readme = README.read_text()
    for block in shell_blocks(readme):
        found += [("README.md", line) for line in govrisk_lines(block)]
    found += [("README.md", line) for span in INLINE.findall(readme) for line in govrisk_lines(span)]
    for page in sorted(DOCS.rglob("*.md")):
        rel = str(page.relative_to(ROOT))
        for block in shell_blocks(page.read_text()):
            found += [(rel, line) for line in govrisk_lines(block)]
    return found


def test_readme_is_a_first_read() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; the limit is {README_MAX_BYTES:,}"


def test_readme_links_into_docs_exist() -> None:
    links = re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)(?:#[^)]*)?\)", README.read_text())
    assert links, "the README links into docs/"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_documented_commands_exist() -> None:
    commands = documented_commands()
    files = {f for f, _ in commands}
    assert "README.md" in files and len(files) > 3, f"too few command lines found: {files}"
    problems = [p for f, line in commands for p in (f"{f}: {x}" for x in check_command(line))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        "govrisk trian --config county_cnn",
        "govrisk data validate runs/data/x --strict",
        "govrisk data validate a b",
        "govrisk train --config county_cnn runs/x",
        "govrisk models",
        "govrisk models frobnicate",
        "govrisk COMMAND --help",
    ],
)
def test_the_command_check_catches_mistakes(line: str) -> None:
    if line in {"govrisk models", "govrisk COMMAND --help"}:  # a group alone; a placeholder command
        assert check_command(line) == []
    else:
        assert check_command(line), line


def test_cli_reference_covers_every_command() -> None:
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.render()

    def paths(cmd: Any, path: list[str]) -> list[str]:
        subs = getattr(cmd, "commands", {})
        return [" ".join(path)] + [p for n, c in subs.items() for p in paths(c, [*path, n])]

    for path in paths(_root(), ["govrisk"]):
        assert f"`{path}`" in page, f"the CLI reference lacks {path}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    cmd = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()
