"""`--help` works for every command, including ones added later (discovered, not listed)."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from policyalign.cli import app


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))  # type: ignore[arg-type]


def test_core_commands_exist() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"list", "show", "validate", "new", "render", "index"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_ctrl_c_promises_a_resume_only_where_one_exists() -> None:
    """Ctrl-C in `pa pull` or `pa eval` said "finished stages, scores and checkpoints are kept"."""
    from policyalign.cli import RESUMABLE, interrupted_message

    assert "run the same command again to continue" in interrupted_message("apply")
    assert all("checkpoints are kept" in interrupted_message(c) for c in RESUMABLE)
    assert interrupted_message("pull") == interrupted_message("eval") == interrupted_message(None) == "interrupted"


def _help_texts(path: tuple[str, ...]) -> list[str]:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_text_survives_rich_markup(path: tuple[str, ...]) -> None:
    """`--help` renders help through rich markup, which swallows an unescaped `[word]` or `[@word]`:
    `pa distill --help` said "needs the  extra" for "needs the [vllm] extra". Escape as `\\[`."""
    from rich.markup import render

    for text in _help_texts(path):
        assert render(text).plain == text.replace("\\[", "["), f"rich markup eats part of: {text!r}"
