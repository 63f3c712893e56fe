"""Publishing and installing packs (policyalign/pack_hub.py): `pa pack push`, `pa pack pull`, and a
hostile repository's paths, sizes and hashes; against the loopback Hub (tests/hubserver.py, run
through tests/hubcli.py).
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from hubcli import Cli, make_pack
from policyalign import card, pack_hub
from policyalign.pack import files_digest, load_pack
from policyalign.registry import Registry


# --------------------------------------------------------------------------- helpers


def publish_raw_pack(hub_server, repo_id: str, name: str, files: dict[str, bytes], *,  # type: ignore[no-untyped-def]
                     extra_tree: dict | None = None, version: str = "1.0.0") -> None:
    """A dataset repo laid out like `pa pack push` output, built by hand (so it can be hostile)."""
    staging = Path(hub_server.root.parent / f"raw-{uuid.uuid4().hex}" / name)
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    digest = files_digest(staging, [staging / rel for rel in files])
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    metadata = {"tags": ["policyalign", "policyalign-pack", f"pack:{name}"],
                "policyalign": {"pack": {"name": name, "version": version, "digest": digest, "files_digest": digest},
                                "files": hashes}}
    pack_tree: dict = {}
    for rel, data in files.items():
        node = pack_tree
        *dirs, leaf = rel.split("/")
        for part in dirs:
            node = node.setdefault(part, {})
        node[leaf] = data
    pack_tree.update(extra_tree or {})
    hub_server.store.create("dataset", repo_id, private=False)
    hub_server.store.commit_tree("dataset", repo_id, {"README.md": card.dump_front_matter(metadata).encode(),
                                                      "pack": pack_tree}, "hand-made pack")
    hub_server.store.tag("dataset", repo_id, "main", f"v{version}", None)



def pack_bytes(pack_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(pack_dir).as_posix(): p.read_bytes() for p in pack_hub.pack_files(pack_dir)}



def nothing_installed(cli: Cli, name: str) -> None:
    packs_dir = cli.home / "pa" / "packs"
    assert not (packs_dir / name).exists()
    assert not packs_dir.exists() or not any(p.name.startswith(".pa-pull-") for p in packs_dir.iterdir())



# --------------------------------------------------------------------------- push and pull


def test_pack_push_then_pull(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = make_pack(cli.packs, "shared")
    pushed = cli.ok("pack", "push", str(source), "--repo-id", "org/shared-pack")
    assert "tag v1.0.0" in pushed.stdout and "/datasets/org/shared-pack/tree/v1.0.0" in pushed.stdout
    assert hub_server.tags("org/shared-pack", repo_type="dataset") == ["v1.0.0"]
    metadata, _ = card.parse_card(hub_server.read("org/shared-pack", "README.md", repo_type="dataset").decode())
    assert "pack:shared" in metadata["tags"]

    pulled = cli.ok("pack", "pull", "org/shared-pack@1.0.0")
    installed = cli.home / "pa" / "packs" / "shared"
    assert f"into {installed}" in pulled.stdout
    assert load_pack(installed).digest == load_pack(source).digest
    cli.ok("pack", "pull", "org/shared-pack")  # again (main), replacing the installed copy
    assert load_pack(installed).digest == load_pack(source).digest
    assert "no version '9.9.9' is published" in cli.fails(1, "pack", "pull", "org/shared-pack@9.9.9").stderr



def test_pack_pull_of_a_repo_that_does_not_exist_says_so(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    """`pa pack pull my-org/medcal-pack` (no such repo) said "reading the repository's tags: 404 Client Error ..."
    with no hint against the test Hub, which answered a missing repo unlike the Hub: 404 (401 without a token)
    with X-Error-Code RepoNotFound, read by huggingface_hub as RepositoryNotFoundError."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{hub_server.endpoint}/api/datasets/my-org/medcal-pack/refs",
                                     headers={"authorization": f"Bearer {hub_server.token}"})
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(request)
    assert answered.value.code == 404 and answered.value.headers["X-Error-Code"] == "RepoNotFound"
    assert json.loads(answered.value.read())["error"] == "Repository not found"
    for token in (cli.hub.token, None):
        failed = " ".join(cli.fails(1, "pack", "pull", "my-org/medcal-pack", token=token).stderr.split())
        assert "reading the repository's tags: repository not found (or private)" in failed, failed
        assert "check ORG/NAME" in failed and "Client Error" not in failed, failed


def test_pack_push_warns_of_a_file_pack_yaml_does_not_list(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    """A template pack.yaml did not list was published without a word, as `pa validate` passed it. Then the
    warning came after the upload, too late to stop it: it is said before anything is sent, so a push that
    fails (or that the user stops on reading it) has said it all the same."""
    source = make_pack(cli.packs, "unlisted")
    (source / "templates" / "forgotten.jinja").write_text("{{ nothing }}\n")
    hub_server.fail("POST", r"/api/datasets/org/unlisted/commit/.*", times=10)
    failed = cli.fails(3, "pack", "push", str(source), "--repo-id", "org/unlisted")
    assert failed.stderr.index("warning: ") < failed.stderr.index("500 Internal Server Error"), failed.stderr
    hub_server.outages.clear()
    for pushed in (failed, cli.ok("pack", "push", str(source), "--repo-id", "org/unlisted")):
        assert (f"warning: {source / 'templates' / 'forgotten.jinja'}: not listed in pack.yaml" in pushed.stderr
                and "list it under `synthesis.templates` in pack.yaml, or delete it" in pushed.stderr), pushed.stderr
        assert pushed.stderr.count("warning: ") == 1, pushed.stderr


def test_pack_push_refuses_a_pack_still_holding_new_stand_in_text(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    """A `pa new` skeleton validates, and it was published as is: a registry pack whose policy reads
    "Example rule" and whose eval set is "Replace me"."""
    cli.ok("new", "draft-pack", "--dir", str(cli.packs))
    refused = cli.fails(2, "pack", "push", str(cli.packs / "draft-pack"), "--repo-id", "org/draft-pack")
    assert "pack draft-pack@0.1.0 is still a `pa new` draft: 6 piece(s) of stand-in text left" in refused.stderr
    assert f"pa validate {cli.packs / 'draft-pack'}" in refused.stderr
    assert not hub_server.store.exists("dataset", "org/draft-pack")


def test_pack_pull_of_another_version_says_which_one_it_replaced(cli: Cli, tmp_path: Path) -> None:
    """The install directory holds one version per pack: pulling 1.0.0 over an installed 1.1.0 removed
    it without a word (a child pinned to ^1.1 then stops resolving)."""
    for version in ("1.0.0", "1.1.0"):
        cli.pack_published(make_pack(tmp_path / version, "versioned", version=version), "org/versioned")
    assert "replaced" not in cli.ok("pack", "pull", "org/versioned@1.1.0").stderr
    older = cli.ok("pack", "pull", "org/versioned@1.0.0")
    assert "installed versioned@1.0.0" in older.stdout and "replaced versioned@1.1.0" in older.stderr
    assert "replaced" not in cli.ok("pack", "pull", "org/versioned@1.0.0").stderr  # the same version again



def test_pack_pull_removes_the_staging_directories_killed_pulls_left_and_no_other_pulls(  # type: ignore[no-untyped-def]
        cli: Cli, tmp_path: Path) -> None:
    """Each pull stages into a randomly named `.pa-pull-*` in the install directory; a killed one left it there
    for good. The next pull removes those, but not one a pull still running holds, nor one newer than itself."""
    import os

    from policyalign.run import run_lock

    cli.pack_published(make_pack(tmp_path / "src", "tidy"), "org/tidy")
    packs = cli.home / "pa" / "packs"
    killed, running, newer = (packs / f".pa-pull-{n}" for n in ("killed01", "running1", "newer001"))
    for staging in (killed, running, newer):
        (staging / "tidy").mkdir(parents=True)
        (staging / "tidy" / "pack.yaml").write_text("half downloaded")
    with run_lock(running):  # a pull still working in it
        os.utime(killed, (1, 1))
        os.utime(running, (1, 1))
        os.utime(newer, (2**33, 2**33))  # made after this pull started (by a pull not holding its lock yet)
        cli.ok("pack", "pull", "org/tidy")
    assert (packs / "tidy" / "pack.yaml").is_file()
    assert sorted(p.name for p in packs.iterdir() if p.name.startswith(".")) == sorted([running.name, newer.name])


def test_two_pack_pulls_of_one_pack_into_one_directory_do_not_swap_it_in_at_once(cli: Cli, tmp_path: Path) -> None:
    """Both moved the installed pack aside as `.previous-NAME` (`hub.swap_in`), and one put back or deleted what
    the other had moved. The install holds a lock beside the pack, as `pa pull` does: the second is refused."""
    from policyalign.run import run_lock

    cli.pack_published(make_pack(tmp_path / "src", "busy"), "org/busy")
    packs = cli.home / "pa" / "packs"
    packs.mkdir(parents=True)
    with run_lock(packs, name=".busy.pa-pull.lock"):  # another pull installing it
        refused = cli.fails(1, "pack", "pull", "org/busy")
    assert "is working in this pack's install directory" in refused.stderr, refused.stderr
    nothing_installed(cli, "busy")
    cli.ok("pack", "pull", "org/busy")
    assert sorted(p.name for p in packs.iterdir()) == ["busy"]  # its lock file goes with it


def test_pack_pull_says_which_local_copies_the_pulled_version_takes_over_from(cli: Cli, tmp_path: Path) -> None:
    """Any repository may publish a pack named like a shipped one at a higher version; installed, it
    silently became what the name (and every child's `extends` range) resolved to."""
    make_pack(cli.packs, "shadowed", version="1.0.0")
    for version in ("1.99.0", "0.9.0"):
        cli.pack_published(make_pack(tmp_path / version, "shadowed", version=version), "org/evil")
    higher = cli.ok("pack", "pull", "org/evil@1.99.0")
    assert (f"warning: shadowed@1.99.0 from org/evil now takes precedence over shadowed@1.0.0 in {cli.packs}, "
            "wherever `shadowed` (or a version range admitting 1.99.0) names it") in higher.stderr
    assert "precedence" not in cli.ok("pack", "pull", "org/evil@0.9.0").stderr  # the local 1.0.0 still wins


def test_pack_pull_says_when_a_local_copy_of_the_same_version_hides_the_pulled_one(cli: Cli, tmp_path: Path) -> None:
    """./packs/forked@1.0.0 and a published forked@1.0.0 with other files: discovery keeps the first copy of
    a version, so the pulled one was installed, reported, and never used by name, without a word."""
    make_pack(cli.packs, "forked", version="1.0.0")
    cli.pack_published(make_pack(tmp_path / "fork", "forked", policy_note="2. A fork's rule."), "org/fork")
    pulled = cli.ok("pack", "pull", "org/fork")
    assert f"but {cli.packs / 'forked'} holds another forked@1.0.0 earlier on the search path" in pulled.stderr, pulled.stderr
    cli.pack_published(make_pack(tmp_path / "same", "forked"), "org/same")
    assert "holds another" not in cli.ok("pack", "pull", "org/same").stderr  # the same files: nothing is hidden


def test_pack_pull_does_not_delete_a_directory_that_is_not_that_pack(cli: Cli, tmp_path: Path) -> None:
    """`--to DIR` whose DIR/NAME was not a pack (someone's work, or another pack) was replaced and deleted
    without a word; the install replaces only an installed copy of the same pack."""
    cli.pack_published(make_pack(tmp_path / "src", "shared"), "org/shared")
    dest = tmp_path / "dest"
    (dest / "shared").mkdir(parents=True)
    (dest / "shared" / "thesis.txt").write_text("months of work\n")
    refused = cli.fails(1, "pack", "pull", "org/shared", "--to", str(dest))
    assert "is not an installed pack 'shared'" in refused.stderr
    assert (dest / "shared" / "thesis.txt").read_text() == "months of work\n"
    other = make_pack(tmp_path / "other", "another")
    shutil.copytree(other, dest / "shared", dirs_exist_ok=True)  # a pack of another name in that directory
    cli.fails(1, "pack", "pull", "org/shared", "--to", str(dest))
    shutil.rmtree(dest / "shared")
    cli.ok("pack", "pull", "org/shared", "--to", str(dest))
    cli.ok("pack", "pull", "org/shared", "--to", str(dest))  # its own installed copy is replaced
    assert load_pack(dest / "shared").name == "shared"



def test_pack_pull_to_a_file_is_an_error_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    cli.pack_published(make_pack(tmp_path / "src", "placed"), "org/placed")
    (tmp_path / "afile").write_text("not a directory\n")
    for to in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        result = cli.fails(2, "pack", "pull", "org/placed", "--to", str(to))
        assert f"{to}: cannot install packs here" in result.stderr
    assert (tmp_path / "afile").read_text() == "not a directory\n"



def test_pack_pull_of_a_range_installs_the_highest_published_version_in_it(cli: Cli, tmp_path: Path) -> None:
    """Every other pack argument takes `name@^1`; `pa pack pull ORG/NAME@^1` answered "no version '^1' is
    published" and listed the very versions the range holds."""
    for version in ("1.0.0", "1.1.0", "2.0.0", "10.0.0"):
        cli.pack_published(make_pack(tmp_path / version, "ranged", version=version), "org/ranged")
    pulled = cli.ok("pack", "pull", "org/ranged@^1")
    assert "installed ranged@1.1.0" in pulled.stdout and "org/ranged@v1.1.0" in pulled.stdout
    assert "installed ranged@1.0.0" in cli.ok("pack", "pull", "org/ranged@>=1.0,<1.1").stdout
    assert "installed ranged@1.1.0" in cli.ok("pack", "pull", "org/ranged@~1.1").stdout
    assert "installed ranged@10.0.0" in cli.ok("pack", "pull", "org/ranged").stdout  # none: the last pushed
    failed = cli.fails(1, "pack", "pull", "org/ranged@^3").stderr
    assert "no version matches '^3'" in failed and "1.0.0, 1.1.0, 2.0.0, 10.0.0" in failed  # in version order



def test_pack_pull_of_a_range_that_does_not_parse_fails_before_the_hub_is_asked(cli: Cli, tmp_path: Path) -> None:
    """`pa pack pull ORG/NAME@^x` listed the repository's tags first (offline, it failed on the Hub), then said
    only that no version '^x' was published; a name that is no range nor any ref must say what '@' takes."""
    for spec in ("org/absent@^x", "org/absent@>=abc", "org/absent@~1.x", "org/absent@1.0, zz"):
        failed = cli.fails(2, "pack", "pull", spec).stderr
        assert f"bad version range in {spec!r}" in failed, failed
        assert "^1, ~1.2" in failed and "a tag, a branch or a commit" in failed
    cli.pack_published(make_pack(tmp_path / "src", "unranged"), "org/unranged")
    failed = cli.fails(1, "pack", "pull", "org/unranged@notaver").stderr
    assert "no version 'notaver' is published" in failed and "published versions: 1.0.0" in failed
    assert "a tag, a branch or a commit" in failed, failed



def test_pack_pull_of_a_range_does_not_guess_between_two_builds_of_its_highest_version(cli: Cli, hub_server,  # type: ignore[no-untyped-def]
                                                                                       tmp_path: Path) -> None:
    """A repository tagged v1.0.0+a and v1.0.0+b (before `pa pack push` refused the second): one SemVer
    precedence, and `pa pack pull ORG/NAME@^1` installed whichever tag the Hub listed last."""
    cli.pack_published(make_pack(tmp_path / "b", "builds", version="1.0.0+b"), "org/builds-b")
    cli.pack_published(make_pack(tmp_path / "a", "builds", version="1.0.0+a"), "org/builds")
    b_repo = hub_server.repo_path("org/builds-b", "dataset")
    files = {path: hub_server.read("org/builds-b", path, repo_type="dataset")
             for path in hub_server.store.files(b_repo, "main")}
    hub_server.put_files("org/builds", files, "1.0.0+b, as an older policyalign pushed it", repo_type="dataset")
    hub_server.store.tag("dataset", "org/builds", "main", "v1.0.0+b", None)
    assert sorted(hub_server.tags("org/builds", "dataset")) == ["v1.0.0+a", "v1.0.0+b"]

    for spec in ("org/builds@^1", "org/builds@>=1.0.0"):
        failed = cli.fails(1, "pack", "pull", spec, "--to", str(tmp_path / "x")).stderr
        assert "1.0.0, is published as 2 builds (v1.0.0+a, v1.0.0+b), one version by SemVer precedence" in failed, failed
        assert "pa pack pull org/builds@1.0.0+a" in failed
    assert "installed builds@1.0.0+b" in cli.ok("pack", "pull", "org/builds@1.0.0+b", "--to", str(tmp_path / "y")).stdout


def test_pack_pull_of_a_version_takes_its_one_build_and_refuses_to_guess_between_several(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """`pa pack pull ORG/NAME@1.0.0` with only v1.0.0+b5 published said "no version '1.0.0' is published",
    though 1.0.0+b5 is 1.0.0 by SemVer precedence and `pa pull --pack NAME@1.0.0` and the local registry
    both take it; with two builds it must refuse as a range does, naming both."""
    cli.pack_published(make_pack(tmp_path / "b5", "built", version="1.0.0+b5"), "org/onebuild")
    pulled = cli.ok("pack", "pull", "org/onebuild@1.0.0", "--to", str(tmp_path / "x")).stdout
    assert "installed built@1.0.0+b5" in pulled and "org/onebuild@v1.0.0+b5" in pulled
    cli.pack_published(make_pack(tmp_path / "b6", "built", version="1.0.0+b6"), "org/onebuild-b6")
    b6_repo = hub_server.repo_path("org/onebuild-b6", "dataset")
    files = {path: hub_server.read("org/onebuild-b6", path, repo_type="dataset")
             for path in hub_server.store.files(b6_repo, "main")}
    hub_server.put_files("org/onebuild", files, "1.0.0+b6, as an older policyalign pushed it", repo_type="dataset")
    hub_server.store.tag("dataset", "org/onebuild", "main", "v1.0.0+b6", None)
    failed = cli.fails(1, "pack", "pull", "org/onebuild@1.0.0", "--to", str(tmp_path / "y")).stderr
    assert "is published as 2 builds (v1.0.0+b5, v1.0.0+b6)" in failed, failed
    assert "pa pack pull org/onebuild@1.0.0+b5" in failed
    nothing = tmp_path / "y" / "built"
    assert not nothing.exists()


def test_pack_with_parents_pulls_when_parents_are_local(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.pack_published(cli.packs / "child-pack", "org/child-pack")
    cli.ok("pack", "pull", "org/child-pack@1.0.0", "--to", str(tmp_path / "installed"))
    registry = Registry.default(extra=[cli.packs])
    assert load_pack(tmp_path / "installed" / "child-pack", registry=registry).digest == \
        load_pack(cli.packs / "child-pack", registry=registry).digest



def test_pack_pull_finds_parents_where_it_installs_and_says_how_to_get_missing_ones(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """`pa pack pull --to DIR` refused a pack whose parent sat in DIR, where it would live once installed
    (it looked beside its staging directory instead); `pa pack pull` took no --packs-path; and with the
    parent nowhere, the hint was "known packs: child-pack": neither where it looked nor the fix."""
    cli.pack_published(cli.packs / "child-pack", "org/child-elsewhere")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)  # PA_PACKS_PATH holds no root-pack
    missing = " ".join(bare.fails(2, "pack", "pull", "org/child-elsewhere").stderr.split())
    assert "parent 'root-pack@^1' not found" in missing and f"searched {tmp_path / 'empty'}" in missing
    assert "add the directory holding it with --packs-path or PA_PACKS_PATH, or install it with `pa pack pull" in missing
    nothing_installed(bare, "child-pack")

    shelf = tmp_path / "shelf"
    shutil.copytree(cli.packs / "root-pack", shelf / "root-pack")
    bare.ok("pack", "pull", "org/child-elsewhere", "--to", str(shelf))
    assert load_pack(shelf / "child-pack").digest == load_pack(cli.packs / "child-pack").digest
    bare.ok("pack", "pull", "org/child-elsewhere", "--packs-path", str(shelf))
    assert (bare.home / "pa" / "packs" / "child-pack" / "pack.yaml").is_file()



def test_pack_pull_names_no_staging_directory_in_its_problems(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pulled pack is checked in a staging directory, deleted before the error is printed: "searched" listed
    it (`.../packs/.pa-pull-x7f3`) as a place the missing parent was looked for, "known packs" the pulled pack
    itself, and each problem named a file in it (or `child-pack/pack.yaml`, which is nowhere)."""
    cli.pack_published(cli.packs / "child-pack", "org/child-orphan")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)
    missing = " ".join(bare.fails(2, "pack", "pull", "org/child-orphan").stderr.split())
    assert ".pa-pull-" not in missing and "known packs: child-pack" not in missing, missing
    assert "org/child-orphan:pack/pack.yaml:/extends/0 (line 7): parent 'root-pack@^1' not found" in missing
    assert f"searched {tmp_path / 'empty'}, ./packs, {bare.home / 'pa' / 'packs'});" in missing

    files = pack_bytes(make_pack(tmp_path / "src", "unsure"))
    files["pack.yaml"] = files["pack.yaml"].replace(b"action: guide", b"action: maybe")
    publish_raw_pack(hub_server, "org/unsure", "unsure", files)
    invalid = " ".join(cli.fails(2, "pack", "pull", "org/unsure").stderr.split())
    assert "org/unsure:pack/pack.yaml:/categories/1/action (line 19): 'maybe' is not one of" in invalid, invalid
    nothing_installed(cli, "unsure")



def test_invalid_pack_is_not_pushed(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    broken = make_pack(cli.packs, "broken")
    (broken / "CHANGELOG.md").write_text("# nothing here\n")
    (broken / "pack.yaml").write_text((broken / "pack.yaml").read_text().replace("action: guide", "action: maybe"))
    result = cli.fails(2, "pack", "push", str(broken), "--repo-id", "org/broken")
    assert "2 problems found" in result.stderr and "no entry for version 1.0.0" in result.stderr
    assert not hub_server.store.exists("dataset", "org/broken")



def test_a_pack_holding_names_pull_refuses_is_not_pushed(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    """`con.md` and `notes/A.md` beside `notes/a.md` validated on Linux and were pushed; every `pa pack pull`
    then refused the pack (it cannot be installed on every system), so push refuses it first."""
    pack = make_pack(cli.packs, "unportable")
    (pack / "con.md").write_text("console\n")
    (pack / "notes").mkdir()
    (pack / "notes" / "A.md").write_text("upper\n")
    (pack / "notes" / "a.md").write_text("lower\n")
    result = cli.fails(2, "pack", "push", str(pack), "--repo-id", "org/unportable")
    assert "con.md: `con.md` is a Windows device name" in result.stderr, result.stderr
    assert "notes/a.md: differs only in case from notes/A.md" in result.stderr, result.stderr
    assert not hub_server.store.exists("dataset", "org/unportable")



# --------------------------------------------------------------------------- an untrusted repository


def test_pack_pull_rejects_paths_outside_the_pack(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A hostile Hub lists `pack/../../../evil.txt`: nothing is downloaded, nothing installed."""
    files = pack_bytes(make_pack(tmp_path / "src", "escape"))
    publish_raw_pack(hub_server, "org/escape", "escape", files)
    commit = hub_server.store.rev(hub_server.repo_path("org/escape", "dataset"), "v1.0.0")
    listing = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": f"pack/{rel}"} for rel, data in files.items()]
    listing.append({"type": "file", "oid": "1" * 40, "size": 5, "path": "pack/../../../evil.txt"})
    hub_server.forge(f"/api/datasets/org/escape/tree/{commit}/pack", listing)
    result = cli.fails(2, "pack", "pull", "org/escape@1.0.0")
    assert "unsafe path" in result.stderr and "pack/../../../evil.txt" in result.stderr
    nothing_installed(cli, "escape")
    assert not any(path.endswith("evil.txt") for _, path, _ in hub_server.requests)



def test_pack_pull_of_a_listing_with_a_file_inside_a_listed_file_is_an_error_not_a_traceback(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """A hostile Hub lists `pack/notes` and `pack/notes/x` (no real repository holds both, a listing is
    untrusted): the download wrote the file `notes`, then failed making it a directory, with a traceback."""
    files = pack_bytes(make_pack(tmp_path / "src", "prefixed"))
    publish_raw_pack(hub_server, "org/prefixed", "prefixed", files)
    metadata, _ = card.parse_card(hub_server.read("org/prefixed", "README.md", repo_type="dataset").decode())
    metadata["policyalign"]["files"].update({"notes": hashlib.sha256(b"a").hexdigest(),
                                             "notes/x": hashlib.sha256(b"b").hexdigest()})
    commit = hub_server.put_files("org/prefixed", {"README.md": card.dump_front_matter(metadata).encode(),
                                                   "pack/notes": b"a"}, "a file and a directory", repo_type="dataset")
    listing = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": f"pack/{rel}"} for rel, data in files.items()]
    listing += [{"type": "file", "oid": "1" * 40, "size": 1, "path": "pack/notes"},
                {"type": "file", "oid": "2" * 40, "size": 1, "path": "pack/notes/x"}]
    hub_server.forge(f"/api/datasets/org/prefixed/tree/{commit}/pack", listing)
    result = cli.fails(2, "pack", "pull", "org/prefixed")
    assert "org/prefixed:pack/notes/x" in result.stderr and "inside the listed file pack/notes" in result.stderr, result.stderr
    nothing_installed(cli, "prefixed")



def test_pack_pull_of_a_listing_naming_a_file_twice_says_so(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """A hostile Hub lists a file twice (a listing is untrusted): the second download found the
    first's file in place: "[Errno 17] File exists", naming a staging directory already deleted."""
    files = pack_bytes(make_pack(tmp_path / "src", "twice"))
    publish_raw_pack(hub_server, "org/twice", "twice", files)
    commit = hub_server.store.rev(hub_server.repo_path("org/twice", "dataset"), "v1.0.0")
    listing = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": f"pack/{rel}"} for rel, data in files.items()]
    listing.append(dict(listing[0]))
    hub_server.forge(f"/api/datasets/org/twice/tree/{commit}/pack", listing)
    result = cli.fails(2, "pack", "pull", "org/twice@1.0.0")
    assert f"org/twice:{listing[0]['path']}: listed twice" in result.stderr, result.stderr
    nothing_installed(cli, "twice")



def test_pack_pull_refuses_names_differing_only_in_case_before_downloading(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """A repository holding `pack/notes/A.md` and `pack/notes/a.md` (git stores both): on macOS and Windows the
    second download failed with a bare "File exists", and on Linux the pack held two files it cannot hold there."""
    files = pack_bytes(make_pack(tmp_path / "src", "cased"))
    publish_raw_pack(hub_server, "org/cased", "cased", {**files, "notes/A.md": b"upper\n", "notes/a.md": b"lower\n"})
    result = cli.fails(2, "pack", "pull", "org/cased@1.0.0")
    assert "org/cased:pack/notes/a.md: differs only in case from pack/notes/A.md" in result.stderr, result.stderr
    assert "cannot be installed on every system" in result.stderr and "rename one of them in the repository" in result.stderr
    nothing_installed(cli, "cased")
    assert not any("org/cased/resolve/" in path and "/pack/" in path for _, path, _ in hub_server.requests)



@pytest.mark.parametrize("name", ["con.md", "notes/AUX", "Lpt3.tar.gz", "nul/x.md", "notes.", "notes "])
def test_pack_pull_refuses_names_windows_cannot_write_before_downloading(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path, name: str) -> None:
    """A device name (`con.md` opens the console on Windows) or a name ending in a dot or space (Windows drops
    it) passed the listing check: installed on Linux, a failure or another file on Windows."""
    repo_id = f"org/devices-{uuid.uuid4().hex[:8]}"
    files = pack_bytes(make_pack(tmp_path / "src", "devices"))
    publish_raw_pack(hub_server, repo_id, "devices", {**files, name: b"x\n"})
    result = cli.fails(2, "pack", "pull", f"{repo_id}@1.0.0")
    assert f"{repo_id}:pack/{name}: `" in result.stderr and "cannot be installed on every system" in result.stderr, result.stderr
    assert "rename the file in the repository" in result.stderr
    nothing_installed(cli, "devices")
    assert not any(f"{repo_id}/resolve/" in path and "/pack/" in path for _, path, _ in hub_server.requests)



def test_pack_pull_prints_a_listed_file_name_with_terminal_escapes_escaped(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A hostile Hub listing `pack/\x1b]0;pwned\x07.txt`: the error printed the name raw, so the escape
    sequence reached the terminal of whoever pulled."""
    files = pack_bytes(make_pack(tmp_path / "src", "escapes"))
    publish_raw_pack(hub_server, "org/escapes", "escapes", files)
    commit = hub_server.store.rev(hub_server.repo_path("org/escapes", "dataset"), "v1.0.0")
    listing = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": f"pack/{rel}"} for rel, data in files.items()]
    listing.append({"type": "file", "oid": "1" * 40, "size": 5, "path": "pack/\x1b]0;pwned\x07.txt"})
    hub_server.forge(f"/api/datasets/org/escapes/tree/{commit}/pack", listing)
    result = cli.fails(2, "pack", "pull", "org/escapes@1.0.0")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "org/escapes:pack/\\x1b]0;pwned\\x07.txt: unsafe path" in result.stderr
    nothing_installed(cli, "escapes")



def test_pack_pull_prints_no_terminal_escape_from_the_card_or_the_tags(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The card's version and digest, and the repository's tag names, were printed raw in pull's errors and
    warnings ("the card says NAME@VERSION", "published versions: ..."): a hostile repository's escape
    sequences reached the terminal of whoever pulled."""
    files = pack_bytes(make_pack(tmp_path / "src", "cardesc"))
    publish_raw_pack(hub_server, "org/cardesc", "cardesc", files)
    repo = hub_server.repo_path("org/cardesc", "dataset")
    metadata, body = card.parse_card(hub_server.store.read(repo, "main", "README.md").decode())
    recorded = dict(metadata["policyalign"]["pack"])
    for key in ("version", "digest"):
        metadata["policyalign"]["pack"] = {**recorded, key: "1.0.0\x1b]0;pwned\x07"}
        hub_server.put_files("org/cardesc", {"README.md": (card.dump_front_matter(metadata) + body).encode()},
                             repo_type="dataset")
        result = cli.fails(1, "pack", "pull", "org/cardesc")
        assert "\x1b" not in result.stderr and f"the card names an invalid {key}" in result.stderr, result.stderr
    commit = hub_server.store.rev(repo, "main")
    hub_server.forge("/api/datasets/org/cardesc/refs", {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                                      "targetCommit": commit}],
                                                        "tags": [{"name": "v9.9.9\x1b]0;pwned\x07", "ref": "refs/tags/x",
                                                                  "targetCommit": commit}], "converts": []})
    result = cli.fails(1, "pack", "pull", "org/cardesc@2.0.0")
    assert "\x1b" not in result.stderr and "published versions: 9.9.9\\x1b]0;pwned\\x07" in result.stderr, result.stderr
    nothing_installed(cli, "cardesc")



def test_pack_pull_of_a_card_naming_the_pack_with_a_final_newline_blames_the_card(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`$` also matches before a final newline: a card naming `cardnl\\n` passed the card's checks, and the pull
    failed blaming pack.yaml ("name 'cardnl' does not match the directory name 'cardnl\\n'", hint: rename the
    directory), a directory the card's name had made in staging."""
    publish_raw_pack(hub_server, "org/cardnl", "cardnl", pack_bytes(make_pack(tmp_path / "src", "cardnl")))
    repo = hub_server.repo_path("org/cardnl", "dataset")
    metadata, body = card.parse_card(hub_server.store.read(repo, "main", "README.md").decode())
    for key, value in (("name", "cardnl\n"), ("digest", metadata["policyalign"]["pack"]["digest"] + "\n")):
        forged = {**metadata, "policyalign": {**metadata["policyalign"], "pack": {**metadata["policyalign"]["pack"], key: value}}}
        hub_server.put_files("org/cardnl", {"README.md": (card.dump_front_matter(forged) + body).encode()}, repo_type="dataset")
        result = cli.fails(1, "pack", "pull", "org/cardnl")
        assert f"org/cardnl: the card names an invalid {'pack' if key == 'name' else key} {value!r}" in result.stderr, result.stderr
    nothing_installed(cli, "cardnl")


def test_pack_pull_of_a_repo_with_dotdot_entries_installs_nothing(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A git tree with '..' entries (which `git mktree` accepts) cannot even be listed: clean failure."""
    files = pack_bytes(make_pack(tmp_path / "src", "dotdot"))
    publish_raw_pack(hub_server, "org/dotdot", "dotdot", files, extra_tree={"..": {"..": {"evil.txt": b"pwned"}}})
    result = cli.fails(1, "pack", "pull", "org/dotdot")
    assert "org/dotdot: listing the pack's files" in result.stderr
    nothing_installed(cli, "dotdot")
    assert not list(cli.home.rglob("evil.txt"))



def test_pack_pull_rejects_a_manifest_pointing_outside(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = pack_bytes(make_pack(tmp_path / "src", "sneaky"))
    files["pack.yaml"] = files["pack.yaml"].replace(b"policy: policy.md", b"policy: ../../../../etc/hostname")
    publish_raw_pack(hub_server, "org/sneaky", "sneaky", files)
    result = cli.fails(2, "pack", "pull", "org/sneaky")
    assert "problem" in result.stderr and "'..' is not allowed" in result.stderr
    nothing_installed(cli, "sneaky")



def test_pack_pull_installs_no_file_the_pack_does_not_consist_of(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Hidden files, caches and backups are not pack content (`pa pack push` never uploads one, the loader
    skips them), yet a hand-made repo listing them in its card installed them, outside the pack's digest,
    with a warning that blamed the (absent) parents for the digest they changed."""
    files = pack_bytes(make_pack(tmp_path / "src", "hidden"))
    files[".github/run.sh"] = b"echo hi\n"
    files["templates/plain.jinja~"] = b"a backup\n"
    publish_raw_pack(hub_server, "org/hidden", "hidden", files)
    result = cli.fails(2, "pack", "pull", "org/hidden")
    assert "pack/.github/run.sh: not pack content" in result.stderr
    assert "pack/templates/plain.jinja~: not pack content" in result.stderr
    nothing_installed(cli, "hidden")
    assert not list(cli.home.rglob("run.sh"))



def test_pack_pull_rejects_oversized_files(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = pack_bytes(make_pack(tmp_path / "src", "bloated"))
    files["notes.txt"] = b"x" * (3 * 1024 * 1024)
    publish_raw_pack(hub_server, "org/bloated", "bloated", files)
    result = cli.fails(2, "pack", "pull", "org/bloated@1.0.0")
    assert "notes.txt" in result.stderr and "over the 2097152-byte limit" in result.stderr
    nothing_installed(cli, "bloated")



def test_pack_pull_rejects_tampered_files(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    cli.pack_published(make_pack(cli.packs, "edited"), "org/edited")
    hub_server.put_files("org/edited", {"pack/policy.md": b"Anything goes.\n"}, repo_type="dataset")
    result = cli.fails(1, "pack", "pull", "org/edited")
    assert "pack/policy.md does not match its sha256" in result.stderr
    nothing_installed(cli, "edited")



class _Lying(http.server.BaseHTTPRequestHandler):
    """Streams 64 KiB without a Content-Length, to check the cap holds while downloading."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        for _ in range(64):
            self.wfile.write(b"y" * 1024)

    def log_message(self, *args: object) -> None:
        return



def test_download_cap_holds_while_streaming(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Lying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(pack_hub._TooLarge):
            pack_hub._download_capped(f"http://127.0.0.1:{server.server_address[1]}/f", tmp_path / "f", 4096, None)
        assert (tmp_path / "f").stat().st_size <= 4096 + 65536
    finally:
        server.shutdown()
        server.server_close()


def test_a_version_differing_only_in_build_metadata_is_not_pushed_again(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1.0.0+b after v1.0.0+a went up as a second tag of one version (SemVer precedence ignores build
    metadata), and `pa pack pull ORG/NAME@^1` then took either, by the order the Hub listed the tags."""
    cli.pack_published(make_pack(tmp_path / "a", "built", version="1.0.0+a"), "org/built")
    source = make_pack(tmp_path / "b", "built", version="1.0.0+b", policy_note="2. Another rule.")
    refused = cli.fails(1, "pack", "push", str(source), "--repo-id", "org/built")
    assert "version 1.0.0+b is already published as tag 'v1.0.0+a'" in refused.stderr and "bump its version" in refused.stderr
    assert hub_server.tags("org/built", repo_type="dataset") == ["v1.0.0+a"]
    assert "installed built@1.0.0+a" in cli.ok("pack", "pull", "org/built@^1").stdout


def test_a_revision_tag_cannot_publish_another_version_or_a_second_build(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The check refusing 1.0.0+b after v1.0.0+a ran only without --revision: `--revision v1.0.0+b` published
    the second build all the same (`pa pack pull ORG/NAME@^1` then refused the repository), and
    `--revision v2.0.0` tagged a 1.0.0 pack as 2.0.0, which `pa pack pull ORG/NAME@^2` installed."""
    cli.pack_published(make_pack(tmp_path / "a", "retagged", version="1.0.0+a"), "org/retagged")
    second = make_pack(tmp_path / "b", "retagged", version="1.0.0+b", policy_note="2. Another rule.")
    refused = cli.fails(1, "pack", "push", str(second), "--repo-id", "org/retagged", "--revision", "v1.0.0+b").stderr
    assert "version 1.0.0+b is already published as tag 'v1.0.0+a'" in refused, refused
    lying = cli.fails(2, "pack", "push", str(second), "--repo-id", "org/retagged", "--revision", "v2.0.0").stderr
    assert "--revision 'v2.0.0' names version 2.0.0, but the pack is retagged@1.0.0+b" in lying, lying
    assert hub_server.tags("org/retagged", repo_type="dataset") == ["v1.0.0+a"]
    cli.ok("pack", "push", str(second), "--repo-id", "org/retagged", "--revision", "retagged-build-b")  # not a version tag
    assert "installed retagged@1.0.0+a" in cli.ok("pack", "pull", "org/retagged@^1", "--to", str(tmp_path / "x")).stdout


def test_a_default_tag_the_hub_cannot_take_is_named_as_made_from_the_version(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Version 1.0.0-x.lock is SemVer, but its tag v1.0.0-x.lock ends in .lock, which no Hub tag may: the push
    said "--revision: invalid revision tag", a flag the user never gave. `--revision` still fixes it."""
    pack = make_pack(tmp_path, "locked", version="1.0.0-x.lock")
    refused = cli.fails(2, "pack", "push", str(pack), "--repo-id", "org/locked").stderr
    assert "the default tag 'v1.0.0-x.lock', made from pack locked@1.0.0-x.lock's version, is not a valid" in refused
    assert "--revision:" not in refused and "give --revision a tag" in refused, refused
    assert cli.fails(2, "pack", "push", str(pack), "--repo-id", "org/locked", "--revision", "v1.lock").stderr.startswith(
        "error: --revision: invalid revision tag 'v1.lock'")
    cli.ok("pack", "push", str(pack), "--repo-id", "org/locked", "--revision", "locked-x")
    assert hub_server.tags("org/locked", repo_type="dataset") == ["locked-x"]


def test_pack_pull_of_a_repo_whose_card_yaml_cannot_be_built_is_an_error_not_a_traceback(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """`x: 2001-13-45` in a hostile repository's card raised ValueError in the card parser: a traceback."""
    files = pack_bytes(make_pack(tmp_path / "src", "baddate"))
    publish_raw_pack(hub_server, "org/baddate", "baddate", files)
    text = hub_server.store.read(hub_server.repo_path("org/baddate", "dataset"), "main", "README.md").decode()
    hub_server.put_files("org/baddate", {"README.md": text.replace("---\n", "---\nx: 2001-13-45\n", 1).encode()},
                         repo_type="dataset")
    result = cli.fails(1, "pack", "pull", "org/baddate")
    assert "Traceback" not in result.stderr and "its card has no `policyalign` metadata" in result.stderr, result.stderr
    nothing_installed(cli, "baddate")


def test_pack_pull_of_a_card_listing_a_file_name_that_is_not_text_is_an_error_not_a_traceback(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """A hostile card's `files: {1: ...}` (a number for a name) crashed the listing check with TypeError."""
    files = pack_bytes(make_pack(tmp_path / "src", "numname"))
    publish_raw_pack(hub_server, "org/numname", "numname", files)
    metadata, body = card.parse_card(hub_server.store.read(hub_server.repo_path("org/numname", "dataset"), "main",
                                                           "README.md").decode())
    metadata["policyalign"]["files"][1] = "0" * 64
    hub_server.put_files("org/numname", {"README.md": (card.dump_front_matter(metadata) + body).encode()},
                         repo_type="dataset")
    result = cli.fails(1, "pack", "pull", "org/numname")
    assert "Traceback" not in result.stderr and "the card's `files` must map file names" in result.stderr, result.stderr
    nothing_installed(cli, "numname")
