"""Find the published adapters trained on a pack, and choose and pull the one that fits.

`pull_for_pack` finds published adapters by tag (`pack:medical`) and picks the best match
for the local pack version and the requested base model, or lists the candidates.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import card
from .adapter_pull import PullResult, pull_adapter
from .errors import HubError, HubUnavailableError, PolicyAlignError, UnverifiedAdapterError
from .hub import DEFAULT_BRANCH, LOGIN_HINT, escaped_name, hub_api, hub_call, refuse_several_builds
from .semver import Version, is_semver

if TYPE_CHECKING:
    from .registry import Registry
    from .semver import VersionRange



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


def model_names(model: str) -> set[str]:
    """Every name a base model may be recorded under: as typed, its alias target, its resolved location."""
    from .models import MODEL_ALIASES, resolve_model

    base = model.partition("@")[0]
    names = {base}
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
    api = hub_api(token)
    with hub_call("searching the Hub", token=token, repo=f"pack:{pack_name}",
                  state="an adapter pulled before is found offline: `pa pull ORG/NAME@REVISION`"):
        repos = [m.id for m in api.list_models(filter=["policyalign", f"pack:{pack_name}"])]
    found: dict[tuple[str, str], Candidate] = {}
    for repo_id in repos:
        refs = _unless_unreadable(repo_id, lambda: _refs(api, repo_id, token))
        for revision in [t.name for t in refs.tags] + [DEFAULT_BRANCH] if refs is not None else []:
            if card.unprintable(revision):  # no git tag holds one: a hostile Hub's, printed wherever the candidate is
                print(f"warning: skipped {repo_id}@{escaped_name(revision)}: the tag name holds control characters",
                      file=sys.stderr)
                continue
            candidate = _unless_unreadable(f"{repo_id}@{revision}", lambda: read_candidate(api, repo_id, revision, token))
            if candidate is not None and candidate.pack_name == pack_name:
                found.setdefault((repo_id, candidate.commit), candidate)
    return list(found.values())


def _refs(api: Any, repo_id: str, token: str | None) -> Any:
    with hub_call("reading the repository's tags", token=token, repo=repo_id):
        return api.list_repo_refs(repo_id)


def _unless_unreadable(where: str, read: Callable[[], Any]) -> Any:
    """`read()`, or None with a warning naming `where` when the Hub cannot answer it: one repository
    deleted during the search, or one revision the Hub fails on, stopped the whole `pa pull --pack`
    with an error about a candidate the user never asked for. The search itself failing still stops it, and
    so does an outage (`HubUnavailableError`, exit 3): skipped, the candidate it hid (perhaps the newest
    match) was passed over for another, and the pull ended 0 with an adapter a rerun would not choose."""
    try:
        return read()
    except HubUnavailableError:
        raise
    except HubError as exc:
        print(f"warning: skipped {where}: {exc.problem.message}", file=sys.stderr)
        return None


def read_candidate(api: Any, repo_id: str, revision: str, token: str | None) -> Candidate | None:
    with hub_call(f"reading the card at {revision}", token=token, repo=repo_id):
        info = api.model_info(repo_id, revision=revision)
    recorded = card.hub_card_metadata(info.card_data).get("policyalign")
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
    return isinstance(value, str) and bool(value) and not card.unprintable(value)


def choose_adapter(candidates: list[Candidate], pack_name: str, *, model: str | None = None,
                   local_version: str | None = None, local_digest: str | None = None,
                   versions: "VersionRange | None" = None, token: str | None = None) -> Candidate:
    """The best candidate (`rank_adapters`' first)."""
    return rank_adapters(candidates, pack_name, model=model, local_version=local_version, local_digest=local_digest,
                         versions=versions, token=token)[0]


def rank_adapters(candidates: list[Candidate], pack_name: str, *, model: str | None = None,
                  local_version: str | None = None, local_digest: str | None = None,
                  versions: "VersionRange | None" = None, token: str | None = None) -> list[Candidate]:
    """The candidates that match, best first: same base model, then the local pack's exact digest, then its
    exact version; tags before main, then the most recently modified. `token` is the one `candidates` were
    searched with (None: huggingface_hub's own, HF_TOKEN or the cached login), for the hint of an empty search.

    Without a local pack the newest pack version (in `versions`, when given) wins. Anything
    ambiguous or missing is a HubError that lists the candidates, so the user can pull one explicitly.
    """
    pool = candidates
    if versions is not None:
        pool = [c for c in pool if is_semver(c.pack_version) and Version.parse(c.pack_version) in versions]
        # `name@1.0.0+a`: that build, not 1.0.0+b, which the range admits (one precedence)
        pool = [c for c in pool if c.pack_version == versions.text] or pool
    asked = f"@{local_version}" if local_version else (f"@{versions.text}" if versions is not None else "")
    what = f"pack {pack_name}{asked}" + (f" on {model}" if model else "")
    if model is not None:
        wanted, _, pinned = model.partition("@")
        names = model_names(wanted)
        on_any_base = pool
        pool = [c for c in pool if c.base_id.lower() in names or c.base_name.lower() in names]
        if not pool and on_any_base and not _known_model(wanted):
            raise _unknown_base_error(wanted, on_any_base, what, pack_name, token)
        if pinned:  # MODEL@REV: an adapter trained on other weights of that model does not fit them
            pool = [c for c in pool if c.trained_at(pinned)]
    if local_version is not None:
        pool = [c for c in pool if c.pack_version == local_version]
        exact = [c for c in pool if local_digest and c.pack_digest == local_digest]
        pool = exact or pool
    elif pool:
        newest = max((Version.parse(c.pack_version) for c in pool if is_semver(c.pack_version)), default=None)
        pool = [c for c in pool if newest is None or (is_semver(c.pack_version) and Version.parse(c.pack_version) == newest)]
    if not pool:
        raise HubError(f"no published adapter matches {what}", file=f"pack:{pack_name}",
                       hint=_candidates_hint(candidates, pack_name, token))
    if model is None and len({c.base_id for c in pool}) > 1:
        raise HubError(f"adapters for {what} exist for several base models; pass --model", file=f"pack:{pack_name}",
                       hint=_candidates_hint(pool, pack_name, token))
    # one precedence: the most recently modified was pulled, a choice between two policies the user could not see
    refuse_several_builds(sorted({c.pack_version for c in pool}), f"adapters for {what} were trained on",
                          file=f"pack:{pack_name}", hint=_candidates_hint(pool, pack_name, token))
    return sorted(pool, key=lambda c: (c.revision != DEFAULT_BRANCH, c.last_modified), reverse=True)


def _known_model(name: str) -> bool:
    """Whether `name` is a model pa knows: `tiny`, an alias, an ORG/NAME Hub id or a model directory."""
    from .models import resolve_model

    if name.strip().lower() == "tiny":  # resolving tiny would build it
        return True
    try:
        resolve_model(name)
    except PolicyAlignError:
        return False
    return True


def _unknown_base_error(model: str, candidates: list[Candidate], what: str, pack_name: str,
                        token: str | None) -> HubError:
    """`pa pull --pack general --model tyni`: a --model pa does not know, that no candidate was trained on, said
    only "no published adapter matches", as if nobody had trained on the model meant. It names the bases the
    adapters were trained on, and the close one when there is one."""
    from .errors import did_you_mean

    bases = sorted({c.base_id for c in candidates})
    # the names are few and long but for tiny, whose typos are a swapped pair ("tyni"): a lower cutoff catches it
    close = did_you_mean(model, sorted({*bases, *(c.base_name for c in candidates)}), cutoff=0.5)
    return HubError(f"no published adapter matches {what}: {model!r} is not a model pa knows, and the adapters "
                    f"found were trained on {', '.join(bases)}", file=f"pack:{pack_name}",
                    hint=(f"{close} " if close else "") + _candidates_hint(candidates, pack_name, token))


def _candidates_hint(candidates: list[Candidate], pack_name: str, token: str | None) -> str:
    if not candidates:
        return _none_listed_hint(pack_name, token)
    lines = "\n".join(f"      {c.describe()}" for c in sorted(candidates, key=lambda c: (c.repo_id, c.revision)))
    return f"candidates (pull one with `pa pull ORG/NAME@REV`):\n{lines}"


def _none_listed_hint(pack_name: str, token: str | None) -> str:
    """Why the listing was empty. The Hub lists a private repository only to a token that can read it, so
    "nobody has published" was untrue to a user without a token (or with another user's) whose adapter
    was private: say what was searched, and how to search the private ones too. The token is the one the
    search sent (`token`, else huggingface_hub's own): `pull_for_pack(token=...)` without a login was told to log in."""
    from huggingface_hub import get_token

    if token or get_token():
        return f"nobody has published an adapter tagged pack:{pack_name} that this token can read"
    return (f"no public adapter is tagged pack:{pack_name}, and private ones are listed only to a token that can "
            f"read them: {LOGIN_HINT}")


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
    ranked = rank_adapters(find_adapters(pack_name, token=token), pack_name, model=model, versions=versions,
                           local_version=local_version, local_digest=local_digest, token=token)
    return _pull_first_verified(ranked, to=to, token=token, registry=registry)


def _pull_first_verified(ranked: list[Candidate], *, to: str | Path | None, token: str | None,
                         registry: "Registry") -> tuple[PullResult, Candidate]:
    """Pull the best of `ranked` that verifies. Anyone may publish an adapter tagged pack:NAME, and one whose
    files do not match its card, ranked first, stopped every `pa pull --pack NAME` though verified ones were
    published: it is passed over with a warning. When none verifies, the best match's error stands; any
    other failure (an outage, the --to directory) stops the search."""
    passed_over: list[str] = []
    first: UnverifiedAdapterError | None = None
    for chosen in ranked:
        label = f"{chosen.repo_id}@{escaped_name(chosen.revision)}"
        try:
            result = pull_adapter(f"{chosen.repo_id}@{chosen.revision}", to=to, token=token, registry=registry)
        except UnverifiedAdapterError as exc:
            first = first or exc
            passed_over.append(f"passed over {label}: {' '.join(exc.problem.message.split())}")
            continue
        return dataclasses.replace(result, warnings=(*passed_over, *result.warnings)), chosen
    if first is None:  # rank_adapters raises rather than rank none
        raise HubError("no published adapter to pull")
    raise first
