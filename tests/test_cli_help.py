"""`--help` works for every command, including ones added later (discovered, not listed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
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

    assert "to continue, run the same command again" in interrupted_message("apply")
    assert "eval answers" in interrupted_message("apply") and "eval answers" not in interrupted_message("distill")
    assert all("checkpoints are kept" in interrupted_message(c) for c in RESUMABLE)
    assert interrupted_message("pull") == interrupted_message(None) == "interrupted"


def test_ctrl_c_in_pa_eval_says_the_answers_so_far_are_kept() -> None:
    """`pa eval` resumes from its journal now: "interrupted" alone let the user think the answers were lost. It
    says "any": Ctrl-C while the model loaded was told "the answers so far are kept" when none had been made."""
    from policyalign.cli import interrupted_message

    assert interrupted_message("eval") == ("interrupted: any answers generated so far are kept (responses.partial.jsonl "
                                           "in the output folder); to continue, run the same command again")


def test_ctrl_c_in_pa_judge_says_the_verdicts_so_far_are_kept() -> None:
    """`pa judge` journals its verdicts now: "interrupted" alone let the user think hours of judging were lost."""
    from policyalign.cli import interrupted_message

    message = interrupted_message("judge")
    assert "the verdicts of the batches judged so far are kept" in message and "FILE.judged.partial.jsonl" in message
    assert "to continue, run the same command again" in message


# `pa distill ARGS` (run like the `pa` console script) sending itself SIGTERM as it starts loading the model.
_STOPPED_WHILE_LOADING = """
import os, signal, sys
import policyalign.models as models
load = models.load_model
def stopped_while_loading(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return load(*args, **kwargs)
models.load_model = stopped_while_loading
sys.argv = ["pa", "distill", *sys.argv[1:]]
from policyalign.cli import main
main()
"""


_FLAGS = ["--max-steps", "2", "--batch-size", "2", "--max-new-tokens", "4"]
_EARLIER = ("\nstopped by SIGTERM before any training step was finished: the checkpoints in the run directory are an "
            "earlier training's, which --resume would continue instead of this one; to start training from the "
            "beginning, run: ")


def _stopped_while_loading(run, *extra: str):  # type: ignore[no-untyped-def]
    """`pa distill RUN _FLAGS EXTRA` stopped by SIGTERM while its model loads (`_STOPPED_WHILE_LOADING`)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _STOPPED_WHILE_LOADING, str(run), *_FLAGS, *extra],
                          capture_output=True, text=True, timeout=300)


def _complete_checkpoint(run, modified: float):  # type: ignore[no-untyped-def]
    """A complete checkpoint-2 (`checkpoints.resume_point`) in RUN's checkpoints, modified at `modified`."""
    import os

    import torch
    from safetensors.torch import save_file

    kept = run / "checkpoints" / "checkpoint-2"
    kept.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(kept / "adapter_model.safetensors"))
    (kept / "trainer_state.json").write_text("{}")
    os.utime(kept, (modified, modified))
    return kept


def test_a_distill_stopped_before_its_first_step_says_it_starts_from_the_beginning(recorded_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Stopped while the model loaded, `pa distill` said its checkpoints were kept and to continue from the last
    one with --resume: there was none, and the run it suggested trained from the start all the same."""
    import shlex

    run, _ = recorded_run
    proc = _stopped_while_loading(run)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.endswith(
        "\nstopped by SIGTERM before any training step was finished: there is no checkpoint to continue from; "
        f"to start training from the beginning, run: {shlex.join(['pa', 'distill', str(run), *_FLAGS])}\n"), proc.stderr
    assert "--resume" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_fresh_distill_stopped_before_its_first_step_does_not_suggest_continuing_an_earlier_training(  # type: ignore[no-untyped-def]
        recorded_run) -> None:
    """A `pa distill` without --resume removes an earlier training's checkpoints once its trainer is built; stopped
    while the model loaded, those were still there, and it suggested --resume, which continues that training."""
    import shlex

    run, _ = recorded_run
    _complete_checkpoint(run, modified=1)  # an earlier training's
    proc = _stopped_while_loading(run)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.endswith(f"{_EARLIER}{shlex.join(['pa', 'distill', str(run), *_FLAGS])}\n"), proc.stderr
    assert "Traceback" not in proc.stderr

    resumed = _stopped_while_loading(run, "--resume")  # told to continue it: it is the one kept
    assert resumed.stderr.endswith("to continue from the last checkpoint, run: "
                                   f"{shlex.join(['pa', 'distill', str(run), *_FLAGS, '--resume'])}\n"), resumed.stderr


@pytest.mark.parametrize("recorded", [{"training": "an-earlier-one"}, None], ids=["with-id", "before-ids"])
def test_an_earlier_trainings_checkpoint_newer_than_the_command_is_still_called_earlier(  # type: ignore[no-untyped-def]
        recorded_run, recorded) -> None:
    """Who wrote a checkpoint was told by its modification time against the command's start: a run directory
    copied with its times (cp -p, rsync -a) from a machine whose clock runs ahead, or a clock stepped back, made an
    earlier training's checkpoint look like this command's, and `pa distill` stopped while the model loaded told
    the user to --resume it. The training's id beside the checkpoints says whose they are, whatever their times;
    checkpoints recorded without one (a pa from before the id) are never this command's, which records its own."""
    import shlex
    import time

    run, _ = recorded_run
    _complete_checkpoint(run, modified=time.time() + 86400)  # "tomorrow" by the clock of the machine it came from
    if recorded is not None:
        (run / "checkpoints" / "trained_with.json").write_text(json.dumps(recorded))
    proc = _stopped_while_loading(run)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.endswith(f"{_EARLIER}{shlex.join(['pa', 'distill', str(run), *_FLAGS])}\n"), proc.stderr


def test_a_checkpoint_this_training_wrote_is_its_own_whatever_its_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The other way round: a checkpoint whose record carries an id other than the one found as `pa distill`
    started was written by this command's training, even with a time from before it started (a clock stepped
    back, a file system keeping coarse times), and the stop message offers --resume."""
    import click
    import torch
    from safetensors.torch import save_file

    from policyalign.cli import FOUND, PARAMS, _checkpoint_kept

    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(checkpoint / "adapter_model.safetensors"))
    (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "trained_with.json").write_text(json.dumps({"training": "this-one"}))
    os.utime(checkpoint, (1, 1))
    ctx = click.Context(click.Command("distill"))
    for found, expected in ((None, (True, False)), ((checkpoint, "an-earlier-one"), (True, False)),
                            ((checkpoint, "this-one"), (False, True))):
        ctx.meta.update({PARAMS: {"run_dir": tmp_path, "resume": False}, FOUND: found})
        assert _checkpoint_kept("distill", ctx) == expected, found
    ctx.meta[PARAMS] = {"run_dir": tmp_path, "resume": True}  # --resume continues whichever it finds
    assert _checkpoint_kept("distill", ctx) == (True, False)


# Run like the `pa` console script (`from policyalign.cli import main; main()`), sending itself a real SIGINT
# at one moment before a command runs: while a module loads (a meta path hook), or inside an eval of text
# while typer builds the command (where CPython then also marked the caught Ctrl-C unhandled).
_CTRL_C_EARLY = """
import os, signal, sys
where = sys.argv[1]
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == where:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10**6))
sys.meta_path.insert(0, CtrlC())
if where == "build":
    import typer.main
    build = typer.main.get_command
    def interrupted_build(app):
        eval("__import__('os').kill(__import__('os').getpid(), 2) or [i for i in range(10**6)]")
        return build(app)
    typer.main.get_command = interrupted_build
if where == "parse":
    from typer.core import TyperGroup
    parse = TyperGroup.parse_args
    def interrupted_parse(self, ctx, args):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10**6))
        return parse(self, ctx, args)
    TyperGroup.parse_args = interrupted_parse
if where == "command":  # inside `pa list`, where PaGroup.invoke always caught it, then died by SIGINT all the same
    from policyalign.registry import Registry
    def interrupted_discover(self):
        eval("__import__('os').kill(__import__('os').getpid(), 2) or [i for i in range(10**6)]")
    Registry.discover = interrupted_discover
sys.argv = ["pa", "list"]
from policyalign.cli import main
main()
"""


@pytest.mark.parametrize("where", ["typer", "policyalign.cli.model_cmds", "build", "parse", "command"])
def test_ctrl_c_before_the_command_runs_exits_130_without_a_traceback(where: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C in the first ~0.3 s of any `pa` (its modules loading, typer building the command line) was a
    KeyboardInterrupt traceback and a death by SIGINT (-2), or a silent 130, by the moment it landed."""
    import signal
    import subprocess
    import sys

    # `-m`, as `python -m policyalign` runs (and torchrun): there CPython's mark turned exit 130 into SIGINT
    (tmp_path / "ctrl_c_early.py").write_text(_CTRL_C_EARLY)
    proc = subprocess.run([sys.executable, "-m", "ctrl_c_early", where], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip() == "interrupted" and proc.stdout == ""


# `pa list` whose work is hit by Ctrl-C inside a weakref callback run by garbage collection, as torch's and
# transformers' are while a model loads, then goes on working for a while (200 short steps) unless stopped.
_CTRL_C_IN_A_FINALIZER = """
import gc, os, signal, sys, time, weakref
from policyalign.registry import Registry
discover = Registry.discover
class Loaded:
    pass
def callback(ref):
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(10**6))  # the KeyboardInterrupt is raised here, in the finalizer
def discover_while_collecting(self):
    obj = Loaded()
    keep = weakref.ref(obj, callback)
    del obj
    gc.collect()
    for _ in range(200):
        time.sleep(0.01)
    return discover(self)
Registry.discover = discover_while_collecting
sys.argv = ["pa", "list"]
from policyalign.cli import main
main()
"""


def test_ctrl_c_landing_in_a_finalizer_still_stops_the_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C during `pa apply`'s first evaluation often landed in a weakref callback: CPython printed
    "Exception ignored in ... KeyboardInterrupt" and dropped it, and the run went on through distillation
    to the end, exit 0. The interrupt is now sent again once the finalizer returns."""
    import signal
    import subprocess
    import sys

    (tmp_path / "ctrl_c_in_a_finalizer.py").write_text(_CTRL_C_IN_A_FINALIZER)
    proc = subprocess.run([sys.executable, "-m", "ctrl_c_in_a_finalizer"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip() == "interrupted" and proc.stdout == ""


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


def _option_rows(path: tuple[str, ...]) -> dict[str, str]:
    """`pa PATH --help` as rendered, one row per option, keyed by its first long name (wide, so one line each)."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = (re.match(r"│\s*(?:\*\s+)?(--[\w-]+)\s(.*)", line) for line in result.output.splitlines())
    return {row[1]: row[2] for row in rows if row}


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=["pa", *(" ".join(p) for p in COMMANDS)])
def test_help_shows_a_value_only_beside_options_that_take_one(path: tuple[str, ...]) -> None:
    """Every flag was listed with a type, `--quiet <bool>`, `--no-filter <bool>`, `--help <bool>`, as if it took
    a value (`pa apply --quiet true` is refused): a flag shows none, an option that takes a value its type or
    the metavar it was given (`--push-to <str>`, `--compare A B`)."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    rows = _option_rows(path)
    assert "--help" in rows and "<bool>" not in rows["--help"]
    for param in command.params:
        long = next((o for o in param.opts if o.startswith("--")), None)
        if param.param_type_name != "option" or long is None:
            continue
        first = next((w for w in rows[long].split() if not w.startswith("-")), "")  # past -m, --no-resume
        if param.is_flag:  # type: ignore[attr-defined]
            assert not first.startswith("<"), f"pa {' '.join(path)} {long}: {rows[long]!r}"
        else:
            shown = param.metavar.split()[0] if param.metavar else "<"
            assert first.startswith(shown), f"pa {' '.join(path)} {long} shows no value: {rows[long]!r}"


def test_pa_apply_help_shows_values_and_flags_apart() -> None:
    rows = _option_rows(("apply",))
    assert rows["--push-to"].split()[0] == "<str>" and rows["--keep"].split()[0] == "<float>"
    assert rows["--quiet"].split()[0] == "No" and rows["--no-filter"].split()[0] == "Train"
    assert rows["--private"].split()[0] == "With" and rows["--help"].split()[0] == "Show"


def test_pa_apply_options_that_state_a_default_give_tiny_s_where_it_differs() -> None:
    """`pa apply --heldout` said "(default 0.1)", but `--model tiny` held out 0.2: not a pack value, so no note
    named it, and the help's list of tiny's demo defaults left it out."""
    from policyalign.apply import TINY_DEFAULTS

    command = typer.main.get_command(app).commands["apply"]  # type: ignore[attr-defined]
    for param in command.params:
        stated = re.search(r"\(default (\d[\d.]*)", getattr(param, "help", None) or "")
        demo = TINY_DEFAULTS.get(param.name or "")
        if stated and demo is not None and float(stated[1]) != demo:
            assert f"with --model tiny {demo}" in param.help, f"{param.opts[0]}: {param.help!r}"  # type: ignore[attr-defined]


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


def test_ctrl_c_in_pa_distill_says_to_resume_with_resume() -> None:
    """Ctrl-C in `pa distill` said "run the same command again to continue": run again without --resume, it
    trained from step 0 and deleted the checkpoints (checkpoint-85 replaced by checkpoint-10)."""
    from policyalign.cli import interrupted_message

    message = interrupted_message("distill")
    assert "checkpoints are kept" in message and message.endswith("run the same command again with --resume")


def test_a_stop_message_gives_the_command_to_run_again_as_typed_quoted_to_paste() -> None:
    """It said "run the same command again": the user had to find it (a scheduler's log, a closed terminal), and
    `pa distill` needed --resume added. Now it is printed, shell-quoted, `pa distill` given --resume if it lacks it."""
    from policyalign.cli import interrupted_message

    typed = ["distill", "runs/my run", "--max-steps", "5"]
    assert interrupted_message("distill", "stopped by SIGTERM", typed).endswith(
        "to continue from the last checkpoint, run: pa distill 'runs/my run' --max-steps 5 --resume")
    assert interrupted_message("distill", typed=[*typed, "--resume"]).endswith(
        "run: pa distill 'runs/my run' --max-steps 5 --resume")
    assert interrupted_message("judge", typed=["judge", "a b.jsonl"]).endswith("to continue, run: pa judge 'a b.jsonl'")
    assert "\n" not in interrupted_message("apply", typed=["apply", "general", "--out", "it's"])


# Options `pa apply` and `pa distill` both take whose meaning differs: apply's --seed also seeds synthesis and the
# filter, its --max-new-tokens also sets the filter's samples, and its --model names the run's model (distill's
# defaults to the run's).
_APPLY_WIDER = {"--seed", "--max-new-tokens", "--model"}


def test_pa_apply_and_pa_distill_share_each_training_option() -> None:
    """One way to do each thing: an option both commands take is the one shared typer option (`cli.common`), the
    same help; `pa apply` had no --target-modules or --kl-top-k, and its own --teacher and --save-steps text."""
    command = typer.main.get_command(app)
    options = {name: {o: p for p in command.commands[name].params for o in p.opts}  # type: ignore[attr-defined]
               for name in ("apply", "distill")}
    for flag in ("--target-modules", "--kl-top-k", "--teacher", "--save-steps", "--lora-r", "--lr", "--temperature"):
        assert flag in options["apply"], f"pa apply has no {flag}"
    for flag in (set(options["apply"]) & set(options["distill"])) - _APPLY_WIDER:
        assert options["apply"][flag].help == options["distill"][flag].help, flag


def test_every_command_that_draws_progress_bars_takes_quiet(fixture_packs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only `pa apply` took --quiet: a CI job running the stages one by one, or `pa eval`, got a bar on
    stderr per generation pass with no way to turn it off. Each takes it now, draws no bar, and still
    prints its result on stdout."""
    run, pack = tmp_path / "run", str(fixture_packs / "root-pack")
    steps = [["synthesize", pack, "--model", "tiny", "--out", str(run), "--n", "2", "--rounds", "1", "--max-new-tokens", "8"],
             ["filter", str(run), "--max-new-tokens", "4", "--heldout", "0.2"],
             ["distill", str(run), "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--max-new-tokens", "4"],
             ["eval", pack, "--model", "tiny", "--adapter", str(run / "adapter"), "--out", str(tmp_path / "eval"),
              "--limit", "2", "--max-new-tokens", "4", "--no-drift"]]
    for args in steps:
        result = CliRunner().invoke(app, [*args, "--quiet"])
        assert result.exit_code == 0, (args, result.output)
        assert "━" not in result.stderr, (args, result.stderr)  # the bar rich draws
        assert result.stdout.strip(), args  # the result is still printed


def _as_a_user_bound_by_permissions() -> list[str]:
    """A command prefix under which file permissions apply: none needed for a user, and for root (who reads
    any file) `setpriv` dropping the capabilities that let it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root reads any file, and setpriv, to drop that, is not installed")
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("root reads any file, and setpriv may not drop that here (no CAP_SETPCAP)")
    return prefix


def test_an_unreadable_input_is_named_as_one_not_as_a_full_disk(fixture_packs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pack.yaml or run.json without read permission was reported as a disk refusing a write: "make room on
    that disk or make it writable (or give --out another directory)", exit 1. It is bad input: exit 2, the
    file named, and the fix its permissions; stdout stays empty for `--json`."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}\n")
    (run / "run.json").chmod(0)
    (fixture_packs / "root-pack" / "pack.yaml").chmod(0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    for args, unreadable in ((["show", str(fixture_packs / "root-pack")], fixture_packs / "root-pack" / "pack.yaml"),
                             (["runs", str(run), "--json"], run / "run.json"), (["filter", str(run)], run / "run.json")):
        proc = subprocess.run([*_as_a_user_bound_by_permissions(), sys.executable, "-m", "policyalign", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert f"{unreadable}: permission denied: this user may not read this file" in proc.stderr, (args, proc.stderr)
        assert f"chmod u+r {unreadable}" in proc.stderr and "make room" not in proc.stderr, (args, proc.stderr)


def test_an_unreadable_pack_is_listed_and_validated_as_invalid(fixture_packs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One pack whose file this user may not read stopped `pa list` (every pack) and `pa validate` at the first
    such pack, with no listing; it is now an invalid pack like any other, its problem naming the file."""
    unreadable = fixture_packs / "child-pack" / "policy.md"
    unreadable.chmod(0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
           "PA_HOME": str(tmp_path / "home")}
    env.pop("PA_PACKS_PATH", None)

    def pa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_as_a_user_bound_by_permissions(), sys.executable, "-m", "policyalign", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)

    listed = pa("list", "--json", "--packs-path", str(fixture_packs))
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["root-pack"]["valid"] and not rows["child-pack"]["valid"], rows
    validated = pa("validate", str(fixture_packs / "root-pack"), str(fixture_packs / "child-pack"))
    assert validated.returncode == 2 and "ok       root-pack@1.0.0" in validated.stdout, validated.stderr
    assert f"{unreadable}: permission denied: this user may not read this file" in validated.stderr, validated.stderr



@pytest.mark.parametrize("args, env, message", [
    (["eval", "general", "--model", "tiny", "--device", "bogus"], {}, "unknown device 'bogus'"),
    (["distill", "RUN", "--device", "bogus"], {}, "unknown device 'bogus'"),
    (["eval", "general", "--model", "tiny"], {"PA_DTYPE": "int8"}, "unknown PA_DTYPE=int8"),
])
def test_a_malformed_device_or_pa_dtype_is_invalid_input(args: list[str], env: dict[str, str], message: str,
                                                         request, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`--device bogus` and `PA_DTYPE=int8` exited 1, a failed run, where `--backend bogus`, `--judge bogus` and
    a bad PA_PACKS_PATH exit 2: a script could not tell a typo to fix from a run to retry. All exit 2."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "RUN" in args:
        args = [str(request.getfixturevalue("recorded_run")[0]) if a == "RUN" else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_an_hf_endpoint_that_is_no_url_is_named(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """HF_ENDPOINT without its scheme (`hub.example.org`) failed every Hub command with httpx's "Request URL is
    missing an 'http://' or 'https://' protocol", exit 1, naming neither the variable nor the fix."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, when it was imported
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setenv("HF_ENDPOINT", "hub.example.org")
    for args in (["pack", "pull", "org/pack"], ["pull", "--pack", "general"], ["pull", "org/adapter"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "HF_ENDPOINT='hub.example.org' is not an http(s) URL" in result.stderr, (args, result.stderr)
        assert "e.g. https://huggingface.co, or unset it" in result.stderr and result.stdout == ""


def test_a_pa_cache_dir_that_is_a_file_is_named(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PA_CACHE_DIR naming a file ended `pa eval --model tiny` (any command building tiny) in a NotADirectoryError
    traceback; it is invalid input, naming the directory it could not make and the variable to fix."""
    (tmp_path / "a-file").write_text("x\n")
    monkeypatch.setenv("PA_CACHE_DIR", str(tmp_path / "a-file"))
    result = CliRunner().invoke(app, ["eval", "general", "--model", "tiny", "--limit", "1", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'a-file' / 'models'}: the tiny model's cache directory cannot be made" in result.stderr
    assert "point PA_CACHE_DIR at a directory" in result.stderr and "Traceback" not in result.output


def test_pa_version_prints_the_package_version() -> None:
    """A CI log could not record which pa ran: `pa --version` was "No such option", exit 2."""
    from policyalign import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"policyalign {__version__}\n"


def test_a_directory_that_cannot_be_entered_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run directory without execute permission (its files cannot be reached) was a disk refusing a write,
    "make room on that disk", exit 1: it is bad input, exit 2, naming the directory and the chmod that fixes it."""
    run = tmp_path / "run"
    (run / "eval" / "before").mkdir(parents=True)
    (run / "run.json").write_text("{}\n")
    run.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    for args in (["runs", str(run), "--json"], ["eval", "--compare", str(run / "eval" / "before"), str(tmp_path)]):
        proc = subprocess.run([*_as_a_user_bound_by_permissions(), sys.executable, "-m", "policyalign", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stderr)
        assert f"permission denied: this user may not enter the directory {run}" in proc.stderr, (args, proc.stderr)
        assert f"chmod u+rx {run}" in proc.stderr and "make room" not in proc.stderr, (args, proc.stderr)
    run.chmod(0o700)


def _into_a_closed_pipe(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`pa ARGS` (or the script `code`) with stdout a pipe whose reader has gone, as `pa ... | head -1` leaves it
    once head has read its line: each write raises EPIPE, whatever its size and the moment head exits."""
    reader, writer = os.pipe()
    os.close(reader)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    command = ["-c", code] if code else ["-m", "policyalign", *args]
    try:
        return subprocess.run([sys.executable, *command], stdout=writer, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=cwd, timeout=120, check=False)
    finally:
        os.close(writer)


@pytest.mark.parametrize("args", [["--help"], [], ["--version"], ["list"], ["list", "--json"], ["show", "root-pack"],
                                  ["render", "root-pack"], ["runs"], ["runs", "--json"], ["models"], ["list", "--help"],
                                  ["pack", "--help"]], ids=" ".join)
def test_output_into_a_closed_pipe_ends_pa_quietly_with_141(args: list[str], fixture_packs: Path) -> None:
    """`pa render general | head -1` and `pa --help | head -1` exited 1, a failure to a script, as click (and rich,
    for tables and help) answer a closed pipe: it is 141, as the shell reports a command SIGPIPE stopped, with
    nothing on stderr."""
    proc = _into_a_closed_pipe(*args, cwd=fixture_packs.parent)
    assert proc.returncode == 141 and proc.stderr == "", (args, proc.returncode, proc.stderr)


_LEFT_IN_THE_BUFFER = """
import sys
from policyalign.cli import app, main
@app.command("unflushed")
def unflushed() -> None:
    sys.stdout.write("a result written without a flush")
main(["unflushed"])
"""


def test_output_flushed_at_exit_into_a_closed_pipe_ends_pa_quietly_with_141(tmp_path: Path) -> None:
    """Output still in stdout's buffer when a command returned met the closed pipe as the interpreter flushed it:
    "Exception ignored ... BrokenPipeError" on stderr, exit 120."""
    proc = _into_a_closed_pipe(cwd=tmp_path, code=_LEFT_IN_THE_BUFFER)
    assert proc.returncode == 141 and proc.stderr == "", (proc.returncode, proc.stderr)


_A_BAR = """
from policyalign.cli import app, main
from policyalign.progress import progress_bar
@app.command("bar")
def bar() -> None:
    with progress_bar(True, 3, "working") as advance:
        for _ in range(3):
            advance(1)
    print("done")
main(["bar"])
"""


def test_an_error_or_a_progress_bar_into_a_closed_stderr_exits_with_its_own_code(tmp_path: Path) -> None:
    """An error whose message could not be written to stderr (`pa show NAME 2>&1 | true`) exited 1, not its own code
    (2 for bad input): the failed write escaped the handler. A progress bar into it (`pa apply 2>&1 | head`) exited 1
    by rich's own answer, and pointed stdout at /dev/null: it is output into a closed pipe (141)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}

    def run(*command: str) -> int:
        reader, writer = os.pipe()
        os.close(reader)
        try:
            return subprocess.run([sys.executable, *command], stdout=subprocess.DEVNULL, stderr=writer, cwd=tmp_path,
                                  env=env, timeout=120, check=False).returncode
        finally:
            os.close(writer)

    assert run("-m", "policyalign", "show", "no-such-pack") == 2
    assert run("-c", _A_BAR) == 141


_ANOTHER_PIPE = """
import os
from policyalign.cli import app, main
@app.command("feed")
def feed() -> None:
    reader, writer = os.pipe()  # as a subprocess's stdin that exited early
    os.close(reader)
    os.write(writer, b"input the subprocess never read")
main(["feed"])
"""


def test_a_broken_pipe_other_than_pas_output_is_not_taken_for_a_closed_reader(tmp_path: Path) -> None:
    """Any BrokenPipeError reaching the CLI ended pa quietly with 141, a subprocess's or a socket's too: a failure
    a script read as `head` having had enough. Only stdout or stderr being the closed pipe is."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _ANOTHER_PIPE], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode not in (0, 141) and "BrokenPipeError" in proc.stderr, (proc.returncode, proc.stderr)


# Run `pa ARGS` in this process and print the heavy modules it loaded: what a command imports is what it waits for.
_HEAVY_AFTER = """
import contextlib, io, sys
from policyalign.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(" ".join(m for m in ("torch", "transformers", "numpy", "jsonschema", "policyalign.stages") if m in sys.modules))
"""


@pytest.mark.parametrize(("args", "allowed"), [(["--version"], ""), (["--help"], ""), (["runs"], ""),
                                               (["list"], "jsonschema"), (["render", "root-pack"], "jsonschema")],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_the_quick_commands_import_no_numpy_or_torch(args: list[str], allowed: str, fixture_packs: Path) -> None:
    """Each `pa list`, `pa show` and `pa render` imported numpy to load a pack: its seed checks normalize text, and
    `normalize` lived beside the MinHash code that needs numpy. `pa runs` imported every stage (evaluation, judges,
    models), where its code lived in apply.py. No command that only reads packs or runs waits for numpy, torch or
    the stages; those that load a pack do validate it with jsonschema."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _HEAVY_AFTER, *args], capture_output=True, text=True, env=env,
                          cwd=fixture_packs.parent, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == allowed, (args, proc.stdout, proc.stderr)
