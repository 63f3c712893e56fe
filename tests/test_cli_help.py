"""`--help` works for every command, including ones added later (discovered, not listed)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from policyalign.cli import app


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a group: typer vendors click, so not a click.Group
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
    assert "eval answers" in interrupted_message("apply") and "eval answers" not in interrupted_message("distill")
    assert all("checkpoints are kept" in interrupted_message(c) for c in RESUMABLE)
    assert interrupted_message("pull") == interrupted_message(None) == "interrupted"


def test_ctrl_c_in_pa_eval_says_the_answers_so_far_are_kept() -> None:
    """`pa eval` resumes from its journal now: "interrupted" alone let the user think the answers were lost."""
    from policyalign.cli import interrupted_message

    assert interrupted_message("eval") == ("interrupted: the answers so far are kept (responses.partial.jsonl in "
                                           "the output folder); run the same command again to continue")


def test_ctrl_c_in_pa_judge_says_the_verdicts_so_far_are_kept() -> None:
    """`pa judge` journals its verdicts now: "interrupted" alone let the user think hours of judging were lost."""
    from policyalign.cli import interrupted_message

    message = interrupted_message("judge")
    assert "verdicts so far are kept" in message and "FILE.judged.partial.jsonl" in message
    assert "run the same command again to continue" in message


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


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_paragraphs_wrap_to_the_terminal(path: tuple[str, ...]) -> None:
    """Rich help keeps a docstring's line breaks after its first paragraph, so `pa apply --help`
    broke "with --model tiny, demo" / "defaults (...)" mid-sentence on every terminal width. Help
    text after the first paragraph is therefore written as one line per paragraph, which rich then wraps."""
    from policyalign.cli import reflow_help

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    for paragraph in (command.help or "").split("\n\n")[1:]:
        assert "\n" not in paragraph.strip(), f"pa {' '.join(path)}: a line break inside {paragraph!r}"
    assert reflow_help("One.\n\nTwo words\n    wrapped here.\n\n\bkept\nas is") == "One.\n\nTwo words wrapped here.\n\n\bkept\nas is"


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_option_says_what_it_does(path: tuple[str, ...]) -> None:
    """`pa apply --seed` was listed with no text at all: what it seeds and its default were nowhere."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    bare = [p.name for p in command.params if p.param_type_name == "option" and not p.help]
    assert not bare, f"pa {' '.join(path)}: options without help: {bare}"


def test_every_pack_training_setting_can_be_overridden_on_the_command_line() -> None:
    """The pack schema says each `training:` default can be overridden on the command line; `ema_decay`
    could not (no flag on pa distill or pa apply, no `--config` key), short of editing the pack."""
    import json

    from policyalign.apply import _SETTING_NAMES, ApplyOptions
    from policyalign.distill_settings import FLAGS
    from policyalign.schema import schema_text

    settings = json.loads(schema_text("pack.schema.json"))["properties"]["training"]["properties"]
    command = typer.main.get_command(app)
    distill_flags = {o for p in command.commands["distill"].params for o in p.opts}  # type: ignore[attr-defined]
    apply_keys = {_SETTING_NAMES.get(f, f) for f in ApplyOptions.__dataclass_fields__} | {"filter_keep"}  # --keep
    for name in settings:
        if name != "filter_keep":  # a filter setting: pa filter --keep
            assert FLAGS.get(name, "--" + name.replace("_", "-")) in distill_flags, f"pa distill has no flag for {name}"
        assert name in apply_keys, f"pa apply cannot set training.{name}"
