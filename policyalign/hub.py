"""Publish adapters and policy packs on the Hugging Face Hub, pull them back, check provenance.

The point of publishing through policyalign rather than `upload_folder` is that whoever pulls
an adapter can know exactly which policy it was trained on:

* `push_adapter` uploads a run's adapter, `policyalign.json`, eval results and plots with a
  model card whose metadata pins the pack (name, version, digest), the base model and the
  sha256 of every file, then tags the commit with the pack version (`medical-v1.0.0`).
* `pull_adapter` downloads a revision and refuses it (HubError) unless card metadata,
  `policyalign.json` and file hashes agree (each fact the card states: pack name, version, digest,
  a child pack's parents, base model id, name, revision and commit); it then compares the pack,
  and each pack it extends, with the local one.
* `pull_for_pack` finds published adapters by tag (`pack:medical`) and picks the best match
  for the local pack version and the requested base model, or lists the candidates.
* `push_pack` / `pull_pack` publish a pack as a dataset repo tagged `v<version>` and install
  one: a downloaded pack is untrusted, so it is fetched with size caps, confined to its
  directory, hash-checked, validated by every loader check, and only then moved into place.

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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import card
from .errors import HubError, InvalidInputError, PackError, PolicyAlignError, Problem
from .io import read_json, sha256_file, write_text
from .semver import Version, is_semver, parse_range

if TYPE_CHECKING:
    from .pack import Pack
    from .registry import Registry
    from .semver import VersionRange

DEFAULT_BRANCH = "main"
PACK_DIR = "pack"
LOGIN_HINT = "run `hf auth login` (or the older `huggingface-cli login`), or set HF_TOKEN"
MAX_CARD_BYTES = 1024 * 1024
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][\w.+-]{0,127}$")
PACK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN_LIKE = re.compile(r"(hf_[A-Za-z0-9_]{6,}|Bearer\s+\S+)")
# Files a previous push may have left that this push must replace or remove, so an older
# version's results can never sit next to a newer adapter.
MANAGED_FILES = {"README.md", *card.REQUIRED_ADAPTER_FILES, *card.OPTIONAL_ADAPTER_FILES}
MANAGED_DIRS = ("eval/",)
# Files a pulled adapter repository may hold without the card listing them (the card itself,
# and the .gitattributes the Hub adds); any other unlisted file is a provenance problem.
UNLISTED_OK = {"README.md", ".gitattributes"}


@dataclass(frozen=True)
class PushResult:
    url: str
    repo_id: str
    revision: str
    commit: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class PullResult:
    repo_id: str
    revision: str
    commit: str
    path: Path
    pack: Mapping[str, Any]
    base_model: Mapping[str, Any]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PackPullResult:
    name: str
    version: str
    digest: str
    path: Path
    repo_id: str
    revision: str
    commit: str
    warnings: tuple[str, ...] = ()
    replaced: str = ""  # name@version of the other version the install directory held, now gone


@dataclass(frozen=True)
class Candidate:
    """One published adapter revision, as its card describes it."""

    repo_id: str
    revision: str
    commit: str
    pack_name: str
    pack_version: str
    pack_digest: str
    base_id: str
    base_name: str
    last_modified: str = ""
    base_commit: str = ""  # the base's commit (or revision) the card says it was trained on; "" when unrecorded
    parents: tuple[str, ...] = ()  # NAME@VERSION of each pack the card says the pack extends

    def describe(self) -> str:
        at = f"@{self.base_commit[:12]}" if self.base_commit else ""
        extends = f" extends {', '.join(self.parents)}" if self.parents else ""
        return (f"{self.repo_id}@{self.revision}  pack {self.pack_name}@{self.pack_version} "
                f"(digest {self.pack_digest[:12]}){extends}  base {self.base_id}{at}")

    def trained_at(self, revision: str) -> bool:
        """Whether the base was trained at `revision` (a commit, a prefix of one, or the revision recorded)."""
        wanted = revision.lower()
        commit = self.base_commit.lower()
        return bool(commit) and (commit == wanted or (len(wanted) >= 7 and commit.startswith(wanted)))


# --------------------------------------------------------------------------- client plumbing


def endpoint() -> str:
    """The Hub endpoint in effect: HF_ENDPOINT now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token)


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
    """Remove a token (and anything token-shaped) from text bound for the user."""
    if token:
        text = text.replace(token, "hf_***")
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
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = _first_line(exc)
    cause = _first_line(exc.__cause__) if exc.__cause__ is not None else detail
    if cause != detail:  # e.g. "Error while uploading X" wraps the HTTP error that says why
        detail = f"{detail} ({cause})"
    detail = scrub(detail, token)
    if status == 401 and not isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{action}: the Hub rejected the token (401 Unauthorized)", file=repo, hint=LOGIN_HINT)
    if status == 403:
        return HubError(f"{action}: the token may not write to this repository (403 Forbidden)", file=repo,
                        hint="use a token with write access to that user or organization")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{action}: revision not found", file=repo, hint="check the tag or branch name after '@'")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{action}: repository not found (or private)", file=repo,
                        hint="check ORG/NAME; for a private repo, log in with a token that can read it")
    import httpx

    if isinstance(exc, (httpx.ConnectError, httpx.TimeoutException)):
        return HubError(f"{action}: could not reach the Hub at {endpoint()} ({detail})", file=repo,
                        hint="; ".join(filter(None, ["check the network connection or HF_ENDPOINT", state])))
    return HubError(f"{action}: {detail}", file=repo, hint=state)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise InvalidInputError(f"invalid repository id {repo_id!r}",
                                hint="use ORG/NAME, e.g. my-org/medical-qwen2.5-7b")
    return repo_id


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag) or ".." in tag or tag.endswith((".lock", ".")):
        raise InvalidInputError(f"invalid revision tag {tag!r} (--revision)",
                                hint="use letters, digits, '.', '_', '-' or '+', e.g. medical-v1.0.0")
    return tag


def split_spec(spec: str) -> tuple[str, str | None]:
    """`ORG/NAME[@REV]` -> (repo id, revision or None)."""
    repo_id, sep, revision = spec.partition("@")
    if sep and not revision:
        raise InvalidInputError(f"empty revision in {spec!r}", hint="write ORG/NAME@REVISION, or drop the '@'")
    return check_repo_id(repo_id), revision or None


def _repo_url(repo_id: str, repo_type: str, revision: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{endpoint()}/{prefix}{repo_id}/tree/{revision}"


# --------------------------------------------------------------------------- publishing (shared)


# What to do about a taken tag (a tag is never moved). One hint served both and misled each: it told
# `pa push` of a retrained adapter to "bump the pack version", and `pa pack push` of changed files to
# take another tag, which publishes two different packs as one version.
TAKEN_TAG_HINTS = {
    "model": "a tag is never moved: publish this run under a new tag with --revision (e.g. {tag}-r2)",
    "dataset": "a tag is never moved: if the pack's files changed, bump `version` in pack.yaml (with its "
               "CHANGELOG.md entry) and push again; if not, this version is already published",
}


def _prepare_repo(api: Any, repo_id: str, repo_type: str, tag: str, *, private: bool, token: str,
                  pack: Mapping[str, Any] | None = None) -> None:
    """Authenticate, create the repo if needed, and refuse early if the tag is already taken (`pack`: the
    pack an adapter push was trained on, to tell a changed pack from a retrained run at that tag)."""
    with hub_call("checking the Hub token", token=token, repo=repo_id):
        api.whoami()
    with hub_call("creating the repository", token=token, repo=repo_id):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if private:
        _refuse_public(api, repo_id, repo_type, token)
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    if tag in {t.name for t in refs.tags}:
        changed = _changed_pack_hint(api, repo_id, tag, pack, token) if pack else None
        raise HubError(f"the repository already has a tag {tag!r}", file=repo_id,
                       hint=changed or TAKEN_TAG_HINTS[repo_type].format(tag=tag))


def _changed_pack_hint(api: Any, repo_id: str, tag: str, pack: Mapping[str, Any], token: str) -> str | None:
    """The fix when the adapter at `tag` was trained on the same pack version with other content: the
    pack was edited without a version bump, and another tag would publish two policies as one version."""
    try:
        published = _candidate(api, repo_id, tag, token)
    except PolicyAlignError:
        return None
    if published is None or (published.pack_name, published.pack_version) != (pack.get("name"), pack.get("version")) \
            or published.pack_digest == pack.get("digest"):
        return None
    return (f"the adapter at {tag} was trained on {published.pack_name}@{published.pack_version} with digest "
            f"{published.pack_digest[:12]}, this run's pack has digest {str(pack.get('digest'))[:12]}: the pack "
            "changed without a version bump. Bump `version` in pack.yaml (with its CHANGELOG.md entry) and re-run "
            f"`pa apply`, so that one version names one policy (--revision {tag}-r2 would publish it as the same version)")


def _refuse_public(api: Any, repo_id: str, repo_type: str, token: str) -> None:
    """`--private` on a repository that already exists and is public: `create_repo` leaves it public,
    so pushing would publish what the user asked to keep private."""
    with hub_call("reading the repository's visibility", token=token, repo=repo_id):
        private = api.repo_info(repo_id, repo_type=repo_type).private
    if not private:
        type_option = " --repo-type dataset" if repo_type == "dataset" else ""
        raise HubError("--private was given, but the repository already exists and is public: nothing was uploaded",
                       file=repo_id, hint=f"make it private first (`hf repos settings {repo_id}{type_option} --private`), "
                                          "or push to a new repository")


def _commit_and_tag(api: Any, repo_id: str, repo_type: str, uploads: Mapping[str, Any], stale: list[str],
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


def _remote_files(api: Any, repo_id: str, repo_type: str, token: str) -> list[str]:
    with hub_call("listing the repository's files", token=token, repo=repo_id):
        return list(api.list_repo_files(repo_id, repo_type=repo_type, revision=DEFAULT_BRANCH))


# --------------------------------------------------------------------------- adapters: push


def push_adapter(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 token: str | None = None, license: str | None = None) -> PushResult:
    """Publish a run's adapter with its model card; tag the commit `<pack>-v<version>` (or `revision`).

    Holds the run's lock: beside a `pa apply` retraining in the same directory, the adapter, its
    evals and the card could be read from two different trainings and published as one."""
    from contextlib import nullcontext

    from .run import run_lock

    with run_lock(Path(run_dir)) if Path(run_dir).is_dir() else nullcontext():
        return _push_adapter(run_dir, repo_id, private=private, revision=revision, token=token, license=license)


def _push_adapter(run_dir: str | Path, repo_id: str, *, private: bool, revision: str | None,
                  token: str | None, license: str | None) -> PushResult:
    artifacts = card.load_run(run_dir)
    check_repo_id(repo_id)
    tag = check_tag(revision or artifacts.default_tag)
    token = resolve_token(token, repo_id)
    api = _api(token)
    _prepare_repo(api, repo_id, "model", tag, private=private, token=token, pack=artifacts.pack)
    readme = card.render_model_card(artifacts, repo_id, tag, license=license)
    uploads: dict[str, Any] = {name: str(path) for name, path in artifacts.files.items()}
    uploads["README.md"] = readme.encode("utf-8")
    remote = _remote_files(api, repo_id, "model", token)
    _refuse_foreign_files(remote, repo_id)
    stale = [p for p in remote if (p in MANAGED_FILES or p.startswith(MANAGED_DIRS)) and p not in uploads]
    pack, base = artifacts.pack, artifacts.base_model
    message = f"policyalign: {pack['name']}@{pack['version']} adapter for {base['id']}"
    commit = _commit_and_tag(api, repo_id, "model", uploads, stale, message, tag, token)
    write_text(Path(run_dir) / "README.md", readme)  # the card as published, kept with the run
    return PushResult(_repo_url(repo_id, "model", tag), repo_id, tag, commit, tuple(sorted(uploads)))


def _refuse_foreign_files(remote: list[str], repo_id: str) -> None:
    """Refuse, before uploading, a repository holding files `pa push` does not manage (someone's
    config.json, notes, another tool's weights): the card cannot vouch for them, so `pa pull` would
    reject the adapter as tampered with, and `pa push` will not delete files it did not write."""
    foreign = sorted(p for p in remote if p not in MANAGED_FILES and not p.startswith(MANAGED_DIRS) and p not in UNLISTED_OK)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" (and {len(foreign) - 10} more)" if len(foreign) > 10 else "")
        command = f"hf repos delete-files {repo_id} " + (" ".join(map(card.sh, foreign)) if len(foreign) <= 10 else "PATTERN...")
        raise HubError(f"the repository holds files `pa push` does not publish: {shown}; "
                       "`pa pull` refuses an adapter repository with files its card does not list", file=repo_id,
                       hint=f"push to a new repository, or delete those files first (`{command}`)")


def check_push_target(repo_id: str, token: str | None = None) -> None:
    """What `push_run` will need, checked without the network before `pa apply` trains for hours:
    a well-formed repository id and a token (an invalid one is still only found out by the Hub)."""
    resolve_token(token, check_repo_id(repo_id))


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None, license: str | None = None) -> str:
    """`pa apply --push-to`: publish the run's adapter and return the URL of the tagged revision."""
    return push_adapter(run_dir, repo_id, private=private, revision=revision, token=token, license=license).url


# --------------------------------------------------------------------------- adapters: pull


def verify_adapter(path: Path, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a downloaded adapter against its card; returns (card metadata, policyalign.json).

    The card's `policyalign` block, `policyalign.json` and the files must agree on the pack
    digest, name, version and parents (`CARD_FACTS`), the base model (id, name, revision, commit),
    and every file's sha256; the repository may hold no
    file the card does not list. Any disagreement means the repo changed after `pa push` (or was
    never pushed by it): a HubError lists them all. Like `pa push`, it then requires
    `policyalign.json` to name the pack (name, version, digest) and the base model (id).
    """
    readme = path / "README.md"
    if not readme.is_file():
        raise HubError("no model card (README.md)", file=label, hint="only adapters published with `pa push` can be verified")
    metadata, _ = card.parse_card(readme.read_text(encoding="utf-8", errors="replace"))
    recorded = metadata.get("policyalign")
    if not isinstance(recorded, dict):
        raise HubError("not a policyalign adapter: its card has no `policyalign` metadata", file=label,
                       hint="only adapters published with `pa push` can be verified")
    if not (path / card.PROVENANCE_FILE).is_file():
        raise HubError(f"no {card.PROVENANCE_FILE}", file=label, hint="the repository is incomplete; ask its publisher to re-push")
    try:
        provenance = read_json(path / card.PROVENANCE_FILE)
    except PolicyAlignError:
        raise HubError(f"{card.PROVENANCE_FILE} is not valid JSON", file=label) from None
    problems = _provenance_problems(metadata, recorded, provenance) + _file_problems(path, recorded)
    problems += _base_revision_problems(path, provenance)
    if problems:
        raise _tampered(problems, label)
    try:  # the same fields `pa push` requires: pack name, version and digest, base model id
        card._check_provenance(provenance, path / card.PROVENANCE_FILE)
    except PolicyAlignError as exc:
        raise HubError(f"provenance check failed: {exc.problem.message}", file=f"{label}:{card.PROVENANCE_FILE}",
                       where=exc.problem.where,
                       hint="`pa push` never publishes such an adapter, so its pack cannot be known; "
                            "do not use it, or ask its publisher to re-push") from None
    problems = _result_problems(path, metadata, provenance)
    if problems:
        raise _tampered(problems, label)
    return metadata, provenance


def _tampered(problems: list[str], label: str) -> HubError:
    repo_id = label.partition("@")[0]
    return HubError("provenance check failed:\n" + "\n".join(f"  - {p}" for p in problems), file=label,
                    hint="`pa push` writes the card and the files together, so they disagree only if the repository "
                         "was changed after it (a card edited on the Hub, a file replaced): do not use this revision. "
                         f"Pull one that verifies (a tag `pa push` set: `hf repos tag list {repo_id}`), or ask its "
                         f"publisher to re-publish the run: `pa push RUN_DIR --repo-id {repo_id} --revision NEW-TAG`")


def _result_problems(path: Path, metadata: Mapping[str, Any], provenance: Mapping[str, Any]) -> list[str]:
    """The card's `model-index` (the results the Hub displays) must be the numbers in the hashed
    eval/*/eval.json files: the file hashes alone let an edited card claim a lower violation rate."""
    evals: dict[str, Mapping[str, Any]] = {}
    for stage in card.EVAL_STAGES:
        source = path / "eval" / stage / "eval.json"
        try:
            summary = read_json(source) if source.is_file() else None
        except PolicyAlignError:
            return [f"eval/{stage}/eval.json is not valid JSON"]
        if isinstance(summary, dict):
            evals[stage] = summary
    expected = _index_values(card.model_index("", card.RunArtifacts(path, provenance, evals)))
    claimed = _index_values(metadata.get("model-index"))
    problems = []
    for split, metric in sorted(set(expected) | set(claimed)):
        want, got = expected.get((split, metric)), claimed.get((split, metric))
        if not (isinstance(want, (int, float)) and isinstance(got, (int, float)) and abs(want - got) <= 1e-6):
            problems.append(f"model-index result {split} {metric}: the card says {got!r}, "
                            f"eval/after/eval.json says {want!r}")
    return problems


def _index_values(index: Any) -> dict[tuple[str, str], Any]:
    """`model-index` results as {(eval set, metric): value}, tolerating any shape a card may hold."""
    values: dict[tuple[str, str], Any] = {}
    for entry in index if isinstance(index, list) else []:
        results = entry.get("results") if isinstance(entry, dict) else None
        for result in results if isinstance(results, list) else []:
            metrics = result.get("metrics") if isinstance(result, dict) else None
            for metric in metrics if isinstance(metrics, list) else []:
                if isinstance(metric, dict):
                    values[(str(_get(result, "dataset", "split")), str(metric.get("type")))] = metric.get("value")
    return values


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


# The facts a card's `policyalign` block records that policyalign.json must record alike: (block, key,
# whether the card must record it). Optional ones were added to cards later (the base's commit) or
# only exist for some adapters (a child pack's parents); a card that omits one claims nothing.
CARD_FACTS = (("pack", "name", True), ("pack", "version", True), ("pack", "digest", True), ("pack", "parents", False),
              ("base_model", "id", True), ("base_model", "name", False), ("base_model", "revision", False),
              ("base_model", "commit", False))


def _provenance_problems(metadata: Mapping[str, Any], recorded: Mapping[str, Any], provenance: Any) -> list[str]:
    """Each fact the card's metadata states that policyalign.json states otherwise, naming the field in
    both files and both values: `pa pull --pack` chooses by the card's facts, and the Hub shows them."""
    problems = []
    for block, key, required in CARD_FACTS:
        section = _get(recorded, block)
        if not required and not (isinstance(section, Mapping) and key in section):
            continue
        if key == "parents":
            problems += _parent_problems(card.parents_of(section), card.parents_of(_get(provenance, block) or {}))
            continue
        card_value, file_value = _fact(_get(recorded, block, key)), _fact(_get(provenance, block, key))
        if card_value != file_value:
            problems.append(_disagree(f"{block}.{key}", card_value, file_value))
    base_file = _get(provenance, "base_model", "id")
    if metadata.get("base_model") is not None and metadata.get("base_model") != base_file:
        problems.append(f"base model id: README.md's `base_model` (the Hub's) says {metadata.get('base_model')!r}, "
                        f"{card.PROVENANCE_FILE} `base_model.id` says {base_file!r}")
    tags = metadata.get("tags") or []
    name, version = _get(provenance, "pack", "name"), _get(provenance, "pack", "version")
    for tag in ([f"pack:{name}", f"pack-version:{version}"] if name and version else []):
        if tag not in tags:
            problems.append(f"README.md's `tags` lack {tag!r} ({card.PROVENANCE_FILE} says pack {name}@{version})")
    return problems


def _base_revision_problems(path: Path, provenance: Any) -> list[str]:
    """adapter_config.json's `revision` is the base commit `AutoPeftModelForCausalLM` loads (written from
    policyalign.json's `base_model.commit`): when both are recorded they must be one."""
    try:
        config = read_json(path / "adapter_config.json") if (path / "adapter_config.json").is_file() else None
    except PolicyAlignError:
        return ["adapter_config.json is not valid JSON"]
    pinned = config.get("revision") if isinstance(config, dict) else None
    commit = _get(provenance, "base_model", "commit")
    if isinstance(pinned, str) and pinned and isinstance(commit, str) and commit and pinned != commit:
        return [f"base model commit: adapter_config.json `revision` says {pinned!r}, "
                f"{card.PROVENANCE_FILE} `base_model.commit` says {commit!r}"]
    return []


def _fact(value: Any) -> Any:
    """A recorded value, with "" and null alike (the card leaves out a base commit policyalign.json records as null)."""
    return None if value in (None, "") else value


def _disagree(field: str, card_value: Any, file_value: Any) -> str:
    label = field.replace("_", " ").replace(".", " ")
    return (f"{label}: README.md `policyalign.{field}` says {card_value!r}, "
            f"{card.PROVENANCE_FILE} `{field}` says {file_value!r}")


def _parent_problems(in_card: list[dict[str, Any]], in_file: list[dict[str, Any]]) -> list[str]:
    """A child pack's parents as the card records them against policyalign.json's, field by field."""
    problems = []
    for index in range(max(len(in_card), len(in_file))):
        card_parent = in_card[index] if index < len(in_card) else {}
        file_parent = in_file[index] if index < len(in_file) else {}
        for key in card.PARENT_FIELDS:
            if _fact(card_parent.get(key)) != _fact(file_parent.get(key)):
                problems.append(_disagree(f"pack.parents[{index}].{key}", _fact(card_parent.get(key)),
                                          _fact(file_parent.get(key))))
    return problems


def _file_problems(path: Path, recorded: Mapping[str, Any]) -> list[str]:
    files = recorded.get("files")
    if not isinstance(files, dict) or not files:
        return ["the card lists no file hashes"]
    problems = [f"the card does not list {name}" for name in card.REQUIRED_ADAPTER_FILES if name not in files]
    for name, digest in files.items():
        target = path / str(name)
        if not _is_safe_relpath(str(name)) or not target.is_file():
            problems.append(f"{name} is listed in the card but missing")
        elif sha256_file(target) != digest:
            problems.append(f"{name} does not match its sha256 in the card")
    problems += [f"{name} is in the repository but not listed in the card"
                 for name in _downloaded_files(path) if name not in files and name not in UNLISTED_OK]
    return problems


def _downloaded_files(path: Path) -> list[str]:
    """Every file of a downloaded repository (POSIX paths; huggingface_hub's `.cache/` skipped).

    A snapshot in the Hugging Face cache holds symlinks into its blob store, so links count as files.
    """
    found = []
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path).as_posix()
        if rel == ".cache" or rel.startswith(".cache/"):
            continue
        if entry.is_symlink() or entry.is_file():
            found.append(rel)
    return found


def pull_adapter(spec: str, *, to: str | Path | None = None, token: str | None = None,
                 registry: "Registry | None" = None) -> PullResult:
    """Download `ORG/NAME[@REV]`, verify its provenance, compare with the local pack.

    Without `to` the files stay in the Hugging Face cache (where `PeftModel.from_pretrained`
    looks too); with `to` they are downloaded beside it, verified, and only then moved there.
    """
    repo_id, revision = split_spec(spec)
    revision = revision or DEFAULT_BRANCH
    api = _api(token)
    with hub_call(f"looking up revision {revision}", token=token, repo=repo_id):
        commit = api.model_info(repo_id, revision=revision).sha
    label = f"{repo_id}@{revision}"
    if to is None:
        path = _snapshot(repo_id, commit, None, token)
        metadata, provenance = verify_adapter(path, label)
    else:
        path, provenance = _pull_into(Path(to), repo_id, commit, label, token)
    warnings, notes = compare_local_pack(provenance["pack"], registry, token=token)
    return PullResult(repo_id, revision, str(commit), path, provenance["pack"], provenance["base_model"],
                      tuple(warnings), tuple(notes))


def _snapshot(repo_id: str, commit: str, local_dir: Path | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    with hub_call("downloading", token=token, repo=repo_id):
        return Path(snapshot_download(repo_id, revision=commit, local_dir=local_dir, token=token, endpoint=endpoint()))


def _pull_into(target: Path, repo_id: str, commit: str, label: str, token: str | None) -> tuple[Path, dict[str, Any]]:
    """Download into a hidden sibling of `target`, verify, then swap it in (nothing left on failure)."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / card.PROVENANCE_FILE).is_file())):
        raise HubError("exists and is not a previously pulled adapter", file=str(target),
                       hint="choose an empty or new directory for --to")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.pa-pull-", dir=target.parent))
    try:
        downloaded = _snapshot(repo_id, commit, staging / "adapter", token)
        _, provenance = verify_adapter(downloaded, label)
        _swap_in(downloaded, target)
        return target, provenance
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(source: Path, target: Path) -> None:
    """Move a verified directory into place; a previous one is replaced only after the move works."""
    previous = None
    if target.exists():
        previous = source.parent / f".previous-{target.name}"
        os.replace(target, previous)
    try:
        os.replace(source, target)
    except OSError:
        if previous is not None:
            os.replace(previous, target)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def compare_local_pack(pack: Mapping[str, Any], registry: "Registry | None" = None, *,
                       token: str | None = None) -> tuple[list[str], list[str]]:
    """Warnings when the local pack of that name differs (version or digest) from the adapter's."""
    from .pack import load_pack
    from .registry import Registry

    registry = registry or Registry.default()
    name, version, digest = pack.get("name"), pack.get("version"), pack.get("digest")
    local = [loc for loc in registry.discover() if loc.name == name]
    if not local:
        return [], [_not_installed_note(str(name), str(version), token)]
    exact = [loc for loc in local if loc.version == version]
    if not exact:
        have = ", ".join(sorted(loc.version for loc in local))
        return [f"the adapter was trained on {name}@{version}, but the local pack is at version {have}"], []
    try:
        local_pack = load_pack(exact[0].path, registry=registry)
    except PolicyAlignError as exc:
        return [f"the local pack {name}@{version} at {exact[0].path} is invalid: {exc.problem.message}"], []
    if local_pack.digest != digest:
        recorded = card.parents_of(pack)
        where = _parents_differ(recorded, local_pack) if recorded else _ancestry(local_pack)
        return [f"the local pack {name}@{version} ({exact[0].path}) has digest {local_pack.digest[:12]}…, but the "
                f"adapter was trained on {str(digest)[:12]}…: same version, different content{where}"], []
    ancestors = local_pack.ancestry()[:-1]  # the digests match, so these are the very parents it was trained with
    extends = f", which extends {_refs(ancestors)}" if ancestors else ""
    return [], [f"matches the local pack {name}@{version} ({exact[0].path}){extends}"]


def _refs(packs: "list[Pack]") -> str:
    return ", ".join(f"{p.ref} (digest {p.digest[:12]}…)" for p in packs)


def _parents_differ(recorded: list[dict[str, Any]], local: "Pack") -> str:
    """Which of the packs a child extends differ between the adapter's training (policyalign.json's
    parents) and the local pack; when none does, the child's own files changed."""
    have = {p.name: p for p in local.ancestry()[:-1]}
    differ = []
    for parent in recorded:
        mine = have.get(str(parent.get("name")))
        trained = f"{parent.get('name')}@{parent.get('version')} (digest {str(parent.get('digest'))[:12]}…)"
        if mine is None:
            differ.append(f"it was trained with {trained} inside, which the local pack does not extend")
        elif (mine.version, mine.digest) != (parent.get("version"), parent.get("digest")):
            differ.append(f"it was trained with {trained} inside, the local pack extends {mine.ref} "
                          f"(digest {mine.digest[:12]}…, {mine.root})")
    extra = [p.ref for name, p in have.items() if name not in {str(r.get("name")) for r in recorded}]
    if extra:
        differ.append(f"the local pack also extends {', '.join(extra)}, which it was not trained with")
    return f" ({'; '.join(differ)})" if differ else " (in its own files: the packs it extends are the ones it was trained with)"


def _ancestry(pack: "Pack") -> str:
    """Where a child pack's content may differ: its digest composes its parents', so an edited
    parent changes it while the child's own files are untouched."""
    ancestors = pack.ancestry()[:-1]
    if not ancestors:
        return ""
    listed = ", ".join(f"{ancestor.ref} ({ancestor.root})" for ancestor in ancestors)
    return f" (in its own files or in a pack it extends: {listed})"


def _not_installed_note(name: str, version: str, token: str | None) -> str:
    """How to get the pack: the `pa pack pull` command for the dataset repos that publish it (found
    by the tags `pa pack push` sets), rather than "ORG/NAME", which left the user to guess where."""
    try:
        with hub_call("searching the Hub for the pack", token=token, repo=f"pack:{name}"):
            repos = sorted(d.id for d in _api(token).list_datasets(filter=["policyalign-pack", f"pack:{name}"]))
    except PolicyAlignError:
        repos = []
    where = " or ".join(f"`pa pack pull {repo}@{version}`" for repo in repos[:3]) or f"`pa pack pull ORG/NAME@{version}`"
    return f"pack {name} is not installed locally; get it with {where}"


# --------------------------------------------------------------------------- adapters: find by pack


def model_names(model: str) -> set[str]:
    """Every name a base model may be recorded under: as typed, its alias target, its resolved location."""
    base = model.partition("@")[0]
    names = {base}
    try:
        from .models import MODEL_ALIASES, resolve_model
    except ImportError:
        return {n.lower() for n in names}
    for alias, target in MODEL_ALIASES.items():
        if alias.lower() == base.lower():
            names |= {alias, target}
    if base.lower() != "tiny":  # resolving tiny would build it; its recorded id is just "tiny"
        try:
            ref = resolve_model(base)
            names |= {ref.name, ref.location, ref.public().location}
        except PolicyAlignError:
            pass
    return {n.lower() for n in names}


def find_adapters(pack_name: str, *, token: str | None = None) -> list[Candidate]:
    """Every published revision (tags and main) of every adapter repo tagged `pack:<pack_name>`."""
    api = _api(token)
    with hub_call("searching the Hub", token=token, repo=f"pack:{pack_name}"):
        repos = [m.id for m in api.list_models(filter=["policyalign", f"pack:{pack_name}"])]
    found: dict[tuple[str, str], Candidate] = {}
    for repo_id in repos:
        with hub_call("reading the repository's tags", token=token, repo=repo_id):
            refs = api.list_repo_refs(repo_id)
        revisions = [t.name for t in refs.tags] + [DEFAULT_BRANCH]
        for revision in revisions:
            candidate = _candidate(api, repo_id, revision, token)
            if candidate is not None and candidate.pack_name == pack_name:
                found.setdefault((repo_id, candidate.commit), candidate)
    return list(found.values())


def _candidate(api: Any, repo_id: str, revision: str, token: str | None) -> Candidate | None:
    with hub_call(f"reading the card at {revision}", token=token, repo=repo_id):
        info = api.model_info(repo_id, revision=revision)
    card_data = info.card_data
    data = card_data.to_dict() if hasattr(card_data, "to_dict") else card_data
    recorded = data.get("policyalign") if isinstance(data, dict) else None
    pack = recorded.get("pack") if isinstance(recorded, dict) else None
    base = recorded.get("base_model") if isinstance(recorded, dict) else None
    if not isinstance(pack, dict) or not isinstance(base, dict):
        return None  # not an adapter `pa push` published: skipped, so it cannot hide the ones that are
    fields = [pack.get("name"), pack.get("version"), pack.get("digest"), base.get("id")]
    base_name = base.get("name") or base.get("id")
    if not all(_plain_text(value) for value in (*fields, base_name)):
        return None
    base_commit = base.get("commit") or base.get("revision")
    parents = tuple(f"{p['name']}@{p['version']}" for p in card.parents_of(pack)
                    if _plain_text(p["name"]) and _plain_text(p["version"]))
    return Candidate(repo_id, revision, str(info.sha), *fields, base_name, str(info.last_modified or ""),
                     base_commit if _plain_text(base_commit) else "", parents)


def _plain_text(value: Any) -> bool:
    """A non-empty string without control characters (it is printed when candidates are listed)."""
    return isinstance(value, str) and bool(value) and not _CONTROL.search(value)


def choose_adapter(candidates: list[Candidate], pack_name: str, *, model: str | None = None,
                   local_version: str | None = None, local_digest: str | None = None,
                   versions: "VersionRange | None" = None) -> Candidate:
    """The best candidate: same base model, then the local pack's exact digest, then its exact version.

    Without a local pack the newest pack version (in `versions`, when given) wins. Anything
    ambiguous or missing is a HubError that lists the candidates, so the user can pull one explicitly.
    """
    pool = candidates
    if versions is not None:
        pool = [c for c in pool if is_semver(c.pack_version) and Version.parse(c.pack_version) in versions]
    if model is not None:
        wanted, _, pinned = model.partition("@")
        names = model_names(wanted)
        pool = [c for c in pool if c.base_id.lower() in names or c.base_name.lower() in names]
        if pinned:  # MODEL@REV: an adapter trained on other weights of that model does not fit them
            pool = [c for c in pool if c.trained_at(pinned)]
    asked = f"@{local_version}" if local_version else (f"@{versions.text}" if versions is not None else "")
    what = f"pack {pack_name}{asked}" + (f" on {model}" if model else "")
    if local_version is not None:
        pool = [c for c in pool if c.pack_version == local_version]
        exact = [c for c in pool if local_digest and c.pack_digest == local_digest]
        pool = exact or pool
    elif pool:
        newest = max((Version.parse(c.pack_version) for c in pool if is_semver(c.pack_version)), default=None)
        pool = [c for c in pool if newest is None or (is_semver(c.pack_version) and Version.parse(c.pack_version) == newest)]
    if not pool:
        raise HubError(f"no published adapter matches {what}", file=f"pack:{pack_name}",
                       hint=_candidates_hint(candidates, pack_name))
    if model is None and len({c.base_id for c in pool}) > 1:
        raise HubError(f"adapters for {what} exist for several base models; pass --model", file=f"pack:{pack_name}",
                       hint=_candidates_hint(pool, pack_name))
    tagged = [c for c in pool if c.revision != DEFAULT_BRANCH] or pool
    return max(tagged, key=lambda c: c.last_modified)


def _candidates_hint(candidates: list[Candidate], pack_name: str) -> str:
    if not candidates:
        return f"nobody has published an adapter tagged pack:{pack_name} yet"
    lines = "\n".join(f"      {c.describe()}" for c in sorted(candidates, key=lambda c: (c.repo_id, c.revision)))
    return f"candidates (pull one with `pa pull ORG/NAME@REV`):\n{lines}"


def pull_for_pack(pack_spec: str, *, model: str | None = None, to: str | Path | None = None,
                  token: str | None = None, registry: "Registry | None" = None) -> tuple[PullResult, Candidate]:
    """`pa pull --pack NAME[@RANGE] [--model M]`: choose the best published adapter and pull it.

    A range (`medical@1.0.0`, `medical@^1`) is named as everywhere else a pack is: only adapters
    trained on a version in it are candidates, and the local pack it resolves to is preferred."""
    from .pack import load_pack
    from .registry import Registry, version_range

    registry = registry or Registry.default()
    pack_name, _, wanted = pack_spec.partition("@")
    versions = version_range(pack_spec) if wanted else None
    local_version = local_digest = None
    best = registry.best_match(pack_spec)
    if best is not None:
        local_version = best.version
        try:
            local_digest = load_pack(best.path, registry=registry).digest
        except PolicyAlignError:
            local_digest = None
    chosen = choose_adapter(find_adapters(pack_name, token=token), pack_name, model=model, versions=versions,
                            local_version=local_version, local_digest=local_digest)
    result = pull_adapter(f"{chosen.repo_id}@{chosen.revision}", to=to, token=token, registry=registry)
    return result, chosen


# --------------------------------------------------------------------------- packs: push


def pack_files(root: Path) -> list[Path]:
    """The files a pack consists of, by the loader's rule (`pack.not_pack_content`)."""
    from .pack import not_pack_content

    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(not_pack_content(part) for part in rel.parts):
            continue
        if path.is_file():
            files.append(path)
    return files


def push_pack(path: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
              token: str | None = None, registry: "Registry | None" = None) -> PushResult:
    """Validate a pack, publish it as a dataset repo (files under pack/), tag it `v<version>`."""
    from .pack import files_digest, load_pack

    pack = load_pack(Path(path), registry=registry)
    check_repo_id(repo_id)
    tag = check_tag(revision or f"v{pack.version}")
    files = pack_files(pack.root)
    if files_digest(pack.root, files) != pack.files_digest:
        raise HubError(f"pack {pack.ref} changed while it was being published", file=str(pack.root),
                       hint="run the command again")
    hashes = {p.relative_to(pack.root).as_posix(): sha256_file(p) for p in files}
    token = resolve_token(token, repo_id)
    api = _api(token)
    _prepare_repo(api, repo_id, "dataset", tag, private=private, token=token)
    uploads: dict[str, Any] = {f"{PACK_DIR}/{rel}": str(pack.root / rel) for rel in hashes}
    uploads["README.md"] = card.render_pack_card(pack, repo_id, tag, hashes).encode("utf-8")
    stale = [p for p in _remote_files(api, repo_id, "dataset", token)
             if (p.startswith(f"{PACK_DIR}/") or p == "README.md") and p not in uploads]
    message = f"policyalign pack {pack.ref} (digest {pack.digest[:12]})"
    commit = _commit_and_tag(api, repo_id, "dataset", uploads, stale, message, tag, token)
    return PushResult(_repo_url(repo_id, "dataset", tag), repo_id, tag, commit, tuple(sorted(uploads)))


# --------------------------------------------------------------------------- packs: pull


def _is_safe_relpath(rel: str) -> bool:
    """A relative POSIX path with no '..', '.', empty, absolute, drive or backslash parts."""
    if not rel or rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def file_cap(rel: str) -> int:
    """The most bytes one pack file may have (the loader's limit for its kind)."""
    from .pack import MANIFEST, MAX_EVAL_BYTES, MAX_MANIFEST_BYTES, MAX_OTHER_BYTES

    if rel == MANIFEST:
        return MAX_MANIFEST_BYTES
    return MAX_EVAL_BYTES if rel.endswith(".jsonl") else MAX_OTHER_BYTES


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _download_capped(url: str, dest: Path, cap: int, token: str | None) -> int:
    """Stream one file to `dest`, aborting as soon as it exceeds `cap` bytes (whatever the server claims)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers(token=token)
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
        hf_raise_for_status(response)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _TooLarge(int(declared))
        total = 0
        with open(dest, "xb") as out:  # "x": never follow or overwrite something already there
            for chunk in response.iter_bytes(1 << 16):
                total += len(chunk)
                if total > cap:
                    raise _TooLarge(total)
                out.write(chunk)
    return total


def _fetch_capped(repo_id: str, filename: str, commit: str, cap: int, token: str | None, dest: Path) -> int:
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, filename, repo_type="dataset", revision=commit, endpoint=endpoint())
    with hub_call(f"downloading {filename}", token=token, repo=repo_id):
        return _download_capped(url, dest, cap, token)


def _resolve_pack_revision(api: Any, repo_id: str, wanted: str | None, token: str | None) -> tuple[str, str]:
    """`1.2.0` -> tag v1.2.0 (or a tag/branch named as given, or a commit), a range (`^1`, `~1.2`,
    `>=1.0,<2`) -> the highest version tagged `v<version>` in it; returns (revision, commit)."""
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tags = {t.name: t.target_commit for t in refs.tags}
    branches = {b.name: b.target_commit for b in refs.branches}
    options = ([f"v{wanted}"] if wanted and is_semver(wanted) else []) + [wanted or DEFAULT_BRANCH]
    for option in options:
        if option in tags:
            return option, tags[option]
        if option in branches:
            return option, branches[option]
    if wanted and COMMIT_RE.match(wanted):
        return wanted, wanted
    in_range = _highest_tag_in_range(tags, wanted) if wanted and not is_semver(wanted) else None
    if in_range:
        return in_range, tags[in_range]
    from .registry import version_key

    versions = ", ".join(sorted((t[1:] if t.startswith("v") else t for t in tags), key=version_key)) or "none"
    what = f"matches {wanted!r}" if in_range is not None else f"{wanted!r} is published"
    raise HubError(f"no version {what}", file=repo_id, hint=f"published versions: {versions}")


def _highest_tag_in_range(tags: Mapping[str, str], wanted: str) -> str | None:
    """The `v<version>` tag of the highest published version in the range `wanted` (as a pack's
    `name@range` picks everywhere else); "" when none is in it, None when `wanted` is not a range."""
    try:
        versions = parse_range(wanted)
    except ValueError:
        return None
    published = {Version.parse(tag[1:]): tag for tag in tags if tag.startswith("v") and is_semver(tag[1:])}
    matching = [version for version in published if version in versions]
    return published[max(matching)] if matching else ""


def _read_pack_card(repo_id: str, commit: str, workdir: Path, token: str | None) -> dict[str, Any]:
    """The `policyalign` block of a pack repo's card (downloaded with a size cap)."""
    dest = workdir / "README.md"
    try:
        _fetch_capped(repo_id, "README.md", commit, MAX_CARD_BYTES, token, dest)
    except _TooLarge:
        raise HubError(f"README.md is over {MAX_CARD_BYTES} bytes", file=repo_id, hint="this is not a policyalign pack repo") from None
    metadata, _ = card.parse_card(dest.read_text(encoding="utf-8", errors="replace"))
    recorded = metadata.get("policyalign")
    pack = recorded.get("pack") if isinstance(recorded, dict) else None
    if not isinstance(pack, dict) or not isinstance(recorded.get("files"), dict):
        raise HubError("not a policyalign pack repo (its card has no `policyalign` metadata)", file=repo_id,
                       hint="publish packs with `pa pack push`")
    if not isinstance(pack.get("name"), str) or not PACK_NAME_RE.match(pack["name"]):
        raise HubError(f"the card names an invalid pack {pack.get('name')!r}", file=repo_id)
    return recorded


def _listing_problems(repo_id: str, entries: list[tuple[str, int]], expected: Mapping[str, Any]) -> list[Problem]:
    """Everything wrong with a pack's file listing, before a byte is downloaded."""
    from .pack import MAX_PACK_BYTES, MAX_PACK_FILES

    problems = []
    for rel, size in entries:
        where = f"{repo_id}:{PACK_DIR}/{rel}"
        if not _is_safe_relpath(rel):
            problems.append(Problem(where, "", "unsafe path (absolute, '..' or empty parts)",
                                    "a pack's files must stay inside the pack directory"))
        elif size > file_cap(rel):
            problems.append(Problem(where, "", f"file is {size} bytes, over the {file_cap(rel)}-byte limit",
                                    "packs are bounded in size; this one cannot be installed"))
        elif rel not in expected:
            problems.append(Problem(where, "", "file is not listed in the pack's card", "the repository was modified after `pa pack push`"))
    listed = {rel for rel, _ in entries}
    problems += [Problem(f"{repo_id}:{PACK_DIR}/{rel}", "", "listed in the card but missing from the repository",
                         "the repository is incomplete") for rel in expected if rel not in listed]
    total = sum(size for _, size in entries)
    if len(entries) > MAX_PACK_FILES:
        problems.append(Problem(repo_id, "", f"{len(entries)} files, over the limit of {MAX_PACK_FILES}", "not installable"))
    if total > MAX_PACK_BYTES:
        problems.append(Problem(repo_id, "", f"{total} bytes in all, over the limit of {MAX_PACK_BYTES}", "not installable"))
    return problems


def _list_pack_files(api: Any, repo_id: str, commit: str, token: str | None) -> list[tuple[str, int]]:
    from huggingface_hub.hf_api import RepoFile

    with hub_call("listing the pack's files", token=token, repo=repo_id):
        tree = list(api.list_repo_tree(repo_id, path_in_repo=PACK_DIR, recursive=True, revision=commit, repo_type="dataset"))
    prefix = f"{PACK_DIR}/"
    return [(entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.path, int(entry.size or 0))
            for entry in tree if isinstance(entry, RepoFile)]


def _download_pack(repo_id: str, commit: str, entries: list[tuple[str, int]], hashes: Mapping[str, Any],
                   stage: Path, token: str | None) -> None:
    """Fetch every listed file into `stage` with per-file and total caps, checking each sha256."""
    from .pack import MAX_PACK_BYTES

    budget = MAX_PACK_BYTES
    for rel, _ in entries:
        dest = stage.joinpath(*rel.split("/"))
        if not dest.resolve().is_relative_to(stage.resolve()):
            raise PackError([Problem(f"{repo_id}:{PACK_DIR}/{rel}", "", "path leads outside the pack", "not installable")])
        dest.parent.mkdir(parents=True, exist_ok=True)
        cap = min(file_cap(rel), budget)
        try:
            budget -= _fetch_capped(repo_id, f"{PACK_DIR}/{rel}", commit, cap, token, dest)
        except _TooLarge as exc:
            raise PackError([Problem(f"{repo_id}:{PACK_DIR}/{rel}", "", f"download exceeded {cap} bytes ({exc.size}+)",
                                     "the server sent more than the pack's size limits allow")]) from None
        if sha256_file(dest) != hashes.get(rel):
            raise HubError(f"{PACK_DIR}/{rel} does not match its sha256 in the card", file=repo_id,
                           hint="the repository was modified after `pa pack push`; do not install it")


def pull_pack(spec: str, *, to: str | Path | None = None, token: str | None = None,
              registry: "Registry | None" = None) -> PackPullResult:
    """`pa pack pull ORG/NAME[@VERSION]`: download, verify and validate a pack, then install it.

    Installs into `to/NAME` (default: `user_packs_dir()/NAME`) by renaming a fully checked
    staging directory, so an invalid or tampered pack leaves nothing behind. Its parents resolve
    through `registry` (default: the standard search path) and among the packs already in the
    install directory: once installed, those are its siblings, which the loader always searches.
    """
    from .pack import files_digest, load_pack
    from .registry import Registry, user_packs_dir

    repo_id, wanted = split_spec(spec)
    api = _api(token)
    revision, commit = _resolve_pack_revision(api, repo_id, wanted, token)
    parent = Path(to) if to is not None else user_packs_dir()
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pa-pull-", dir=parent))
    try:
        recorded = _read_pack_card(repo_id, commit, staging, token)
        name, hashes = recorded["pack"]["name"], recorded["files"]
        entries = _list_pack_files(api, repo_id, commit, token)
        problems = _listing_problems(repo_id, entries, hashes)
        if problems:
            raise PackError(problems)
        stage = staging / name
        stage.mkdir()
        _download_pack(repo_id, commit, entries, hashes, stage, token)
        files = [stage.joinpath(*rel.split("/")) for rel, _ in entries]
        if files_digest(stage, files) != recorded["pack"].get("files_digest"):
            raise HubError("the pack's files digest does not match its card", file=repo_id,
                           hint="the repository was modified after `pa pack push`; do not install it")
        pack = load_pack(stage, registry=(registry or Registry.default()).including(parent))
        warnings = _pack_identity_problems(pack, recorded["pack"], repo_id)
        target = parent / name
        replaced = _other_version(target, pack.version)
        _swap_in(stage, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PackPullResult(pack.name, pack.version, pack.digest, target, repo_id, revision, str(commit), tuple(warnings),
                          replaced)


def _other_version(installed: Path, version: str) -> str:
    """name@version of the pack installed at `installed` when it is another version than `version` ("" if
    none): the directory holds one version per name, so pulling 1.0.0 removes an installed 1.1.0."""
    from .registry import read_header

    found = read_header(installed)
    return f"{found.name}@{found.version}" if found is not None and found.version != version else ""


def _pack_identity_problems(pack: "Pack", recorded: Mapping[str, Any], repo_id: str) -> list[str]:
    """Name/version must match the card (error); a different composed digest is only a warning."""
    if pack.name != recorded.get("name") or pack.version != recorded.get("version"):
        raise HubError(f"the card says {recorded.get('name')}@{recorded.get('version')}, "
                       f"the files say {pack.ref}", file=repo_id, hint="the repository was modified after `pa pack push`")
    if pack.digest != recorded.get("digest"):
        return [f"{pack.ref} composes to digest {pack.digest[:12]}… here but {str(recorded.get('digest'))[:12]}… "
                f"where it was published: its parents ({', '.join(pack.extends)}) differ locally"]
    return []
