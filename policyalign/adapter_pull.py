"""Pull a published adapter, verifying its provenance before anything uses it.

`pull_adapter` downloads a revision and refuses it (HubError) unless card metadata,
`policyalign.json` and file hashes agree (`verify_adapter`: each fact the card states: pack
name, version, digest, a child pack's parents, base model id, name, revision and commit); it
then compares the pack, and each pack it extends, with the local one (`compare_local_pack`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import card
from .errors import HubError, InvalidInputError, PolicyAlignError, UnverifiedAdapterError
from .hub import (DEFAULT_BRANCH, MAX_CARD_BYTES, case_clashes, endpoint, escaped_name, hub_api, hub_call,
                  is_safe_relpath, split_spec, swap_in, unportable_part)
from .io import output_dir, read_json, sha256_file

if TYPE_CHECKING:
    from .pack import Pack
    from .registry import Registry

# Files a pulled adapter repository may hold without the card listing them (the card itself,
# and the .gitattributes the Hub adds); any other unlisted file is a provenance problem.
UNLISTED_OK = {"README.md", ".gitattributes"}
REGEX_COMMIT = re.compile(r"[0-9a-f]{40}")
# What a second `pa pull` into the same --to is told (run.run_lock's `busy`).
PULL_BUSY = ("`pa pull --to` target", "wait for the other `pa pull` into it to finish, or pull into another --to")

# The most bytes `pa pull` takes of each kind of file (`adapter_file_cap`), checked on the Hub's listing before any
# download: a pulled repository is untrusted, and pa reads the card and the JSON files whole to parse them.
# JSON: adapter_config.json and policyalign.json are a few kilobytes, an eval.json tens of kilobytes.
MAX_JSON_BYTES = 4 * 1024 * 1024
# Tokenizer files a run may publish (card.OPTIONAL_ADAPTER_FILES): the largest tokenizer.json of a common model
# (Gemma 3's, a 262k vocabulary) is 33 MB; Qwen2.5's is 7 MB, Llama 3's 9 MB.
TOKENIZER_FILES = frozenset(name for name in card.OPTIONAL_ADAPTER_FILES if not name.endswith(".png"))
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
# Anything else the card may list (the loss and eval plots: tens of kilobytes), hashed but not parsed by pa.
MAX_OTHER_BYTES = 16 * 1024 * 1024
# Adapter weights, the one kind a genuine adapter can make large: a LoRA on every linear layer of a 70B Llama
# (80 layers; q and o 8192x8192, k and v 8192x1024, gate and up 8192x28672, down 28672x8192: rank x 161,792
# parameters a layer) at rank 256, in fp32 (PEFT keeps adapter weights in fp32), is 80 x 161,792 x 256 x 4 bytes
# = 13.3 GB (12.3 GiB); on Llama 3.1 405B (126 layers, rank x 309,248 a layer) rank 64 is 10.0 GB. pa's default,
# rank 16 on the attention projections, is 0.26 GB on the 70B. 16 GiB is above all of them; WEIGHTS_LIMIT_ENV
# raises it for a larger one (a higher rank still).
DEFAULT_MAX_WEIGHTS_BYTES = 16 * 1024 ** 3
WEIGHTS_LIMIT_ENV = "PA_PULL_MAX_WEIGHTS"
WEIGHTS_KIND = "adapter weights"
_SIZE = re.compile(r"(\d+) ?(B|KiB|MiB|GiB|TiB)?", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


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
    covered: str = ""  # what verify_adapter checked besides the pack and base model (`coverage`)


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
        raise UnverifiedAdapterError("no model card (README.md)", file=label, hint="only adapters published with `pa push` can be verified")
    metadata, body = card.parse_card(readme.read_text(encoding="utf-8", errors="replace"))
    recorded = _policyalign_block(metadata, label)
    if not (path / card.PROVENANCE_FILE).is_file():
        raise UnverifiedAdapterError(f"no {card.PROVENANCE_FILE}", file=label, hint="the repository is incomplete; ask its publisher to re-push")
    try:
        provenance = read_json(path / card.PROVENANCE_FILE)
    except PolicyAlignError:
        raise UnverifiedAdapterError(f"{card.PROVENANCE_FILE} is not valid JSON", file=label) from None
    problems = _provenance_problems(metadata, recorded, provenance) + _file_problems(path, recorded)
    problems += _body_problems(body, recorded)
    problems += _base_revision_problems(path, provenance)
    if not problems:  # the config is the one the card lists: read only then
        problems += config_problems(read_json(path / "adapter_config.json"))
    if problems:
        raise _tampered(problems, label)
    try:  # the same fields `pa push` requires: pack name, version and digest, base model id
        card._check_provenance(provenance, path / card.PROVENANCE_FILE)
    except PolicyAlignError as exc:
        raise UnverifiedAdapterError(f"provenance check failed: {exc.problem.message}", file=f"{label}:{card.PROVENANCE_FILE}",
                       where=exc.problem.where,
                       hint="`pa push` never publishes such an adapter, so its pack cannot be known; "
                            "do not use it, or ask its publisher to re-push") from None
    _check_base_text(provenance, label)
    problems = _result_problems(path, metadata, provenance)
    if problems:
        raise _tampered(problems, label)
    return metadata, provenance


def _check_base_text(provenance: Mapping[str, Any], label: str) -> None:
    """The base model's name, revision and commit, when recorded, must be plain text: `pa pull` prints the commit
    (or revision) in the `pa eval ... --model BASE@COMMIT` it suggests, and a card and policyalign.json forged
    alike with ESC ]0;... BEL there verified and sent it to the puller's terminal."""
    for key in ("name", "revision", "commit"):
        value = provenance["base_model"].get(key)
        if value is not None and (not isinstance(value, str) or card.unsafe_id(value)):
            raise UnverifiedAdapterError(f"provenance check failed: base_model.{key} is not plain text",
                           file=f"{label}:{card.PROVENANCE_FILE}", where=f"/base_model/{key}",
                           hint="`pa push` never publishes such an adapter; do not use it, or ask its publisher to re-push")


def _policyalign_block(metadata: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The card's `policyalign` metadata; a card without it is not an adapter `pa push` published."""
    recorded = metadata.get("policyalign")
    if not isinstance(recorded, dict):
        raise UnverifiedAdapterError("not a policyalign adapter: its card has no `policyalign` metadata", file=label,
                       hint="only adapters published with `pa push` can be verified")
    return recorded


def _tampered(problems: list[str], label: str) -> UnverifiedAdapterError:
    repo_id = label.partition("@")[0]
    return UnverifiedAdapterError("provenance check failed:\n" + "\n".join(f"  - {p}" for p in problems), file=label,
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
    artifacts = card.RunArtifacts(path, provenance, evals)
    expected = _index_values(card.model_index("", artifacts))
    # a --limit'ed set's result is not published, but a card pushed before that was has it: right if eval.json agrees
    recorded = _index_values(card.model_index("", artifacts, limited=True))
    claimed = _index_values(metadata.get("model-index"))
    problems = []
    for split, metric in sorted(set(expected) | set(claimed)):
        want, got = recorded.get((split, metric)), claimed.get((split, metric))
        if not (isinstance(want, (int, float)) and isinstance(got, (int, float)) and abs(want - got) <= 1e-6):
            problems.append(f"model-index result {escaped_name(split)} {escaped_name(metric)}: the card says {got!r}, "
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
    ref = f"{name}@{version}"  # shown escaped, like the tag: a forged name's terminal escapes went raw to stderr
    for tag in ([f"pack:{name}", f"pack-version:{version}"] if name and version else []):
        if tag not in tags:
            problems.append(f"README.md's `tags` lack {tag!r} ({card.PROVENANCE_FILE} says pack {ref!r})")
    return problems


def _body_problems(body: str, recorded: Mapping[str, Any]) -> list[str]:
    """The card's text must be what `pa push` wrote (`body_sha256`): it states the pack digest and the
    rates too, and an edit there passed as verified. A card without the hash (pushed before it was
    recorded) claims nothing."""
    if "body_sha256" not in recorded or recorded["body_sha256"] == card.body_sha256(body):
        return []
    return ["README.md's text below its metadata does not match its sha256 in the card (`policyalign.body_sha256`): "
            "it was edited after `pa push`"]


# A module name, as `pa distill` lists `target_modules` (PEFT writes `all-linear` out as names), and the
# `exclude_modules` it writes for a multimodal model (`trainer.outside_pattern`: escaped names, then `\..*`).
_MODULE_NAME = re.compile(r"[\w.-]{1,200}")
_OUTSIDE = re.compile(r"\(\?:(?:[\w-]|\\\.){1,200}(?:\|(?:[\w-]|\\\.){1,200}){0,50}\)\\\.\.\*")


def config_problems(config: Any) -> list[str]:
    """adapter_config.json's module patterns, where they are not what `pa distill` writes. PEFT matches a string
    `target_modules` or `exclude_modules`, and the keys of `rank_pattern` and `alpha_pattern`, as regexes against
    every module name of the base: a forged `(.*.*)*X` hung `pa eval --adapter` in the regex engine."""
    if not isinstance(config, dict):
        return ["adapter_config.json is not a JSON object"]
    problems = []
    for key in ("target_modules", "exclude_modules", "rank_pattern", "alpha_pattern", "layers_pattern"):
        value = config.get(key)
        names = value if isinstance(value, list) else list(value) if isinstance(value, dict) else [value]
        plain = all(isinstance(name, str) and _MODULE_NAME.fullmatch(name) for name in names)
        if value is None or (isinstance(value, (list, dict)) and not value) or plain \
                or (key == "exclude_modules" and isinstance(value, str) and _OUTSIDE.fullmatch(value)):
            continue
        problems.append(f"adapter_config.json `{key}` is not plain module names ({escaped_name(str(value)[:80])}): "
                        "PEFT would match it as a regular expression against every module of the base")
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
        if not is_safe_relpath(str(name)) or not target.is_file():
            problems.append(f"{escaped_name(str(name))} is listed in the card but missing")
        elif sha256_file(target) != digest:
            problems.append(f"{escaped_name(str(name))} does not match its sha256 in the card")
    problems += [f"{escaped_name(name)} is in the repository but not listed in the card"
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
    Offline (HF_HUB_OFFLINE=1) the revision must be in the cache (`_cached_snapshot`), and that
    copy is verified alike.
    """
    repo_id, revision = split_spec(spec)
    revision = revision or DEFAULT_BRANCH
    label = f"{repo_id}@{revision}"
    weights_limit()
    cached, notes, wanted, sizes = None, [], None, None
    if _offline():
        cached = _cached_snapshot(repo_id, revision, label)
        commit = cached.name
        _refuse_oversized({name: (cached / name).stat().st_size for name in _downloaded_files(cached)
                           if (cached / name).is_file()}, label)
        notes.append(f"offline (HF_HUB_OFFLINE=1): verified the copy of commit {commit[:12]} in the Hugging Face "
                     f"cache; the Hub was not asked which commit {revision} names now")
    else:
        api = hub_api(token)
        info = _revision_info(api, repo_id, revision, token)
        commit = info.sha
        _refuse_removed_card(info, label)
        # refused before the download: `pa pull` of a base model (not an adapter) fetched all its weights first
        wanted = _refuse_unlisted(info, _policyalign_block(card.hub_card_metadata(info.card_data), label), label)
        sizes = _listed_sizes(api, repo_id, commit, wanted, token)
        _refuse_oversized(sizes, label)
    if to is not None:
        path, (metadata, provenance) = _pull_into(Path(to), repo_id, commit, label, token, cached, wanted, sizes)
    elif cached is not None:
        path, (metadata, provenance) = cached, verify_adapter(cached, label)
    else:
        path, (metadata, provenance) = _pull_cached(repo_id, revision, commit, label, token, wanted, sizes)
    covered, unverified = coverage(metadata, provenance)
    warnings, more = compare_local_pack(provenance["pack"], registry, token=token)
    return PullResult(repo_id, revision, str(commit), path, provenance["pack"], provenance["base_model"],
                      tuple(warnings), tuple(notes + unverified + more), covered)


def coverage(metadata: Mapping[str, Any], provenance: Mapping[str, Any]) -> tuple[str, list[str]]:
    """What `verify_adapter` checked besides the pack and base model, from the card metadata and policyalign.json
    it returned, and a "not verified: ..." note for each thing it could not check. `pa pull` said "verified:
    pack P@V, base model B" only: a card pushed before its text was hashed (no `body_sha256`) passed with its
    text unchecked, and a Hub base recorded without a commit names no weights, without a word of either."""
    recorded = metadata.get("policyalign") if isinstance(metadata.get("policyalign"), dict) else {}
    files = recorded.get("files")
    hashed = f"the sha256 of its {len(files) if isinstance(files, dict) else 0} files"
    notes = []
    if "body_sha256" in recorded:
        covered = f"{hashed}, the card's text and results"
    else:
        covered = f"{hashed} and the card's results"
        notes.append("not verified: the card's text (pushed before `pa push` recorded its sha256; its metadata was verified)")
    base = provenance.get("base_model") or {}
    base_id, commit, revision = str(base.get("id")), base.get("commit"), base.get("revision")
    if "/" in base_id and not commit and not (isinstance(revision, str) and REGEX_COMMIT.fullmatch(revision)):
        loaded = f", only the revision {revision!r} it was loaded at" if revision else ""
        notes.append(f"not verified: which weights of {base_id} it was trained on: {card.PROVENANCE_FILE} records no "
                     f"commit of it{loaded} (a branch or tag may have moved since)")
    elif base.get("kind") == "local":
        notes.append(f"not verified: the base model's weights: it was trained on a local directory named {base_id}, "
                     f"which {card.PROVENANCE_FILE} names but does not hash")
    return covered, notes


def _revision_info(api: Any, repo_id: str, revision: str, token: str | None) -> Any:
    """`model_info` at `revision`; a revision the repository lacks is named with the tags and branches it has.

    `pa pull org/name@v2` of a repository tagged otherwise said "repository not found (or private)" and
    "check ORG/NAME" (a Hub that answers a missing revision as RepoNotFound), or only "revision not found":
    the user was left to guess the tag `pa push` set (PACK-vVERSION). When the refs cannot be listed either,
    the repository is what is missing, and the lookup's own error stands."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    with hub_call(f"looking up revision {revision}", token=token, repo=repo_id):
        try:
            return api.model_info(repo_id, revision=revision)
        except (RevisionNotFoundError, RepositoryNotFoundError):
            refs = _refs_or_none(api, repo_id, token)
            if refs is None:
                raise  # the lookup's own error: hub_call names the repository as not found (or private)
            tags = ", ".join(escaped_name(t.name) for t in refs.tags) or "none"
            branches = ", ".join(escaped_name(b.name) for b in refs.branches) or "none"
            example = escaped_name(refs.tags[0].name if refs.tags else DEFAULT_BRANCH)
            raise HubError(f"no revision {escaped_name(revision)!r} in {repo_id} (no tag, branch or commit of that name)",
                           file=repo_id, hint=f"its tags: {tags}; branches: {branches}. "
                                              f"Pull one of them, e.g. `pa pull {repo_id}@{example}`") from None


def _refs_or_none(api: Any, repo_id: str, token: str | None) -> Any:
    """The repository's tags and branches, or None when they cannot be read (it is missing, private, or the Hub failed)."""
    try:
        with hub_call("reading the repository's tags", token=token, repo=repo_id):
            return api.list_repo_refs(repo_id)
    except HubError:
        return None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_snapshot(repo_id: str, revision: str, label: str) -> Path:
    """The Hugging Face cache's snapshot of `revision` (a commit, or a tag or branch its `refs/` records),
    for a pull offline. Offline, every pull failed at the revision lookup ("offline mode is enabled"),
    an adapter pulled and verified before included: none could be pulled on a machine without internet."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        with hub_call("reading the Hugging Face cache", repo=repo_id):
            # only the card is required here: `verify_adapter` checks every file it lists, and a pull downloads no
            # other (the .gitattributes of the tree listing, say, which asking for all files would require)
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=["README.md"]))
    except (LocalEntryNotFoundError, HubError):
        names = "" if REGEX_COMMIT.fullmatch(revision) else f", and which commit {revision} names"
        raise HubError("not in the Hugging Face cache, and HF_HUB_OFFLINE=1 keeps `pa pull` from the Hub", file=label,
                       hint=f"pull it once with internet (`pa pull {label}` records it in the cache{names}), "
                            f"or name a commit pulled before: `pa pull {repo_id}@COMMIT`") from None


def _pull_cached(repo_id: str, revision: str, commit: str, label: str, token: str | None,
                 wanted: list[str] | None = None,
                 sizes: Mapping[str, int] | None = None) -> tuple[Path, tuple[dict[str, Any], dict[str, Any]]]:
    """Download `commit` into the Hugging Face cache and verify it there (`verify_adapter`'s result with the path); then record that `revision`
    names it (`refs/`), so that a pull offline finds it by the same name.

    A refused revision's files that this pull downloaded are removed from the cache again: they stayed
    there, and `PeftModel.from_pretrained(REPO, revision=COMMIT)` loaded them without any check."""
    repo = _cache_repo(repo_id)
    before = _cache_files(repo)
    path = _snapshot(repo_id, commit, None, token, wanted)
    try:
        _check_listed_sizes(path, sizes or {}, label)
        verified = verify_adapter(path, label)
    except PolicyAlignError:
        _forget_added(repo, commit, before)
        raise
    if revision != commit:
        ref = repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit, encoding="utf-8")
    return path, verified


def _cache_repo(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cache_files(repo: Path) -> set[Path]:
    """Every file and link of a repository's folder in the Hugging Face cache."""
    return {p for p in repo.rglob("*") if p.is_symlink() or p.is_file()} if repo.is_dir() else set()


def _forget_added(repo: Path, commit: str, before: set[Path]) -> None:
    """Remove what a refused pull of `commit` added to the cache (snapshot links, blobs, tree listing).
    Files that were there before stay, and so does a blob another snapshot links to: the cache shares
    one blob among the revisions holding the same content (a verified revision's card, say)."""
    snapshots = repo / "snapshots"
    refused = snapshots / commit
    used = {link.resolve() for link in snapshots.rglob("*") if link.is_symlink() and refused not in link.parents}
    for added in sorted(_cache_files(repo) - before):
        if not (added.parent == repo / "blobs" and added.resolve() in used):
            added.unlink(missing_ok=True)
    for folder in sorted((p for p in refused.rglob("*") if p.is_dir()), reverse=True) + [refused]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _refuse_removed_card(info: Any, label: str) -> None:
    """A revision holding policyalign.json but no README.md is an adapter `pa push` published whose card
    was deleted after it: refused as tampered with, naming the missing card. It was refused as "not a
    policyalign adapter", with the hint that only adapters `pa push` published can be verified."""
    files = _repo_files(info)
    if card.PROVENANCE_FILE in files and "README.md" not in files:
        raise _tampered([f"README.md, the model card `pa push` publishes with {card.PROVENANCE_FILE}, is missing"], label)


def _repo_files(info: Any) -> set[str]:
    """The file names the Hub's `model_info` lists for a revision."""
    return {str(getattr(sibling, "rfilename", "")) for sibling in getattr(info, "siblings", None) or []}


def _refuse_unlisted(info: Any, recorded: Mapping[str, Any], label: str) -> list[str] | None:
    """The files to download (those the card lists, and the card), after refusing a repository that holds
    others; None when the card lists no files (`verify_adapter` says so after the download).

    A file the card does not list (a pickle `*.pt` or `*.pkl`, of any size) was downloaded with the rest and
    refused only then: a hostile repository made `pa pull` fetch as many gigabytes as it held."""
    files = recorded.get("files")
    if not isinstance(files, dict) or not files:
        return None
    unlisted = sorted(name for name in _repo_files(info) if name not in files and name not in UNLISTED_OK)
    if unlisted:
        raise _tampered([f"{escaped_name(name)} is in the repository but not listed in the card" for name in unlisted], label)
    wanted = ["README.md", *(str(name) for name in files)]
    _refuse_unportable(wanted, label)
    return wanted


def _refuse_unportable(names: list[str], label: str) -> None:
    """Refuse, before the download, names that cannot all be written on every system: `CON.json` (a Windows
    device), `x.` (Windows drops the dot), `A.json` beside `a.json` (one file on macOS and Windows, where
    the second download failed with a bare "File exists"). The same adapter installs alike everywhere.
    `pa push` publishes none of them, so it is an UnverifiedAdapterError: `pa pull --pack` tries the next match."""
    safe = [name for name in names if is_safe_relpath(name)]  # unsafe ones: `verify_adapter` says missing
    problems = [f"{escaped_name(name)}: {reason}" for name in safe if (reason := unportable_part(name))]
    problems += [" and ".join(escaped_name(name) for name in group) + " differ only in case"
                 for group in case_clashes(safe)]
    if problems:
        raise UnverifiedAdapterError("the adapter cannot be installed on every system:\n"
                                     + "\n".join(f"  - {p}" for p in problems), file=label,
                                     hint="rename the file(s) in the repository, in the card's `files` too")


def weights_limit() -> int:
    """The most bytes pulled adapter weights may have: `PA_PULL_MAX_WEIGHTS` (bytes, or a number with KiB, MiB,
    GiB or TiB) where set, else DEFAULT_MAX_WEIGHTS_BYTES. Read by each pull, so that a bad value is refused
    (exit 2) before the Hub is asked, not after a search found a match."""
    given = os.environ.get(WEIGHTS_LIMIT_ENV, "").strip()
    if not given:
        return DEFAULT_MAX_WEIGHTS_BYTES
    match = _SIZE.fullmatch(given)
    if not match:
        raise InvalidInputError(f"{WEIGHTS_LIMIT_ENV}={given!r} is not a size",
                                hint=f"give bytes, or a number with KiB, MiB, GiB or TiB: {WEIGHTS_LIMIT_ENV}=32GiB")
    return int(match[1]) * _UNITS[(match[2] or "b").lower()]


def adapter_file_cap(name: str) -> tuple[int, str]:
    """(the most bytes `pa pull` takes of the file `name`, what kind of file that is), by its name: the card,
    the weights (raised by PA_PULL_MAX_WEIGHTS), a tokenizer file, another JSON file, anything else."""
    if name == "README.md":
        return MAX_CARD_BYTES, "a model card"
    if name.endswith((".safetensors", ".bin")):
        return weights_limit(), WEIGHTS_KIND
    if name in TOKENIZER_FILES:
        return MAX_TOKENIZER_BYTES, "a tokenizer file"
    if name.endswith(".json"):
        return MAX_JSON_BYTES, "a JSON file"
    return MAX_OTHER_BYTES, "a file that is neither weights, JSON nor a tokenizer file"


def _listed_sizes(api: Any, repo_id: str, commit: str, wanted: list[str] | None, token: str | None) -> dict[str, int]:
    """{name: size} of the files a pull of `commit` downloads (`wanted`; None: all), as the Hub's tree listing gives
    them (`model_info` gives none). A name the listing lacks is left out: `verify_adapter` says it is missing."""
    from huggingface_hub.hf_api import RepoFile

    with hub_call("listing the adapter's files", token=token, repo=repo_id):
        listed = {entry.path: int(entry.size or 0) for entry in api.list_repo_tree(repo_id, recursive=True, revision=commit)
                  if isinstance(entry, RepoFile)}
    return {name: size for name, size in listed.items() if (wanted is None or name in wanted) and is_safe_relpath(name)}


def _refuse_oversized(sizes: Mapping[str, int], label: str) -> None:
    """Refuse, before the download, a file over its limit (`adapter_file_cap`): the card and the JSON files were
    read whole whatever their size, and a repository could make `pa pull` fetch and parse gigabytes. An
    UnverifiedAdapterError, as `pa push` publishes none: `pa pull --pack` goes on to the next match."""
    problems, kinds = [], set()
    for name, size in sorted(sizes.items()):
        limit, kind = adapter_file_cap(name)
        if size > limit:
            problems.append(f"{escaped_name(name)} is {size} bytes, over the {limit}-byte limit for {kind}")
            kinds.add(kind)
    if not problems:
        return
    hints = []
    if kinds - {WEIGHTS_KIND}:
        hints.append("no adapter `pa push` publishes holds such a file: do not use this revision")
    if WEIGHTS_KIND in kinds:
        hints.append(f"if the weights are genuine (a high rank on a very large model), raise their limit: "
                     f"{WEIGHTS_LIMIT_ENV}=64GiB pa pull {label}")
    raise UnverifiedAdapterError("files too large to pull:\n" + "\n".join(f"  - {p}" for p in problems), file=label,
                                 hint="; ".join(hints))


def _check_listed_sizes(path: Path, sizes: Mapping[str, int], label: str) -> None:
    """Each downloaded file must have the size the Hub's listing gave: the limits were checked on those sizes, so
    a server whose listing understated a file got past them (the download itself is not cut off at the size)."""
    problems = [f"{escaped_name(name)} is {actual} bytes, the Hub's listing said {size}"
                for name, size in sorted(sizes.items())
                if (path / name).is_file() and (actual := (path / name).stat().st_size) != size]
    if problems:
        raise UnverifiedAdapterError("the download does not match the Hub's listing:\n"
                                     + "\n".join(f"  - {p}" for p in problems), file=label,
                                     hint="the Hub (or the server HF_ENDPOINT names) answered inconsistently: "
                                          "do not use this revision")


def _snapshot(repo_id: str, commit: str, local_dir: Path | None, token: str | None, wanted: list[str] | None) -> Path:
    """Download `commit`; only the `wanted` files when given (names escaped: `allow_patterns` are globs), so a
    file the tree listing holds and `model_info` did not is not fetched either."""
    from huggingface_hub import snapshot_download

    patterns = None if wanted is None else [glob.escape(name) for name in wanted]
    with hub_call("downloading", token=token, repo=repo_id):
        return Path(snapshot_download(repo_id, revision=commit, local_dir=local_dir, token=token, endpoint=endpoint(),
                                      allow_patterns=patterns))


def _pull_into(target: Path, repo_id: str, commit: str, label: str, token: str | None,
               cached: Path | None = None, wanted: list[str] | None = None,
               sizes: Mapping[str, int] | None = None) -> tuple[Path, tuple[dict[str, Any], dict[str, Any]]]:
    """Download into a hidden sibling of `target` (offline: copy the `cached` snapshot there), check the files' `sizes`
    as listed, verify (`verify_adapter`, whose result is returned with the path), then swap it in (nothing left on failure).

    Holds a lock beside `target`: two pulls into one --to share its staging directory, and one's
    cleanup deleted the files the other was verifying, a provenance failure for an untouched adapter.
    The lock file goes with the pull, as the staging directory does: it sat for good in the user's folder."""
    from .run import run_lock

    _check_not_cwd(target)
    _check_replaceable(target)
    output_dir(target.parent, "--to")  # a file in the way is an error naming it, not a FileExistsError traceback
    with run_lock(target.parent, PULL_BUSY, name=f".{target.name}.pa-pull.lock", remove=True):
        staging = _staging_dir(target, commit)
        try:
            downloaded = _copy(cached, staging / "adapter") if cached else _snapshot(repo_id, commit, staging / "adapter", token, wanted)
            _check_listed_sizes(downloaded, sizes or {}, label)
            verified = verify_adapter(downloaded, label)
            swap_in(downloaded, target)
            return target, verified
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _copy(snapshot: Path, dest: Path) -> Path:
    """A cached snapshot's files (its links followed) at `dest`, nothing a killed pull left there beside them."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(snapshot, dest)
    return dest


def _staging_dir(target: Path, commit: str) -> Path:
    """The hidden sibling of `target` a pull of `commit` downloads into, named by the commit so that a
    pull killed part way (no `finally` runs) is resumed by the next pull of that commit, which finds the
    files already downloaded there, instead of leaving a hidden partial download beside `target` for
    good: each killed pull used to leave its own randomly named one, and the re-run fetched it all again.
    Those a killed pull of another commit (or one of those) left are removed."""
    staging = target.parent / f".{target.name}.pa-pull-{commit}"
    for stale in target.parent.glob(f".{glob.escape(target.name)}.pa-pull-*"):
        if stale != staging and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(exist_ok=True)
    return staging


def _check_not_cwd(target: Path) -> None:
    """Refuse a --to that is the current directory or holds it (`--to .`, `--to ..`): a pull replaces its
    target whole by renaming, which cannot move the directory a process works in (`--to .` in an empty
    directory was an OSError traceback, "Device or resource busy") and would leave the shell in a deleted one."""
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise HubError("is the current directory (or holds it): a pull replaces its --to directory whole",
                       file=str(target), hint="pull into a new directory, e.g. --to ./adapter")


def _check_replaceable(target: Path) -> None:
    """Raise unless a pull may replace `target` whole: new, empty, or an earlier pull's adapter as it was
    pulled. A pull into an earlier one deleted the notes a user had added there and their edits."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    pulled = _pulled_files(target)
    if pulled is None:
        raise HubError("exists and is not a previously pulled adapter", file=str(target),
                       hint="choose an empty or new directory for --to")
    changed = [name for name in _downloaded_files(target) if name not in UNLISTED_OK
               and (name not in pulled or sha256_file(target / name) != pulled[name])]
    changed = (["README.md"] if _card_edited(target / "README.md") else []) + changed
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise HubError(f"holds files added or changed since it was pulled: {shown}", file=str(target),
                       hint="a pull replaces the whole directory: move those files out first, or pull into another --to")


def _card_edited(readme: Path) -> bool:
    """The pulled card's text is no longer what `pa push` wrote (its `body_sha256`): the card is not among
    the files it lists, so notes a user added to a pulled README.md were replaced by the next pull without
    a word, where notes in any other file stop it. A card without the hash claims nothing."""
    metadata, body = card.parse_card(readme.read_text(encoding="utf-8", errors="replace"))
    return bool(_body_problems(body, metadata.get("policyalign") or {}))


def _pulled_files(path: Path) -> dict[str, str] | None:
    """{file: sha256} of the adapter an earlier `pa pull --to` wrote at `path` (policyalign.json beside
    a card with `policyalign` metadata), else None. A run's own adapter/ holds policyalign.json too
    (and, saved by PEFT, a placeholder README.md), so `--to RUN/adapter` replaced the adapter the
    user trained with a downloaded one."""
    readme = path / "README.md"
    if not (path.is_dir() and (path / card.PROVENANCE_FILE).is_file() and readme.is_file()):
        return None
    recorded = card.parse_card(readme.read_text(encoding="utf-8", errors="replace"))[0].get("policyalign")
    files = recorded.get("files") if isinstance(recorded, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else None


def compare_local_pack(pack: Mapping[str, Any], registry: "Registry | None" = None, *,
                       token: str | None = None) -> tuple[list[str], list[str]]:
    """Warnings when the local pack of that name differs (version or digest) from the adapter's."""
    from .pack import load_pack
    from .registry import Registry

    registry = registry or Registry.default()
    name, version, digest = pack.get("name"), pack.get("version"), pack.get("digest")
    local = [loc for loc in registry.discover() if loc.name == name]
    if not local:
        return [], [f"pack {name} is not installed locally; get it with {_pack_pull_commands(str(name), str(version), token)}"]
    exact = [loc for loc in local if loc.version == version]
    if not exact:
        have = ", ".join(sorted(loc.version for loc in local))
        return [f"the adapter was trained on {name}@{version}, but the local pack is at version {have}; get "
                f"{name}@{version} with {_pack_pull_commands(str(name), str(version), token)}"], []
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


def _pack_pull_commands(name: str, version: str, token: str | None) -> str:
    """How to get the pack version an adapter was trained on: the `pa pack pull` command for the dataset
    repos that publish it (found by the tags `pa pack push` sets), rather than "ORG/NAME", which left the
    user to guess where. Needed as much when only another version is installed: that warning named no
    fix, and the `pa eval NAME@VERSION` printed after it fails until the version is installed."""
    try:
        with hub_call("searching the Hub for the pack", token=token, repo=f"pack:{name}"):
            repos = sorted(d.id for d in hub_api(token).list_datasets(filter=["policyalign-pack", f"pack:{name}"]))
    except PolicyAlignError:
        repos = []
    return " or ".join(f"`pa pack pull {repo}@{version}`" for repo in repos[:3]) or f"`pa pack pull ORG/NAME@{version}`"
