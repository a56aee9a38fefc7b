"""Every `fewshot` command in the README parses as written (options that exist, values of
the right type), and the cheap ones run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from conftest import CHECKOUT, run_cli

README = (CHECKOUT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """`fewshot ...` commands of the README's indented blocks and inline code, with
    continuation lines joined and optional `[...]` parts dropped."""
    lines, joined = README.splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        if lines[i].startswith("    ") or line.startswith("fewshot "):
            joined.append(line)
        i += 1
    joined += re.findall(r"`(fewshot [^`]+)`", README)
    commands = []
    for line in joined:
        for part in line.split("&&"):
            part = part.strip()
            if not part.startswith("fewshot ") or "..." in part or "<" in part:
                continue
            while re.search(r"\[[^\[\]]*\]", part):
                part = re.sub(r"\s*\[[^\[\]]*\]", "", part)
            commands.append(" ".join(part.split()))
    return sorted(set(commands))


def test_the_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert any(c.startswith("fewshot evaluate") for c in commands)
    assert any(c.startswith("fewshot adapt") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str) -> None:
    from fewshot.cli import app

    args = shlex.split(command)[1:]
    group = typer.main.get_command(app)
    if not args or args[0].startswith("-"):
        assert args in ([], ["--version"]), command
        return
    name, rest = args[0], args[1:]
    command_obj = group.get_command(group.make_context("fewshot", [name]), name)
    assert command_obj is not None, f"no such command: {name}"
    if hasattr(command_obj, "get_command") and rest and not rest[0].startswith("-"):
        command_obj, rest = command_obj.get_command(None, rest[0]), rest[1:]
        assert command_obj is not None, command
    try:
        command_obj.make_context(name, list(rest))  # raises on an unknown option
    except Exception as exc:  # Typer vendors click: matched by name
        if type(exc).__name__ != "MissingParameter":
            raise  # an inline snippet may show one option of a longer command, no more


def test_the_cheap_readme_commands_run(tmp_path: Path) -> None:
    for command in ("fewshot list", "fewshot list heads", "fewshot --version",
                    "fewshot data sample new_disease/"):
        assert command in readme_commands() or command in README, command
        done = run_cli(*shlex.split(command)[1:], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert sorted(p.name for p in (tmp_path / "new_disease").iterdir())
