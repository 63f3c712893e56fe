"""The `pa` command line: a thin layer that parses options and calls one function.

Each area registers its commands from its own module (`pack_cmds`, `model_cmds`,
...). Known errors become a message on stderr and an exit code, never a
traceback: that handling lives once, in `PaGroup.invoke` (and, for Ctrl-C before a
command runs, in `exit_interrupted`).
"""

from __future__ import annotations

import _thread
import os
import signal
import select
import sys
import time
from typing import Any, NoReturn

from ..errors import Stopped
from ..launch import launch_rank

# Ctrl-C: the shell's code for SIGINT (128 + 2), as for any interrupted Unix command.
INTERRUPTED = 130
# Output into a closed pipe (`pa list | head -1`): the shell's code for a command SIGPIPE stopped (128 + 13).
CLOSED_PIPE = 141
# Where `PaGroup.make_context` keeps the arguments as typed, in the meta all of a command line's contexts share.
TYPED = "policyalign.typed"
# Where `PaCommand.invoke` keeps the command's parameters, in that meta, for the stop message (`_checkpoint_kept`).
PARAMS = "policyalign.params"
# Where it keeps, for `pa distill`, the checkpoint found as the command started and the training that wrote it
# (`checkpoints.checkpoint_owner`), for the stop message to tell an earlier training's checkpoints from this one's.
FOUND = "policyalign.found"


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a command the signal stopped: 130, 143 or 129."""
    return 128 + exc.signum if isinstance(exc, Stopped) else INTERRUPTED


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _redeliver_interrupt(unraisable: Any) -> None:
    """A Ctrl-C (or SIGTERM) whose exception is raised inside a finalizer (a weakref callback torch or
    transformers runs in garbage collection, a `__del__`) is one CPython prints as "Exception ignored"
    and drops: the run went on to the end, as if the key was never pressed. The signal is sent again
    by a thread a moment later, once this hook has returned: raised in the hook, it would be dropped
    the same way (`threading.Thread.start` waits for its thread, so it is not used here). Landing in a
    finalizer again, it comes back here and is sent again."""
    exc = unraisable.exc_value
    if not isinstance(exc, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    _thread.start_new_thread(_send_again, (exc.signum if isinstance(exc, Stopped) else signal.SIGINT,))


def _send_again(signum: int) -> None:
    time.sleep(0.05)
    os.kill(os.getpid(), signum)


def handle_stop_signals() -> None:
    """SIGTERM and SIGHUP stop `pa` as Ctrl-C does (`Stopped`), unless ignored (`nohup` ignores SIGHUP:
    that run goes on), and no interrupt is lost in a finalizer (`_redeliver_interrupt`)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_stopped)
    sys.unraisablehook = _redeliver_interrupt


def exit_interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C before `PaGroup.invoke` runs a command: while the command line's modules load (the first
    ~0.3 s of every `pa`), or typer builds and parses it. That was a KeyboardInterrupt traceback, killed
    by SIGINT (-2 to a parent process), or a silent exit 130, by the moment; now it is what Ctrl-C
    does in a command, without a traceback. Said by rank 0 alone under torchrun, as a command's stop message is:
    each rank got the signal, and each said it."""
    if launch_rank()[0] == 0:
        say(f"\n{_stopped_word(exc)}\n")
    forget_interrupt()
    raise SystemExit(exit_code(exc))


def _stopped_word(exc: KeyboardInterrupt) -> str:
    """How the message after a stop begins: "interrupted" (Ctrl-C) or "stopped by SIGTERM"."""
    return f"stopped by {signal.Signals(exc.signum).name}" if isinstance(exc, Stopped) else "interrupted"


def exit_closed_pipe() -> NoReturn:
    """The reader of pa's output went away (`pa render general | head -1`): stop quietly with `CLOSED_PIPE`.

    Python ignores SIGPIPE, so the write raises BrokenPipeError instead, which click turned into a silent exit 1
    (rich into its own `SystemExit(1)`): to a script, a failure like any other. 141 is what a shell reports for
    `yes` in `yes | head -1`, and, like 130 for Ctrl-C, an exit code rather than a death by the signal, which
    would stop pa mid-write anywhere, a Hub upload's socket included. stdout is pointed at /dev/null, so that
    what its buffer still holds is not flushed into the closed pipe at exit ("Exception ignored ...
    BrokenPipeError", exit 120); stderr too when it is the closed pipe (`pa apply 2>&1 | head`)."""
    _discard(sys.stdout)
    try:
        sys.stderr.flush()
    except OSError:
        _discard(sys.stderr)
    raise SystemExit(CLOSED_PIPE)


def closed_pipe(stream: Any) -> bool:
    """Whether `stream` is a pipe whose reader has gone. A BrokenPipeError from anything else that reached the CLI
    (a pipe to a subprocess, a socket) ended pa as a silent 141 too, a failure hidden as `head` having read enough.
    A stream without a file descriptor (a test's buffer), or no poll() (Windows), counts as closed, as before."""
    try:
        fd = stream.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):
        return True
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _discard(stream: Any) -> None:
    """Point `stream`'s file descriptor at /dev/null; a stream without one (a test's buffer) is left alone."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def flush_output() -> None:
    """Flush stdout before the interpreter does: output still buffered at exit met a closed pipe there as
    "Exception ignored ... BrokenPipeError" and exit 120, outside any handler."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        exit_closed_pipe()


def say(text: str) -> None:
    """`text` on stderr, if it is still there: after SIGHUP the terminal that was stderr is gone, and
    writing to it raises OSError (EIO), which would turn a clean stop into a traceback."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        pass


def tell_error(text: str) -> None:
    """`text` on stderr, where an error's message goes. Where stderr cannot be written (`2>&-`, a pipe whose reader
    has gone) it is not said, and pa still exits with the error's code: the failed write escaped `PaGroup.invoke`,
    and click ended it as exit 1, whatever the error. stderr is then pointed at /dev/null (`_discard`), so that
    its buffer is not flushed into it again at exit ("Exception ignored", exit 120)."""
    try:
        typer.echo(text, err=True)
    except OSError:
        _discard(sys.stderr)


def forget_interrupt() -> None:
    """Let a Ctrl-C that was handled exit 130. CPython marks a KeyboardInterrupt that escapes an eval or
    exec of source text (typer evaluating annotations, a dataclass's generated `__init__`) as unhandled,
    even once caught, and under `python -m` (`python -m policyalign`, torchrun) kills the process with
    SIGINT when it exits: -2 to a parent process, by where the Ctrl-C landed. Each eval of text clears
    that mark before it runs."""
    eval("None")


try:
    import typer
    from typer.core import TyperCommand, TyperGroup, TyperOption

    from ..errors import PolicyAlignError, disk_error, unreadable_error
except KeyboardInterrupt as exc:
    exit_interrupted(exc)


def flags_take_no_value(params: list) -> list:  # type: ignore[type-arg]
    """Give each flag an empty metavar: typer's rich help shows a type beside every option, so `--quiet <bool>`
    and `--help <bool>` said the flag takes a value (`pa apply --quiet true` is refused). An option that takes
    one keeps its type (`--push-to <str>`) or the metavar the code gave it (`--compare A B`)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class PipedHelp:
    """Help into a closed pipe (`pa --help | head -1`) ends pa as any output there does (`exit_closed_pipe`).

    typer prints help with a rich Console of its own, whose answer to the BrokenPipeError is `SystemExit(1)`:
    the only SystemExit that formatting help raises."""

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        try:
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        except SystemExit:
            exit_closed_pipe()


class PaCommand(PipedHelp, TyperCommand):
    """A command whose help shows no value for a flag (`flags_take_no_value`)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return flags_take_no_value(super().get_params(ctx))

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        ctx.meta[PARAMS] = ctx.params  # the stop message reads them (`_checkpoint_kept`)
        if ctx.command.name == "distill":
            ctx.meta[FOUND] = _checkpoint_found(ctx.params.get("run_dir"))
        return super().invoke(ctx)


class PaGroup(PipedHelp, TyperGroup):
    """Turns every `PolicyAlignError` raised by a sub-command into a message and exit code.

    So does a disk that refuses a write outside `io.atomic_open` (a checkpoint, a cache entry), a file
    or directory this user may not read (`unreadable_error`: exit 2, as for any bad input),
    Ctrl-C, which says the work done so far is kept rather than printing a blank line, and output
    into a closed pipe, which ends pa quietly (`exit_closed_pipe`).
    """

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.help = reflow_help(command.help)

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return flags_take_no_value(super().get_params(ctx))

    def make_context(self, info_name, args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        """Parsing the command line: typer turns Ctrl-C here into a silent exit 130. The arguments as typed are
        kept (`TYPED`, in the meta every context shares; the outermost group's) for the stop message to repeat.
        `pa --help` and `pa --version` print here, before any command runs (`pa --help | head -1`)."""
        typed = list(args)
        try:
            ctx = super().make_context(info_name, args, *rest, **kwargs)
        except KeyboardInterrupt as exc:
            exit_interrupted(exc)
        except BrokenPipeError:
            exit_closed_pipe()
        ctx.meta.setdefault(TYPED, typed)
        return ctx

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except PolicyAlignError as exc:
            tell_error(f"error: {exc}")
            ctx.exit(exc.exit_code)
        except BrokenPipeError as exc:
            if not (closed_pipe(sys.stdout) or closed_pipe(sys.stderr)):  # a subprocess's, a socket's: a bug, shown
                # as one (click ends any EPIPE as a silent exit 1)
                raise RuntimeError("a pipe that is not pa's output broke") from exc
            exit_closed_pipe()
        except OSError as exc:
            error = unreadable_error(exc) or disk_error(exc)
            if error is None:
                raise
            tell_error(f"error: {error}")
            ctx.exit(error.exit_code)
        except KeyboardInterrupt as exc:
            command = ctx.invoked_subcommand
            if launch_rank()[0] == 0:  # once under torchrun, as the trainer's note that it is stopping is said
                kept, earlier = _checkpoint_kept(command, ctx)
                message = interrupted_message(command, _stopped_word(exc), ctx.meta.get(TYPED), kept, earlier=earlier)
                say(f"\n{message}\n")
            forget_interrupt()
            ctx.exit(exit_code(exc))


def reflow_help(text: str | None) -> str | None:
    """Each paragraph of a command's help on one line, for rich to wrap to the terminal.

    Typer's rich help keeps a docstring's line breaks after the first paragraph, so a docstring
    wrapped at 100 columns broke sentences mid-line at every width. A paragraph starting with
    click's `\\b` marker keeps its lines, as click promises."""
    if not text:
        return text
    paragraphs = text.split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
                       for p in paragraphs)


# Commands that keep their finished work in a run directory and go on from it when run again.
RESUMABLE = ("apply", "synthesize", "filter", "distill")


def interrupted_message(command: str | None, how: str = "interrupted", typed: list[str] | None = None,
                        checkpoint: bool = True, *, earlier: bool = False) -> str:
    """What Ctrl-C leaves: the run stages, `pa eval` and `pa judge` keep work to continue from; `pa pull`
    stopped halfway has nothing to resume, and saying otherwise would be a promise not kept. `pa distill`
    continues only with --resume: without it, it trains from step 0 and removes the old checkpoints; without
    a `checkpoint` to continue from (stopped while the model loaded, before its first step ended) it starts from
    the beginning either way, which it says rather than suggest a --resume with nothing to resume. Nor does it
    suggest one where the checkpoint is an `earlier` training's, which a `pa distill` without --resume stopped
    before it removed them leaves: --resume would continue that training, not this one.
    `how` begins it: "interrupted", or "stopped by SIGTERM" (`Stopped`), which keep the same. `typed`, the
    arguments as typed, is repeated as the command to run (`_run_again`)."""
    if command == "distill" and earlier:
        return (f"{how} before any training step was finished: the checkpoints in the run directory are an earlier "
                f"training's, which --resume would continue instead of this one; to start training from the "
                f"beginning, {_run_again(typed)}")
    if command == "distill" and not checkpoint:
        return (f"{how} before any training step was finished: there is no checkpoint to continue from; "
                f"to start training from the beginning, {_run_again(typed)}")
    if command == "distill":  # run again as typed, it trains afresh and deletes the checkpoints it was told are kept
        return (f"{how}: finished stages, scores and checkpoints are kept; to continue from the last checkpoint, "
                + _run_again(typed, "--resume"))
    if command in RESUMABLE:
        kept = "scores, eval answers" if command == "apply" else "scores"  # apply's eval stages journal their answers
        return f"{how}: finished stages, {kept} and checkpoints are kept; to continue, {_run_again(typed)}"
    if command == "eval":
        # "any": Ctrl-C while the model loads has answered nothing yet, and its empty output folder is removed
        return (f"{how}: any answers generated so far are kept (responses.partial.jsonl in the output folder); "
                f"to continue, {_run_again(typed)}")
    if command == "judge":  # a batch is what a model judge finishes (`verdicts.judge_chunk`)
        return (f"{how}: the verdicts of the batches judged so far are kept beside the output (X.partial.jsonl for "
                f"--out X.jsonl, FILE.judged.partial.jsonl by default); to continue, {_run_again(typed)}")
    return how


def _checkpoint_kept(command: str | None, ctx: Any) -> tuple[bool, bool]:
    """(kept, earlier): whether a stopped `pa distill` left a checkpoint in its run directory for --resume
    (`checkpoints.resume_point`), and whether that is an earlier training's. One stopped before its first step
    ended (while the model loaded) has none of its own; without --resume, the checkpoints there then are those of
    an earlier training (it removes them once its trainer is built). Told by identity, not by clock: a training
    records its id beside its checkpoints before its first step (`checkpoints.training_id`), so the checkpoint
    is an earlier training's when it is the one found as the command started (`FOUND`), trained by the same
    training, or when its record holds no id: written by a pa from before the id was recorded, or by no
    training of this command, which writes its id before it writes a checkpoint. (Their modification time,
    compared with the command's start, was wrong after clock skew or a run directory copied with its times.)
    (True, False) for other commands, and where the directory cannot be read: the message then says what it
    always said."""
    params = ctx.meta.get(PARAMS) or {}
    run_dir = params.get("run_dir") if command == "distill" else None
    if run_dir is None:
        return True, False
    from ..checkpoints import checkpoint_owner

    try:
        found = checkpoint_owner(run_dir)
    except OSError:
        return True, False
    if found is None:
        return False, False
    at_start = ctx.meta.get(FOUND)
    training = found[1]
    earlier = not params.get("resume") and (training is None or (at_start is not None and training == at_start[1]))
    return not earlier, earlier


def _checkpoint_found(run_dir: Any) -> tuple[Any, str | None] | None:
    """`checkpoints.checkpoint_owner` of `pa distill`'s run directory as it starts; None where it cannot say
    (no directory, an unreadable one): the command itself then says what is wrong."""
    if run_dir is None:
        return None
    from ..checkpoints import checkpoint_owner

    try:
        return checkpoint_owner(run_dir)
    except OSError:
        return None


def _run_again(typed: list[str] | None, needed: str = "") -> str:
    """"run: pa ARGS", the command as typed, shell-quoted to paste, with `needed` (a flag) added when it lacks it:
    "run the same command again" left the user to find it, and a `pa distill` run again without --resume trained
    from step 0. Without `typed` (no command line: a caller of `interrupted_message`), the same words as before."""
    if typed is None:
        return f"run the same command again{f' with {needed}' if needed else ''}"
    import shlex

    return "run: " + shlex.join(["pa", *typed, *([needed] if needed and needed not in typed else [])])


class PaTyper(typer.Typer):
    """A typer app whose commands are `PaCommand`s: set here once, not in each `@app.command()`."""

    def command(self, *args, cls=None, **kwargs):  # type: ignore[no-untyped-def]
        return super().command(*args, cls=cls or PaCommand, **kwargs)


# For scripts, under `pa --help` (README.md says more): the codes of errors.py's classes and of `exit_code`.
EXIT_CODES = ("Exit codes: 0 success, 2 invalid input, 1 any other failure, 3 the Hub unavailable (unreachable, "
              "timed out, HTTP 5xx, 429 or 408), worth retrying, 130 interrupted by Ctrl-C (143 by SIGTERM, 129 by SIGHUP), "
              "141 output into a closed pipe (pa list | head -1).")

app = PaTyper(
    cls=PaGroup,
    help="policyalign: align an LLM directly to a natural-language safety policy pack.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(given: bool) -> None:
    """`--version`'s callback: eager, so it answers before a command is looked for (`pa --version` has none)."""
    if given:
        from .. import __version__

        typer.echo(f"policyalign {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print policyalign's version and exit.")) -> None:
    """`pa --version`, for a CI log to record which pa ran: it was "No such option", exit 2."""


def sub_app(name: str, help: str) -> typer.Typer:
    """A command group (e.g. `pa pack push`) with the same error handling."""
    group = PaTyper(cls=PaGroup, help=help, no_args_is_help=True, pretty_exceptions_enable=False)
    app.add_typer(group, name=name)
    return group


# Importing a command module attaches its commands to `app`, in this order in `pa --help`;
# heavy imports stay inside the commands. isort: off
try:
    from . import pack_cmds, run_cmds, synth_cmds, train_cmds, eval_cmds, hub_cmds, model_cmds  # noqa: E402,F401,I001
except KeyboardInterrupt as exc:
    exit_interrupted(exc)
# isort: on


def main(argv: list[str] | None = None) -> None:
    try:
        handle_stop_signals()
        app(args=argv if argv is not None else sys.argv[1:], prog_name="pa")
    except KeyboardInterrupt as exc:  # while typer builds the click command from `app`
        exit_interrupted(exc)
    except SystemExit:  # how every command ends (typer's standalone mode)
        flush_output()
        raise
