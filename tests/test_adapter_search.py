"""Finding adapters by pack (policyalign/adapter_search.py): `pa pull --pack`, `choose_adapter`;
against the loopback Hub (tests/hubserver.py, run through tests/hubcli.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hubcli import Cli, make_pack
from policyalign import adapter_search, card
from policyalign.adapter_push import push_adapter
from policyalign.errors import HubError


@pytest.mark.slow
def test_pull_by_pack_picks_the_best_match(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = make_pack(cli.packs, "select")                                         # local: select@1.0.0
    newer = make_pack(tmp_path / "v2", "select", version="2.0.0")
    edited = make_pack(tmp_path / "edited", "select", policy_note="Same version, other text.")
    runs = [("org/select-a", local, "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "select-v1.0.0"),
            ("org/select-b", local, "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B", "select-v1.0.0"),
            ("org/select-a", newer, "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "select-v2.0.0"),
            ("org/select-d", edited, "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "select-v1.0.0")]
    for i, (repo, pack, base_id, base_name, _) in enumerate(runs):
        cli.published(make_run(tmp_path / f"run{i}", pack, base_id=base_id, base_name=base_name), repo)

    chosen = cli.ok("pull", "--pack", "select", "--model", "Qwen2.5-0.5B", "--to", str(tmp_path / "x"))
    assert "best match: org/select-a@select-v1.0.0" in chosen.stdout  # exact digest beats org/select-d; not v2 on main
    assert "matches the local pack select@1.0.0" in chosen.stdout
    other_base = cli.ok("pull", "--pack", "select", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--to", str(tmp_path / "y"))
    assert "best match: org/select-b@select-v1.0.0" in other_base.stdout

    ambiguous = cli.fails(1, "pull", "--pack", "select")
    assert "several base models; pass --model" in ambiguous.stderr and "org/select-b@select-v1.0.0" in ambiguous.stderr
    missing = cli.fails(1, "pull", "--pack", "select", "--model", "Qwen2.5-7B")
    assert "no published adapter matches pack select@1.0.0 on Qwen2.5-7B" in missing.stderr
    assert "org/select-a@select-v2.0.0" in missing.stderr  # the candidates are listed
    assert "nobody has published" in cli.fails(1, "pull", "--pack", "never-published").stderr



def test_pull_by_pack_without_a_token_does_not_say_a_private_adapter_is_unpublished(cli: Cli, make_run,  # type: ignore[no-untyped-def]
                                                                                    tmp_path: Path) -> None:
    """The Hub lists a private repository only to a token that can read it. `pa pull --pack NAME` without a
    token, when the only adapter for NAME was private, said "nobody has published an adapter tagged
    pack:NAME yet" and left out the login that would have found it."""
    pack = make_pack(cli.packs, "hidden")
    run = make_run(tmp_path / "run", pack)
    with cli.inside():
        push_adapter(run, "org/hidden-private", private=True)
    anonymous = " ".join(cli.fails(1, "pull", "--pack", "hidden", token=None).stderr.split())
    assert "no public adapter is tagged pack:hidden" in anonymous and "nobody has published" not in anonymous
    assert "listed only to a token that can read them" in anonymous and "HF_TOKEN" in anonymous
    wrong = " ".join(cli.fails(1, "pull", "--pack", "hidden", token=cli.hub.other_token).stderr.split())
    assert "nobody has published an adapter tagged pack:hidden that this token can read" in wrong
    assert "best match: org/hidden-private" in cli.ok("pull", "--pack", "hidden", "--to", str(tmp_path / "p")).stdout


def test_pull_for_pack_given_a_token_without_a_login_does_not_ask_to_log_in(cli: Cli, hub_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`pull_for_pack(token=...)` searched with the token given, but the hint of an empty search looked for a
    login (HF_TOKEN, the cached one) instead: without one it told a caller who had passed a token to log in."""
    import huggingface_hub

    with cli.inside():
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        with pytest.raises(HubError) as info:
            adapter_search.pull_for_pack("never-published", token=hub_server.token, to=tmp_path / "x")
    hint = " ".join(info.value.problem.hint.split())
    assert "nobody has published an adapter tagged pack:never-published that this token can read" in hint, hint
    assert "hf auth login" not in hint


def test_pull_by_pack_takes_a_version_range(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--pack NAME@VERSION` / `NAME@^1`, as a pack is named everywhere else: the whole spec was searched
    as the tag `pack:ranged@1.0.0`, so no adapter was ever found ("nobody has published")."""
    old = make_pack(tmp_path / "old", "ranged")
    new = make_pack(cli.packs, "ranged", version="1.1.0")
    for pack in (old, new):
        cli.published(make_run(tmp_path / f"run-{pack.parent.name}", pack), "org/ranged")
    search = ("--packs-path", str(tmp_path / "old"))

    pinned = cli.ok("pull", "--pack", "ranged@1.0.0", *search, "--to", str(tmp_path / "a"))
    assert "best match: org/ranged@ranged-v1.0.0" in pinned.stdout
    assert "matches the local pack ranged@1.0.0" in pinned.stdout
    ranged = cli.ok("pull", "--pack", "ranged@^1", *search, "--to", str(tmp_path / "b"))
    assert "best match: org/ranged@ranged-v1.1.0" in ranged.stdout
    missing = cli.fails(1, "pull", "--pack", "ranged@^2", "--to", str(tmp_path / "c"))
    assert "no published adapter matches pack ranged@^2" in missing.stderr and "org/ranged@ranged-v1.0.0" in missing.stderr
    assert "bad version range in 'ranged@^x'" in cli.fails(2, "pull", "--pack", "ranged@^x").stderr



def test_malformed_candidates_do_not_hide_good_ones(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "findme")), "org/good-findme")
    good_pack = {"name": "findme", "version": "1.0.0", "digest": "d" * 64}
    good_base = {"id": "Qwen/Qwen2.5-0.5B-Instruct", "name": "Qwen2.5-0.5B"}
    hostile = {"base-is-a-string": {"pack": {"name": "findme", "version": "1.0.0"}, "base_model": "Qwen/x"},
               "pack-is-a-list": {"pack": ["findme"], "base_model": good_base},
               "version-is-a-number": {"pack": {**good_pack, "version": 1}, "base_model": good_base},
               "digest-is-a-dict": {"pack": {**good_pack, "digest": {"a": 1}}, "base_model": good_base},
               "id-is-missing": {"pack": good_pack, "base_model": {"name": "Qwen2.5-0.5B"}},
               "control-characters": {"pack": {**good_pack, "version": "1.0.0\x1b[2J"}, "base_model": good_base},
               "c1-control": {"pack": {**good_pack, "version": "1.0.0\u009b2J"}, "base_model": good_base},
               "bidi-override": {"pack": good_pack, "base_model": {**good_base, "name": "Qwen\u202e"}},
               "block-is-a-string": "findme"}
    for name, block in hostile.items():
        meta = {"tags": ["policyalign", "pack:findme"], "policyalign": block}
        hub_server.store.create("model", f"evil/{name}", private=False)
        hub_server.store.commit_tree("model", f"evil/{name}", {"README.md": card.dump_front_matter(meta).encode()}, "junk")

    result = cli.ok("pull", "--pack", "findme", "--to", str(tmp_path / "x"))
    assert "best match: org/good-findme@findme-v1.0.0" in result.stdout
    assert "matches the local pack findme@1.0.0" in result.stdout
    missing = cli.fails(1, "pull", "--pack", "findme", "--model", "Qwen2.5-7B")  # the candidate list skips them too
    assert "org/good-findme@findme-v1.0.0" in missing.stderr and "evil/" not in missing.stderr


def test_a_candidate_the_hub_cannot_read_is_skipped_with_a_warning(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A repository deleted during the search (its card then answers 404) stopped `pa pull --pack` with an
    error about a candidate the user never asked for, though a good one was published."""
    pack = make_pack(cli.packs, "flaky")
    cli.published(make_run(tmp_path / "run", pack), "org/good-flaky")
    cli.published(make_run(tmp_path / "run2", pack), "org/gone-flaky")
    hub_server.fail("GET", r"/api/models/org/gone-flaky/revision/.*", status=404, times=100)
    result = cli.ok("pull", "--pack", "flaky", "--to", str(tmp_path / "x"))
    assert "best match: org/good-flaky@flaky-v1.0.0" in result.stdout
    assert "warning: skipped org/gone-flaky@flaky-v1.0.0: reading the card at flaky-v1.0.0" in result.stderr
    hub_server.fail("GET", r"/api/models/org/gone-flaky/refs", status=404, times=100)
    assert "warning: skipped org/gone-flaky: reading the repository's tags" in \
        cli.ok("pull", "--pack", "flaky", "--to", str(tmp_path / "y")).stderr


def test_a_best_match_that_does_not_verify_is_passed_over_for_the_next(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    """Anyone may publish an adapter tagged pack:NAME: one whose files do not match its card (tampered, or
    broken on purpose), ranked above the good ones (a tag beats main), stopped every `pa pull --pack NAME`
    with its provenance error, though a verified adapter of the same pack was published. It is passed over,
    with a warning; when none verifies, the best match's own error stands."""
    pack = make_pack(cli.packs, "fallback")
    cli.published(make_run(tmp_path / "run", pack), "org/good-fallback")
    cli.published(make_run(tmp_path / "run2", pack), "evil/newer-fallback")
    for repo in ("org/good-fallback", "evil/newer-fallback"):  # main only; the evil one's tag is put on a swap below
        hub_server.store.git(hub_server.repo_path(repo), "tag", "-d", "fallback-v1.0.0")
    commit = hub_server.put_files("evil/newer-fallback", {"adapter_model.safetensors": b"not the weights"}, "swap")
    hub_server.store.tag("model", "evil/newer-fallback", commit, "fallback-v1.0.0-new", None)
    pulled = cli.ok("pull", "--pack", "fallback", "--to", str(tmp_path / "x"))
    assert "best match: org/good-fallback@main" in pulled.stdout
    warned = " ".join(pulled.stderr.split())
    assert ("warning: passed over evil/newer-fallback@fallback-v1.0.0-new: provenance check failed: "
            "- adapter_model.safetensors does not match its sha256 in the card") in warned
    assert (tmp_path / "x" / "adapter_model.safetensors").read_bytes() != b"not the weights"
    hub_server.put_files("org/good-fallback", {"adapter_model.safetensors": b"not these either"}, "swap")
    failed = " ".join(cli.fails(1, "pull", "--pack", "fallback", "--to", str(tmp_path / "y")).stderr.split())
    assert "error: evil/newer-fallback@fallback-v1.0.0-new: provenance check failed" in failed  # none verifies
    assert not (tmp_path / "y").exists()


def test_an_outage_on_one_candidate_stops_the_search_to_retry(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 503 on the newest match's card was skipped like a deleted repository: the pull ended 0 with the
    older adapter, which a rerun a minute later would not have chosen. It stops with exit 3 (retry) now."""
    pack = make_pack(cli.packs, "outage")
    cli.published(make_run(tmp_path / "run", pack), "org/old-outage")
    newer = make_pack(cli.packs / "v2", "outage", version="1.1.0")
    cli.published(make_run(tmp_path / "run2", newer), "org/new-outage")
    hub_server.fail("GET", r"/api/models/org/new-outage/revision/.*", status=503, times=100)
    failed = cli.fails(3, "pull", "--pack", "outage", "--to", str(tmp_path / "x"))
    assert "org/new-outage" in failed.stderr and "best match" not in failed.stdout
    assert not (tmp_path / "x").exists()


def test_a_hostile_tag_name_reaches_no_terminal(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Tag names come from the Hub: one holding ESC ]0;... BEL (no git tag can) was printed raw in the warning that
    skipped it ("warning: skipped org/x@TAG: reading the card at TAG ..."), and one a hostile Hub answered for went
    raw into every line naming the candidate. Such a tag is skipped, named escaped."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "tagesc")), "org/tagesc")
    evil = "v1\x1b]0;pwned\x07"
    commit = hub_server.store.rev(hub_server.repo_path("org/tagesc", "model"), "main")
    hub_server.forge("/api/models/org/tagesc/refs", {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                                   "targetCommit": commit}],
                                                     "tags": [{"name": evil, "ref": "refs/tags/x", "targetCommit": commit}],
                                                     "converts": []})
    result = cli.ok("pull", "--pack", "tagesc", "--to", str(tmp_path / "x"))
    assert "\x1b" not in result.stdout + result.stderr
    assert "warning: skipped org/tagesc@v1\\x1b]0;pwned\\x07: the tag name holds control characters" in result.stderr


def _candidate(repo: str, version: str, digest: str = "d", base: str = "Qwen/Qwen2.5-0.5B-Instruct",
               revision: str = "", when: str = "2026-01-01") -> adapter_search.Candidate:
    return adapter_search.Candidate(repo, revision or f"p-v{version}", "c" * 40, "p", version, digest, base, base, when)



def test_choose_adapter_rules() -> None:
    pool = [_candidate("o/a", "1.0.0"), _candidate("o/b", "1.2.0", when="2026-01-01"),
            _candidate("o/c", "1.2.0", when="2026-02-01"), _candidate("o/d", "1.2.0", revision="main", when="2026-03-01")]
    assert adapter_search.choose_adapter(pool, "p").repo_id == "o/c"  # no local pack: newest version, tags before main, newest
    assert adapter_search.choose_adapter(pool, "p", local_version="1.0.0").repo_id == "o/a"
    exact = [_candidate("o/x", "1.0.0", digest="other"), _candidate("o/y", "1.0.0", digest="mine", when="2000")]
    assert adapter_search.choose_adapter(exact, "p", local_version="1.0.0", local_digest="mine").repo_id == "o/y"
    with pytest.raises(HubError, match="no published adapter matches"):
        adapter_search.choose_adapter(pool, "p", local_version="9.9.9")
    assert "qwen/qwen2.5-7b-instruct" in adapter_search.model_names("Qwen2.5-7B")



def test_choose_adapter_does_not_guess_between_builds_of_one_version() -> None:
    """1.0.0+a and 1.0.0+b have one SemVer precedence: `pa pull --pack p` pulled whichever was modified
    last, and `--pack p@1.0.0+a` pulled 1.0.0+b when that one was newer."""
    from policyalign.semver import VersionRange

    pool = [_candidate("o/r", "1.0.0+a", digest="a", when="2026-01-01"),
            _candidate("o/r", "1.0.0+b", digest="b", when="2026-02-01"), _candidate("o/old", "0.9.0")]
    for versions in (None, VersionRange("^1"), VersionRange("1.0.0")):
        with pytest.raises(HubError, match=r"trained on 2 builds \(1\.0\.0\+a, 1\.0\.0\+b\), one version by SemVer precedence") as caught:
            adapter_search.choose_adapter(pool, "p", versions=versions)
        assert "o/r@p-v1.0.0+a" in str(caught.value.problem.hint) and "pa pull ORG/NAME@REV" in str(caught.value.problem.hint)
    assert adapter_search.choose_adapter(pool, "p", versions=VersionRange("1.0.0+a")).revision == "p-v1.0.0+a"
    assert adapter_search.choose_adapter(pool, "p", local_version="1.0.0+a").revision == "p-v1.0.0+a"


def test_choose_adapter_honours_a_pinned_base_commit() -> None:
    """`--model M@COMMIT` picks the adapter trained on that commit of M, not a newer one trained on
    other weights after `main` moved (which the pin was given to avoid)."""
    old, new = "a" * 40, "b" * 40
    pool = [dataclasses.replace(_candidate("o/old", "1.0.0", when="2026-01-01"), base_commit=old),
            dataclasses.replace(_candidate("o/new", "1.0.0", when="2026-02-01"), base_commit=new)]
    base = "Qwen/Qwen2.5-0.5B-Instruct"
    assert adapter_search.choose_adapter(pool, "p", model=base).repo_id == "o/new"
    assert adapter_search.choose_adapter(pool, "p", model=f"{base}@{old}").repo_id == "o/old"
    assert adapter_search.choose_adapter(pool, "p", model=f"{base}@{old[:12]}").repo_id == "o/old"
    with pytest.raises(HubError, match="no published adapter matches") as caught:
        adapter_search.choose_adapter(pool, "p", model=f"{base}@{'c' * 40}")
    assert f"base {base}@{old[:12]}" in str(caught.value.problem.hint)  # the candidates show what they were trained on


def test_a_model_pa_does_not_know_is_told_the_bases_found() -> None:
    """`pa pull --pack general --model tyni` said only "no published adapter matches pack general on tyni",
    as if nobody had trained on the model meant: it names the bases found, and the close one."""
    pool = [_candidate("o/a", "1.0.0", base="tiny"), _candidate("o/b", "1.0.0", base="Qwen/Qwen2.5-0.5B-Instruct")]
    with pytest.raises(HubError, match="no published adapter matches pack p on tyni") as caught:
        adapter_search.choose_adapter(pool, "p", model="tyni")
    problem = caught.value.problem
    assert problem.message.endswith("'tyni' is not a model pa knows, and the adapters found were trained on "
                                    "Qwen/Qwen2.5-0.5B-Instruct, tiny"), problem.message
    assert problem.hint.startswith("did you mean 'tiny'? candidates"), problem.hint
    with pytest.raises(HubError, match="trained on Qwen/Qwen2.5-0.5B-Instruct, tiny") as far:
        adapter_search.choose_adapter(pool, "p", model="llama-x")
    assert far.value.problem.hint.startswith("candidates"), far.value.problem.hint
    with pytest.raises(HubError) as known:  # a model pa knows that nobody trained on: the candidates, as before
        adapter_search.choose_adapter(pool, "p", model="Qwen2.5-7B")
    assert "not a model pa knows" not in known.value.problem.message
