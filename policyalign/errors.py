"""Error types that carry where a problem is and how to fix it.

Every error the user can cause (bad pack, bad option, missing model) is a
`PolicyAlignError`; the CLI prints it without a traceback and exits with its
`exit_code`. Anything else escaping is a bug in policyalign.
"""

from __future__ import annotations

import difflib
import errno
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: which file, where inside it, what, and the fix."""

    file: str
    where: str
    message: str
    hint: str = ""
    # A line of the report that is no problem of its own: a check that waits for the problems listed with it
    # ("eval items' categories not checked until ..."). Listed, not counted (`problem_count`).
    note: bool = False

    def __str__(self) -> str:
        place = ":".join(part for part in (self.file, self.where) if part)
        text = f"{place}: {self.message}" if place else self.message
        return f"{text}\n    hint: {self.hint}" if self.hint else text


def problem_count(problems: "list[Problem]") -> int:
    """How many of `problems` are problems: notes (`Problem.note`) are listed with them but not counted, so one
    extends cycle is "1 problem" in each pack of the loop, as it was before the notes said what it holds up."""
    return sum(1 for problem in problems if not problem.note)


class PolicyAlignError(Exception):
    """Base class for errors caused by input, configuration or environment."""

    exit_code = 1

    def __init__(self, message: str, *, file: str = "", where: str = "", hint: str = "") -> None:
        self.problem = Problem(file=file, where=where, message=message, hint=hint)
        super().__init__(str(self.problem))


class InvalidInputError(PolicyAlignError):
    """Input (a pack, an eval file, an option) is invalid; exit code 2."""

    exit_code = 2


class PackError(InvalidInputError):
    """A pack failed validation. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("PackError needs at least one problem")
        self.problems = list(problems)
        Exception.__init__(self, self.render())
        self.problem = self.problems[0]

    def render(self) -> str:
        count = problem_count(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} found:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class ResolveError(InvalidInputError):
    """A pack or model name could not be resolved."""


class ModelError(PolicyAlignError):
    """A model could not be found or loaded, or cannot serve the request."""


class HubError(PolicyAlignError):
    """A Hub operation failed (auth, missing repo, provenance mismatch)."""


class HubUnavailableError(HubError):
    """The Hub could not be reached, timed out, or answered that it cannot serve now (HTTP 5xx, 429); exit code 3.

    Every Hub failure exited 1, as a failed run does, so a CI job could not retry on network flakiness
    alone: a refused token, a missing repository or a tampered download (exit 1) fail the same way
    when run again, an outage may not."""

    exit_code = 3


class UnverifiedAdapterError(HubError):
    """A revision whose files, card and policyalign.json do not agree (or that `pa push` never published):
    `pa pull --pack` passes over it for the next best match, where another failure stops the search."""


class PublicRepositoryError(HubError):
    """`--private` was asked of a repository that is public: never to be taken for "already published"."""


class RunError(PolicyAlignError):
    """A run directory is missing, inconsistent, or a stage's inputs are absent."""


# The disk refusing a write: the user's environment, not a bug, so a message and not a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def disk_error(exc: OSError, file: str | None = None) -> RunError | None:
    """A RunError naming the file a full, read-only or forbidden disk refused, or None for other OSErrors.

    Without it a full disk mid-run was a traceback from deep inside matplotlib or tempfile; the
    finished stages are kept, so the hint says how to go on.
    """
    if exc.errno not in DISK_ERRNOS:
        return None
    return RunError(exc.strerror or str(exc), file=str(file or exc.filename or ""),
                    hint="make room on that disk or make it writable (or give --out another directory), "
                         "then run the same command again: finished stages are kept")


def unreadable_error(exc: OSError) -> InvalidInputError | None:
    """An InvalidInputError naming a file or directory this user may not read (or a directory on its path
    they may not enter), or None for other OSErrors.

    A pack.yaml, run.json or eval file without read permission reached the CLI as a disk refusing a write
    (`disk_error`): "make room on that disk or make it writable", exit 1, where the input is the problem
    (exit 2, as click gives an unreadable `pa judge FILE`) and its permissions the fix."""
    if exc.errno not in (errno.EACCES, errno.EPERM) or not exc.filename:
        return None
    path = os.path.abspath(exc.filename)
    if os.path.exists(path):
        if os.access(path, os.R_OK):
            return None  # a write refused: the disk's message fits
        what = "directory" if os.path.isdir(path) else "file"
        return InvalidInputError(f"permission denied: this user may not read this {what}", file=str(exc.filename),
                                 hint=f"make it readable (e.g. `chmod u+r {exc.filename}`), or run pa as a user who can read it")
    closed = _closed_directory(path)
    if closed is None:
        return None
    return InvalidInputError(f"permission denied: this user may not enter the directory {closed}", file=str(exc.filename),
                             hint=f"make it searchable (e.g. `chmod u+rx {closed}`), or run pa as a user who can")


def _closed_directory(path: str) -> str | None:
    """The nearest existing directory above `path` that this user may not enter (no execute permission)."""
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)
    return parent if parent and os.path.isdir(parent) and not os.access(parent, os.X_OK) else None


def did_you_mean(word: str, options: list[str] | tuple[str, ...], known: str = "", cutoff: float = 0.6) -> str:
    """The close match, else (with `known`, e.g. "known categories") every option: a hint that is
    empty when the typo is far off leaves the user guessing what the names are. `cutoff` is difflib's:
    two letters swapped in a short name ("tyni" for "tiny") score 0.5."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{known}: {', '.join(options) or 'none'}" if known else ""


class Stopped(KeyboardInterrupt):
    """SIGTERM (what Slurm and Kubernetes send some 30 s before SIGKILL) or SIGHUP (the terminal closed),
    raised where Ctrl-C raises KeyboardInterrupt. Both killed `pa` on the spot, leaving its stage
    "running" in run.json and its eval or judge journal unflushed; as a KeyboardInterrupt, every place
    that keeps work on Ctrl-C keeps it on these too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_exception(signum: int) -> KeyboardInterrupt:
    """What a stop signal raises: KeyboardInterrupt for Ctrl-C (SIGINT), `Stopped` for SIGTERM and SIGHUP, for a
    stop handled later than the signal (`trainer.StopAfterStep`) to end as one handled at once would."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)
