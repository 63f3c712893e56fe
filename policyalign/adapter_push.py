"""Publish a run's adapter on the Hub with a model card that pins what it was trained on.

The point of publishing through policyalign rather than `upload_folder` is that whoever pulls
an adapter can know exactly which policy it was trained on: `push_adapter` uploads a run's
adapter, `policyalign.json`, eval results and plots with a model card whose metadata pins the
pack (name, version, digest), the base model and the sha256 of every file, then tags the commit
with the pack version (`medical-v1.0.0`). `push_run` is the same for `pa apply --push-to`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from . import card
from .adapter_pull import UNLISTED_OK
from .adapter_search import read_candidate
from .errors import HubError, PolicyAlignError
from .hub import (PushResult, check_repo_id, commit_and_tag, endpoint, hub_api, hub_call, prepare_repo,
                  push_tag, remote_files, repo_url, resolve_token)
from .io import write_text

# Files a previous push may have left that this push must replace or remove, so an older
# version's results can never sit next to a newer adapter. The eval files by name, as `card.load_run`
# collects them: every path under eval/ was taken for one, and a report someone uploaded there was deleted.
MANAGED_FILES = {"README.md", *card.REQUIRED_ADAPTER_FILES, *card.OPTIONAL_ADAPTER_FILES, "eval/before_after.png",
                 *(f"eval/{stage}/{name}" for stage in card.EVAL_STAGES for name in card.EVAL_FILES)}


def push_adapter(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 token: str | None = None, license: str | None = None,
                 on_warning: Callable[[str], None] = lambda text: None) -> PushResult:
    """Publish a run's adapter with its model card; tag the commit `<pack>-v<version>` (or `revision`).

    Holds the run's lock: beside a `pa apply` retraining in the same directory, the adapter, its
    evals and the card could be read from two different trainings and published as one. Each warning
    (`outdated_warnings`) goes to `on_warning` before anything is sent, and is in the result too."""
    from contextlib import nullcontext

    from .run import run_lock

    if Path(run_dir).is_dir():  # before the lock, which left its file in the adapter folder it refused
        card.refuse_adapter_dir(Path(run_dir))
    with run_lock(Path(run_dir)) if Path(run_dir).is_dir() else nullcontext():
        return _push_adapter(run_dir, repo_id, private=private, revision=revision, token=token, license=license,
                             on_warning=on_warning)


def _run_tag(artifacts: "card.RunArtifacts", revision: str | None) -> str:
    """The tag a push of this run goes under (`--revision`, else the run's default tag), checked by `hub.push_tag`."""
    return push_tag(revision, artifacts.default_tag, f"the run's pack {artifacts.pack['name']}@{artifacts.pack['version']}")


def _push_adapter(run_dir: str | Path, repo_id: str, *, private: bool, revision: str | None,
                  token: str | None, license: str | None, on_warning: Callable[[str], None]) -> PushResult:
    artifacts = card.load_run(run_dir)
    check_repo_id(repo_id)
    card.check_license(license)
    tag = _run_tag(artifacts, revision)
    warnings = outdated_warnings(Path(run_dir))
    for warning in warnings:
        on_warning(warning)
    token = resolve_token(token, repo_id)
    api = hub_api(token)
    pack = artifacts.pack
    readme = card.render_model_card(artifacts, repo_id, tag, license=license)
    prepare_repo(api, repo_id, "model", tag, private=private, token=token,
                 explain_taken=lambda: _published_hint(api, repo_id, tag, artifacts, token, readme)
                 or (_changed_pack_hint(api, repo_id, tag, pack, token) if pack else None))
    uploads: dict[str, Any] = {name: str(path) for name, path in artifacts.files.items()}
    uploads["README.md"] = readme.encode("utf-8")
    remote = remote_files(api, repo_id, "model", token)
    _refuse_foreign_files(remote, repo_id)
    stale = [p for p in remote if p in MANAGED_FILES and p not in uploads]
    base = artifacts.base_model
    message = f"policyalign: {pack['name']}@{pack['version']} adapter for {base['id']}"
    commit = commit_and_tag(api, repo_id, "model", uploads, stale, message, tag, token)
    write_text(Path(run_dir) / "README.md", readme)  # the card as published, kept with the run
    return PushResult(repo_url(repo_id, "model", tag), repo_id, tag, commit, tuple(sorted(uploads)), warnings)


# What changed under an outdated stage (`stages.outdated_stage`) that `pa push` names: the card is rendered
# anew by the push, and an after-eval of other weights than the adapter's is refused by `card.load_run`.
_CHANGED_UNDER = {"filter": "instructions.jsonl changed after the selection the adapter was trained on was made from it",
                  "distill": "selected.jsonl or heldout.jsonl changed after the adapter was trained on them"}


def outdated_warnings(run_dir: Path) -> tuple[str, ...]:
    """Why the adapter published is not what the run's files make now, when `pa runs` lists it as outdated:
    `pa filter` re-run by hand after training (a new --top-k, --no-filter), then `pa push`, published the
    old adapter without a word, as if it were the new selection's. Its card stays true (it records the selection
    the adapter was trained on), so this is said, not refused."""
    from .run import read_manifest
    from .stages import outdated_stage

    stale = outdated_stage(run_dir, read_manifest(run_dir)["stages"])
    if stale not in _CHANGED_UNDER:
        return ()
    return (f"{run_dir} is outdated from {stale} (as `pa runs` lists it): {_CHANGED_UNDER[stale]}, so the adapter "
            f"pushed was trained on the old ones; to publish what the files there make now, re-run `pa apply` on "
            f"this run and push it under a new --revision",)


def _refuse_foreign_files(remote: list[str], repo_id: str) -> None:
    """Refuse, before uploading, a repository holding files `pa push` does not manage (someone's
    config.json, notes, another tool's weights): the card cannot vouch for them, so `pa pull` would
    reject the adapter as tampered with, and `pa push` will not delete files it did not write."""
    foreign = sorted(p for p in remote if p not in MANAGED_FILES and p not in UNLISTED_OK)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" (and {len(foreign) - 10} more)" if len(foreign) > 10 else "")
        command = f"hf repos delete-files {repo_id} " + (" ".join(map(card.sh, foreign)) if len(foreign) <= 10 else "PATTERN...")
        raise HubError(f"the repository holds files `pa push` does not publish: {shown}; "
                       "`pa pull` refuses an adapter repository with files its card does not list", file=repo_id,
                       hint=f"push to a new repository, or delete those files first (`{command}`)")


def check_push_target(repo_id: str, token: str | None = None, *, option: str = "--push-to") -> None:
    """What `push_run` will need, checked without the network before `pa apply` trains for hours:
    a well-formed repository id, a token (an invalid one is still only found out by the Hub), and the Hub not
    switched off: with HF_HUB_OFFLINE=1 (as README advises offline) every stage ran, then the push failed.
    `option` is where the repository was given (`push_to in FILE`), for a bad id's error to name."""
    from huggingface_hub import constants

    resolve_token(token, check_repo_id(repo_id, option))
    if constants.HF_HUB_OFFLINE:
        raise HubError("pushing: HF_HUB_OFFLINE=1 is set, and this needs the Hub", file=repo_id,
                       hint="unset HF_HUB_OFFLINE where the Hub can be reached, or drop --push-to and publish the "
                            "finished run there with `pa push RUN_DIR --repo-id ORG/NAME`")


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None, license: str | None = None) -> str:
    """`pa apply --push-to`: publish the run's adapter and return the URL of the tagged revision."""
    return push_adapter(run_dir, repo_id, private=private, revision=revision, token=token, license=license).url


def published_url(run_dir: str | Path, repo_id: str, *, revision: str | None = None, token: str | None = None,
                  license: str | None = None) -> str | None:
    """The URL of the tag this run would be pushed under when the Hub already holds this very run there
    (the same card, listing the same files hash for hash), else None: a `pa apply` killed after its push
    made the tag, but before run.json recorded it, finishes on the re-run instead of failing on the tag.
    The same files under another card (a re-run with another --license) are not it: that card is not
    published, and recording the push as done reported it published."""
    artifacts = card.load_run(run_dir)
    tag = _run_tag(artifacts, revision)
    token = resolve_token(token, repo_id)
    readme = card.render_model_card(artifacts, repo_id, tag, license=license)
    if _published_at(hub_api(token), repo_id, tag, artifacts, token, readme) != "card":
        return None
    write_text(Path(run_dir) / "README.md", readme)
    return repo_url(repo_id, "model", tag)


def _published_at(api: Any, repo_id: str, tag: str, artifacts: card.RunArtifacts, token: str,
                  readme: str) -> str | None:
    """What the tag holds of this run: "card" (this very card, so these very files), "files" (this run's
    files, hash for hash, under another card: another license), or None (something else, or unreadable)."""
    try:
        with hub_call(f"reading the card at {tag}", token=token, repo=repo_id):
            card_data = api.model_info(repo_id, revision=tag).card_data
    except PolicyAlignError:
        return None
    recorded = card.hub_card_metadata(card_data).get("policyalign")
    if not isinstance(recorded, dict) or recorded.get("files") != card.file_hashes(artifacts.files):
        return None
    from huggingface_hub import hf_hub_download

    try:
        with hub_call(f"downloading the card at {tag}", token=token, repo=repo_id):
            published = Path(hf_hub_download(repo_id, "README.md", revision=tag, token=token, endpoint=endpoint()))
        return "card" if published.read_bytes() == readme.encode("utf-8") else "files"
    except (OSError, PolicyAlignError):
        return "files"


def _published_hint(api: Any, repo_id: str, tag: str, artifacts: card.RunArtifacts, token: str,
                    readme: str) -> str | None:
    """The fix when the tag already holds this very run (its card lists the same files, hash for hash):
    a second `pa push` of one run was told to publish it again under another tag, a duplicate. Under
    another card (pushed with another --license), "nothing to push" was false: this card is not published."""
    held = _published_at(api, repo_id, tag, artifacts, token, readme)
    if held == "files":
        return (f"the adapter at {tag} is this run's (its card lists the same files), but published with another "
                f"card than this push writes (another --license?): a tag is never moved; publish this card under "
                f"a new tag with --revision (e.g. {tag}-r2), or keep the published one")
    if held is None:
        return None
    return (f"the adapter at {tag} is this run's (its card lists the same files): it is already published, "
            f"nothing to push; pull it with `pa pull {repo_id}@{tag}` (to tag it again as well: --revision NEW-TAG)")


def _changed_pack_hint(api: Any, repo_id: str, tag: str, pack: Mapping[str, Any], token: str) -> str | None:
    """The fix when the adapter at `tag` was trained on the same pack version with other content: the
    pack was edited without a version bump, and another tag would publish two policies as one version."""
    try:
        published = read_candidate(api, repo_id, tag, token)
    except PolicyAlignError:
        return None
    if published is None or (published.pack_name, published.pack_version) != (pack.get("name"), pack.get("version")) \
            or published.pack_digest == pack.get("digest"):
        return None
    return (f"the adapter at {tag} was trained on {published.pack_name}@{published.pack_version} with digest "
            f"{published.pack_digest[:12]}, this run's pack has digest {str(pack.get('digest'))[:12]}: the pack "
            "changed without a version bump. Bump its version (`pa bump PACK_DIR patch --note ...`) and re-run "
            f"`pa apply`, so that one version names one policy (--revision {tag}-r2 would publish it as the same version)")
