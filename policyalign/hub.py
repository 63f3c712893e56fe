"""Hugging Face Hub client plumbing, and what publishing and pulling adapters and packs share.

Every module that moves something to or from the Hub (`adapter_push`, `adapter_pull`,
`adapter_search`, `pack_hub`) goes through here: the endpoint, the token, turning client
failures into HubErrors, checking repository ids and tags, one commit tagged per publish, and
moving a verified download into place.

Tokens come only from huggingface_hub's standard sources (an explicit argument, HF_TOKEN, the
cached login) and are never printed, logged, written or included in an error message: every
client failure is re-raised as a HubError whose text has any token scrubbed.
`HF_ENDPOINT` is read at call time (not only when huggingface_hub is imported), so a Hub
mirror or test server set late is still honoured.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import HubError, HubUnavailableError, InvalidInputError, PolicyAlignError, PublicRepositoryError
from .io import sync_directory, sync_tree

DEFAULT_BRANCH = "main"
LOGIN_HINT = "run `hf auth login` (or the older `huggingface-cli login`), or set HF_TOKEN"
# The Hub's words for a token it does not know (mistyped, revoked), sent with a 401 to any request carrying one, a
# public repository's read included; huggingface_hub reads them too, to tell that 401 from a repository not found.
INVALID_TOKEN = "Invalid credentials in Authorization header"
# What a transient failure (`HubUnavailableError`, exit code 3) adds to its hint: the fix is waiting, not editing.
RETRY_HINT = "a network or Hub outage, not a problem with the command: worth retrying later (pa exits 3 for it)"
# HTTP answers that say "not now" rather than "no": request timeout, too many requests (and every 5xx).
TRANSIENT_STATUSES = frozenset({408, 429})
# The most bytes a pulled model card (README.md) may have, a pack's or an adapter's: `pa push` and `pa pack push`
# write a few kilobytes (front matter, a results table), and both pulls read the card whole to parse it.
MAX_CARD_BYTES = 1024 * 1024
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][\w.+-]{0,127}$")
_TOKEN_LIKE = re.compile(r"(hf_[A-Za-z0-9_]{6,}|Bearer\s+\S+)")


@dataclass(frozen=True)
class PushResult:
    url: str
    repo_id: str
    revision: str
    commit: str
    files: tuple[str, ...]
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- client plumbing


def endpoint() -> str:
    """The Hub endpoint in effect: HF_ENDPOINT now, else huggingface_hub's default.

    An HF_ENDPOINT that is no http(s) URL (`hub.example.org`, a stray quote) failed every Hub command with
    httpx's "Request URL is missing an 'http://' or 'https://' protocol", naming neither the variable nor the fix."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    given = os.environ.get("HF_ENDPOINT", "").strip()
    if given:
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInputError(f"HF_ENDPOINT={_without_credentials(given)!r} is not an http(s) URL",
                                    hint="set HF_ENDPOINT to the Hub's address, e.g. https://huggingface.co, or unset it")
    return (given or constants.ENDPOINT).rstrip("/")


def shown_endpoint() -> str:
    """`endpoint()` as pa prints or records it: without the user and password a mirror's URL may carry
    (`https://user:password@mirror`), which went into error messages and the run.json of `pa apply --push-to`."""
    return _without_credentials(endpoint())


def _without_credentials(url: str) -> str:
    """`url` without a `user:password@` before its host, with or without a scheme: an HF_ENDPOINT refused as no
    http(s) URL (`ftp://user:password@mirror`, `user:password@mirror`) was printed whole in its error."""
    return re.sub(r"(^|//)[^/@\s]*@", r"\1", url, count=1)


def hub_api(token: str | None = None) -> Any:
    """The Hub client every push and pull goes through (with `quiet_hub_bars` applied first)."""
    from huggingface_hub import HfApi

    quiet_hub_bars()
    return HfApi(endpoint=endpoint(), token=token)


def quiet_hub_bars() -> None:
    """Turn huggingface_hub's own tqdm bars off on a stderr that is no terminal. There they were written frame
    by frame, with carriage returns and cursor-up escapes (ESC [A) between a push's parallel uploads: dozens of
    lines of a CI log per `pa push` or `pa pull`, where pa's own bars write one line each. On a terminal they stay."""
    import sys

    from huggingface_hub.utils import disable_progress_bars

    stream = sys.stderr
    if stream is None or not stream.isatty():
        disable_progress_bars()


def resolve_token(token: str | None = None, repo: str = "") -> str:
    """An explicit token, else HF_TOKEN, else the cached login; none is a HubError saying how to log in."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubError("no Hugging Face token found: pushing needs a token with write access", file=repo,
                       hint=LOGIN_HINT)
    return found


def scrub(text: str, token: str | None) -> str:
    """Remove a token (and anything token-shaped) from text bound for the user.

    Without `token`, the one huggingface_hub sends (HF_TOKEN, the cached login) is removed: `pa pull` and `pa pack
    pull` pass none, and a token not shaped like `hf_...` (a mirror's) that a Hub's error repeated was printed whole."""
    from huggingface_hub import get_token

    for secret in {token, get_token()}:
        if secret and len(secret.strip()) >= 6:  # a one-letter HF_TOKEN would blank every such letter
            text = text.replace(secret, "hf_***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _client_errors() -> tuple[type[BaseException], ...]:
    import httpx

    return (httpx.HTTPError, OSError, ValueError, RuntimeError)


@contextmanager
def hub_call(action: str, *, token: str | None = None, repo: str = "", state: str = "") -> Iterator[None]:
    """Turn any huggingface_hub/httpx failure inside the block into a token-free HubError;
    `state` tells the user, when the Hub failed or could not be reached, what it now holds and what to do."""
    try:
        yield
    except PolicyAlignError:
        raise
    except _client_errors() as exc:
        raise _hub_error(exc, action, token, repo, state) from None


def _hub_error(exc: BaseException, action: str, token: str | None, repo: str, state: str = "") -> HubError:
    from huggingface_hub.errors import (GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    # huggingface_hub's own "Cannot reach https://huggingface.co/api/...: offline mode is enabled" named neither
    # the variable that caused it nor what to do about it
    if isinstance(exc, OfflineModeIsEnabled):
        # what else works offline is the caller's to say (`state`): `pa pull --pack` has `pa pull ORG/NAME@REVISION`,
        # which `pa push`, `pa pack push` and `pa pack pull` were told too, though it fetches neither a pack nor a push
        return HubError(f"{action}: HF_HUB_OFFLINE=1 is set, and this needs the Hub", file=repo,
                        hint="; ".join(filter(None, ["unset HF_HUB_OFFLINE where the Hub can be reached", state])))

    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = _first_line(exc)
    cause = _first_line(exc.__cause__) if exc.__cause__ is not None else detail
    if cause != detail:  # e.g. "Error while uploading X" wraps the HTTP error that says why
        detail = f"{detail} ({cause})"
    # a hostile Hub's words (X-Request-Id lands on the first line) sent ESC ]0;... to the terminal of whoever ran pa
    detail = escaped_name(scrub(detail, token))
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class, and the 401/403 below
        return _gated(exc, action, repo, state)
    # a token refused after the commit landed (expired, revoked, not allowed to tag): what main now holds, too
    if status == 401 and not isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{action}: the Hub rejected the token (401 Unauthorized)", file=repo,
                        hint="; ".join(filter(None, [LOGIN_HINT, state])))
    if status == 403:
        return _forbidden(action, repo, state)
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{action}: revision not found", file=repo, hint="check the tag or branch name after '@'")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{action}: repository not found (or private)", file=repo,
                        hint="check ORG/NAME; for a private repo, log in with a token that can read it")
    transient = outage_kind(exc)
    if transient == "unreachable":
        return HubUnavailableError(f"{action}: could not reach the Hub at {shown_endpoint()} ({detail})", file=repo,
                                   hint="; ".join(filter(None, ["check the network connection or HF_ENDPOINT",
                                                                RETRY_HINT, state])))
    if transient == "unavailable":
        return HubUnavailableError(f"{action}: {detail}", file=repo, hint="; ".join(filter(None, [RETRY_HINT, state])))
    return HubError(f"{action}: {detail}", file=repo, hint=state)


def outage_kind(exc: BaseException) -> str | None:
    """"unreachable" (connection refused, reset or dropped; a timeout), "unavailable" (HTTP 5xx, 429, 408), or
    None for a failure that running again would repeat (401, 403, 404, a refusal). The cause chain is read
    too: huggingface_hub's downloads wrap the HTTP or connection error in a LocalEntryNotFoundError ("check
    your connection"), whatever it was. The first link that carries an HTTP status or a network error decides;
    HF_HUB_OFFLINE=1 (OfflineModeIsEnabled, a ConnectionError) is a setting, not an outage."""
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    for link in causes(exc):
        if isinstance(link, OfflineModeIsEnabled):
            return None
        status = getattr(getattr(link, "response", None), "status_code", None)
        if isinstance(status, int):
            return "unavailable" if status in TRANSIENT_STATUSES or 500 <= status <= 599 else None
        if isinstance(link, (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError,
                             ConnectionError, TimeoutError)):
            return "unreachable"
    return None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from (or while handling), each once."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


# The C0 control characters but U+0000, tab and newline included: Windows file names cannot hold them (U+0000 ends
# every name, and `is_safe_relpath` refuses it), and a name holding a tab or a newline prints as two names.
_C0_CONTROL = re.compile("[\x01-\x1f]")


def escaped_name(rel: str) -> str:
    """Remote text (a file name, a Hub's error) as an error may print it: escaped when it holds control characters,
    which a hostile Hub would otherwise send to the terminal of whoever pulls (`\x1b]0;...` retitles it)."""
    from .templates import text_problem

    return ascii(rel)[1:-1] if text_problem(rel) or _C0_CONTROL.search(rel) else rel


def _gated(exc: BaseException, action: str, repo: str, state: str) -> HubError:
    """A gated repository (GatedRepo): 401 asked for without a token, 403 by an account not granted access. It was
    "repository not found (or private)" and "the token has no write access", though the repository is there and
    the fix is to ask for access on its page (a dataset's, a pack, under /datasets/)."""
    response = getattr(exc, "response", None)
    kind = "datasets/" if "/datasets/" in str(getattr(response, "url", "")) else ""
    page = f"{shown_endpoint()}/{kind}{repo}"
    if getattr(response, "status_code", None) == 403:
        return HubError(f"{action}: {repo} is gated and the token's account has not been granted access (403 Forbidden)",
                        file=repo, hint="; ".join(filter(None, [f"ask for access at {page} while logged in as that "
                                                                "account (some authors approve each request)", state])))
    return HubError(f"{action}: {repo} is gated (401 Unauthorized: asked for without a token)", file=repo,
                    hint="; ".join(filter(None, [f"ask for access at {page}, then {LOGIN_HINT} with that account's "
                                                 "token", state])))


def _forbidden(action: str, repo: str, state: str) -> HubError:
    """A 403: the Hub answers it to a valid token of an account that may not write to the repository's user or
    organization, named here with the fix ("this repository" left the user to guess whose access was missing)."""
    owner = repo.split("/")[0] if "/" in repo else "the repository's user or organization"
    return HubError(f"{action}: the token has no write access to {owner} (403 Forbidden)", file=repo,
                    hint="; ".join(filter(None, [f"use a token of an account that may write to {owner} (a member with "
                                                 "the write role; a fine-grained token needs write access to its "
                                                 f"repositories): {LOGIN_HINT}", state])))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_repo_id(repo_id: str, option: str = "") -> str:
    """`repo_id` if it is ORG/NAME; `option`, where it was given (`--push-to`, `push_to in FILE`), is named by
    the error when there is one to name (a positional ORG/NAME has none)."""
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise InvalidInputError(f"{option}: " * bool(option) + f"invalid repository id {repo_id!r}",
                                hint="use ORG/NAME, e.g. my-org/medical-qwen2.5-7b")
    return repo_id


def check_tag(tag: str, option: str = "--revision") -> str:
    """`tag` if the Hub can tag a version with it; `option` is where it was given (`revision in FILE`)."""
    if not TAG_RE.match(tag) or ".." in tag or tag.endswith((".lock", ".")):
        raise InvalidInputError(f"{option}: invalid revision tag {tag!r}",
                                hint="use letters, digits, '.', '_', '-' or '+', e.g. medical-v1.0.0")
    if tag == DEFAULT_BRANCH or re.fullmatch(r"[0-9a-fA-F]{40}", tag):
        # a tag `main` shadows the branch: `ORG/NAME` (and @main) resolved to the tagged commit for
        # good, never to what later pushes committed; a 40-hex tag reads as a commit id
        raise InvalidInputError(f"{option}: invalid revision tag {tag!r}: it names the {DEFAULT_BRANCH} branch "
                                "or a commit, not a version", hint=f"{option} is the tag this version gets "
                                "(every push commits to main), e.g. medical-v1.0.0-r2")
    return tag


def push_tag(revision: str | None, default: str, made_from: str, option: str = "--revision") -> str:
    """The tag a push gets: `revision` when given, else `default`, checked either way. A bad default is named
    as what it was made from (`made_from`, e.g. "pack general@1.0.0-x.lock's version"): it was refused as
    "--revision: invalid revision tag", a flag the user never gave."""
    if revision:
        return check_tag(revision, option)
    try:
        return check_tag(default)
    except InvalidInputError:
        raise InvalidInputError(f"the default tag {default!r}, made from {made_from}, is not a valid revision tag",
                                hint=f"give {option} a tag of letters, digits, '.', '_', '-' or '+' (at most 128 "
                                     "characters, not ending in '.' or '.lock')") from None


def split_spec(spec: str) -> tuple[str, str | None]:
    """`ORG/NAME[@REV]` -> (repo id, revision or None)."""
    repo_id, sep, revision = spec.partition("@")
    if sep and not revision:
        raise InvalidInputError(f"empty revision in {spec!r}", hint="write ORG/NAME@REVISION, or drop the '@'")
    return check_repo_id(repo_id), revision or None


def refuse_several_builds(builds: list[str], lead: str, *, file: str, hint: str) -> None:
    """A HubError when `builds` (versions or their tags) holds more than one: versions differing only in
    build metadata (1.0.0+a, 1.0.0+b) share one SemVer precedence, so neither is the newest, and taking
    one would be a choice by listing order or modification time the user can neither see nor predict.
    `lead` is the sentence up to the count ("adapters for pack p were trained on"); one wording serves
    `pa pack pull` and `pa pull --pack`."""
    if len(builds) > 1:
        raise HubError(f"{lead} {len(builds)} builds ({', '.join(sorted(builds))}), one version by SemVer precedence "
                       "(build metadata after '+' does not order versions), so none is the newest", file=file, hint=hint)


def repo_url(repo_id: str, repo_type: str, revision: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{shown_endpoint()}/{prefix}{repo_id}/tree/{revision}"


# --------------------------------------------------------------------------- publishing (shared)


# What to do about a taken tag (a tag is never moved). One hint served both and misled each: it told
# `pa push` of a retrained adapter to "bump the pack version", and `pa pack push` of changed files to
# take another tag, which publishes two different packs as one version.
TAKEN_TAG_HINTS = {
    "model": "a tag is never moved: publish this run under a new tag with --revision (e.g. {tag}-r2)",
    "dataset": "a tag is never moved: if the pack's files changed, bump its version (`pa bump PACK_DIR patch "
               "--note ...`: pack.yaml and its CHANGELOG.md entry) and push again; if not, this version is "
               "already published",
}


def prepare_repo(api: Any, repo_id: str, repo_type: str, tag: str, *, private: bool, token: str,
                  explain_taken: Callable[[], str | None] | None = None) -> None:
    """Authenticate, create the repo if needed, and refuse early if the tag is already taken
    (`explain_taken`: a sharper fix than TAKEN_TAG_HINTS for what is at the tag, when it finds one)."""
    with hub_call("checking the Hub token", token=token, repo=repo_id):
        api.whoami()
    with hub_call("creating the repository", token=token, repo=repo_id):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if private:
        _refuse_public(api, repo_id, repo_type, token)
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    if tag in {t.name for t in refs.tags}:
        raise HubError(f"the repository already has a tag {tag!r}", file=repo_id,
                       hint=(explain_taken and explain_taken()) or TAKEN_TAG_HINTS[repo_type].format(tag=tag))


def _refuse_public(api: Any, repo_id: str, repo_type: str, token: str) -> None:
    """`--private` on a repository that already exists and is public: `create_repo` leaves it public,
    so pushing would publish what the user asked to keep private."""
    with hub_call("reading the repository's visibility", token=token, repo=repo_id):
        private = api.repo_info(repo_id, repo_type=repo_type).private
    if not private:
        type_option = " --repo-type dataset" if repo_type == "dataset" else ""
        raise PublicRepositoryError("--private was given, but the repository already exists and is public: nothing was uploaded",
                       file=repo_id, hint=f"make it private first (`hf repos settings {repo_id}{type_option} --private`), "
                                          "or push to a new repository")


def commit_and_tag(api: Any, repo_id: str, repo_type: str, uploads: Mapping[str, Any], stale: list[str],
                    message: str, tag: str, token: str) -> str:
    """One commit on main with every upload (and removal of stale files), then tag that exact commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    operations: list[Any] = [CommitOperationDelete(path_in_repo=p) for p in stale]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=source) for name, source in uploads.items()]
    with hub_call("uploading", token=token, repo=repo_id,
                  state=f"nothing is tagged {tag} yet; run the same command again (files the Hub already "
                        "holds are not uploaded twice)"):
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type,
                                 revision=DEFAULT_BRANCH)
    with hub_call(f"tagging the commit {tag}", token=token, repo=repo_id,
                  state=f"the files are on the {DEFAULT_BRANCH} branch (commit {str(info.oid)[:12]}) but not "
                        f"tagged {tag}; run the same command again to tag them (nothing is uploaded twice)"):
        api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type=repo_type, tag_message=message)
    return str(info.oid)


def remote_files(api: Any, repo_id: str, repo_type: str, token: str) -> list[str]:
    with hub_call("listing the repository's files", token=token, repo=repo_id):
        return list(api.list_repo_files(repo_id, repo_type=repo_type, revision=DEFAULT_BRANCH))


# --------------------------------------------------------------------------- downloads (shared)


def is_safe_relpath(rel: str) -> bool:
    """A relative POSIX path with no '..', '.', empty, absolute, drive or backslash parts."""
    if not rel or rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


# Names Windows keeps for devices, whatever their extension (`con.md` opens the console) and case: COM and LPT
# take the digits 1-9 and the Latin-1 superscripts ¹ ² ³, which Windows reads as digits too (`COM¹.md` is the
# port); COM0 and LPT0 are ordinary file names (Windows 10 writes `com0.c`, which git for Windows found); CONIN$
# and CONOUT$ open the console's input and output (CreateFile) as CON does.
_WINDOWS_RESERVED = frozenset(':<>"|?*')
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                           *(f"{d}{n}" for d in ("com", "lpt") for n in "123456789\u00b9\u00b2\u00b3")})


def unportable_part(rel: str) -> str | None:
    """Why a safe relative path cannot be written on every system (None when it can): a component that is a
    Windows device name (`con`, `aux.txt`, `COM1.md`), ends in a dot or a space, which Windows drops, so
    `notes.` is written as `notes`, or holds a character Windows names cannot (`:<>"|?*` and the control
    characters U+0001-U+001F). Linux writes them all: refused everywhere, a pack is the same on each.
    The reason shows the component escaped (`escaped_name`): the name may come from a hostile Hub."""
    for part in rel.split("/"):
        shown = escaped_name(part)
        if control := _C0_CONTROL.search(part):  # first: `con\x01.md` is no device name, `a\x1b.` no dot name
            return (f"`{shown}` holds the control character U+{ord(control.group()):04X}, which Windows file "
                    "names cannot hold")
        if part.split(".")[0].rstrip(" ").lower() in _DEVICE_NAMES:
            return f"`{shown}` is a Windows device name"
        if part.endswith((".", " ")):
            return f"`{shown}` ends in a {'dot' if part.endswith('.') else 'space'}, which Windows drops"
        if reserved := sorted(set(part) & _WINDOWS_RESERVED):  # `a:b.md` is NTFS's stream b.md of the file a
            return f"`{shown}` holds {' '.join(reserved)}, which Windows file names cannot hold"
    return None


def case_clashes(paths: Iterable[str]) -> list[list[str]]:
    """The groups of paths (or of their directories) that differ only in case or Unicode normalization:
    `A.md` and `a.md` are one file on macOS and Windows, so the second download failed ("File exists"),
    and on Linux the pack held both, a pack that differed by system. Each group sorted, longest names last."""
    spellings: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for n in range(1, len(parts) + 1):
            prefix = "/".join(parts[:n])
            spellings.setdefault(unicodedata.normalize("NFC", prefix).casefold(), set()).add(prefix)
    return [sorted(group) for _, group in sorted(spellings.items()) if len(group) > 1]


def swap_in(source: Path, target: Path) -> None:
    """Move a verified directory into place; a previous one is replaced only after the move works. Its
    files are synced first and the move after (`io.sync_tree`), so a power cut cannot leave the new
    name over empty files.

    The previous one waits beside `target` as `.previous-NAME` until the move is done, at one place
    whatever `source`'s: a swap killed part way leaves it where the next swap into `target` finds it
    (`_settle_previous`), which neither fails on it nor deletes the only copy left."""
    sync_tree(source)
    previous = target.parent / f".previous-{target.name}"
    _settle_previous(previous, target)
    moved_away = target.exists()
    if moved_away:
        os.replace(target, previous)
    try:
        os.replace(source, target)
    except OSError:
        if moved_away:
            os.replace(previous, target)
        raise
    sync_directory(target.parent)
    if moved_away:
        shutil.rmtree(previous, ignore_errors=True)


def _settle_previous(previous: Path, target: Path) -> None:
    """What a swap killed part way left at `previous`, dealt with before the next swap into `target`.
    Killed after the new directory took `target`'s name, `previous` is the replaced one not yet deleted
    (whole or in part): it is deleted, where it made moving `target` aside fail (a directory is not
    renamed over one that is not empty). Killed between moving `target` aside and moving the new one in,
    `previous` is the only copy of `target`: it is put back, so this swap replaces it as any other and a
    failed move leaves it in place."""
    if not previous.exists() and not previous.is_symlink():
        return
    if target.exists() or target.is_symlink():
        if previous.is_dir() and not previous.is_symlink():
            shutil.rmtree(previous)
        else:
            previous.unlink()
    else:
        os.replace(previous, target)
