"""The README and the documentation site (issue 13): the README stays a first read, every `govrisk`
command the README and the docs show exists with the options they give it, and the MkDocs site builds
with `--strict` (a broken link, anchor or page outside the nav fails)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
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
DOTTED = re.compile(r"`(govrisk(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
FROM_IMPORT = re.compile(r"^\s*from (govrisk(?:\.\w+)*) import ([\w, ]+)$", re.M)


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


def _module_file(module: str) -> Path | None:
    """The source file of a `govrisk...` module, found through pyproject's package-dir mapping (no
    import: training modules would pull in torch)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool.get("package-dir", {})
    packages = sorted(tool["packages"], key=len, reverse=True)
    for package in packages:
        if module == package or module.startswith(package + "."):
            folder = ROOT / mapping.get(package, package.replace(".", "/"))
            rest = module[len(package) :].lstrip(".").split(".") if module != package else []
            base = folder.joinpath(*rest)
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if rest == [] and candidate == base.with_suffix(".py"):
                    continue
                if candidate.is_file():
                    return candidate
            return None
    return None


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """`govrisk.a.b` is a module, or a name defined at the top of one (or served by its __getattr__)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:k]))
        if path is None:
            continue
        rest = parts[k:]
        if not rest:
            return True
        names = _top_level_names(path)
        return len(rest) == 1 and (rest[0] in names or "__getattr__" in names)
    return False


def test_documented_python_names_exist() -> None:
    """Every `govrisk.x.y` name the README and the docs mention, and every `from govrisk... import`
    of their examples, exists in the code: a renamed class or moved module fails here, not in a
    reader's notebook."""
    names: set[tuple[str, str]] = set()
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        text = page.read_text()
        rel = str(page.relative_to(ROOT))
        names |= {(rel, d) for d in DOTTED.findall(text)}
        for module, imported in FROM_IMPORT.findall(text):
            names |= {(rel, f"{module}.{n.strip()}") for n in imported.split(",") if n.strip()}
    assert len(names) > 20, names
    missing = sorted(f"{rel}: {d}" for rel, d in names if not resolves(d))
    assert not missing, "documented names missing from the code:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("dotted", "ok"),
    [
        ("govrisk.data.features.FeatureBuilder", True),
        ("govrisk.core.config", True),
        ("govrisk.cli.app", True),
        ("govrisk.data.features.NoSuchBuilder", False),
        ("govrisk.nowhere.thing", False),
    ],
)
def test_the_name_check_resolves(dotted: str, ok: bool) -> None:
    assert resolves(dotted) is ok
