"""Hub client plumbing and what publishing shares (policyalign/hub.py): taken tags, private
repositories, the commit and its tag, safe paths, tokens; with the real huggingface_hub client
against the loopback Hub (tests/hubserver.py, run through tests/hubcli.py).
"""

from __future__ import annotations

import dataclasses
import http.server
import socket
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubcli import Cli, make_pack
from policyalign import hub, templates
from policyalign.errors import HubError, InvalidInputError


# --------------------------------------------------------------------------- publishing (shared)


def test_push_refuses_an_existing_tag_and_revision_overrides(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "retag"))
    cli.ok("push", str(run), "--repo-id", "org/retag")
    again = cli.fails(1, "push", str(run), "--repo-id", "org/retag")
    assert "already has a tag 'retag-v1.0.0'" in again.stderr and "--revision" in again.stderr
    cli.ok("push", str(run), "--repo-id", "org/retag", "--revision", "retag-v1.0.0-rerun")
    assert sorted(hub_server.tags("org/retag")) == ["retag-v1.0.0", "retag-v1.0.0-rerun"]
    bad = cli.fails(2, "push", str(run), "--repo-id", "org/retag", "--revision", "../evil")
    assert "invalid revision tag" in bad.stderr
    # a tag `main` shadowed the branch: `pa pull org/retag` kept resolving to it after later pushes
    for branch_or_commit in ("main", "0123456789abcdef0123456789abcdef01234567"):
        shadow = cli.fails(2, "push", str(run), "--repo-id", "org/retag", "--revision", branch_or_commit)
        assert "names the main branch or a commit" in shadow.stderr
    assert sorted(hub_server.tags("org/retag")) == ["retag-v1.0.0", "retag-v1.0.0-rerun"]



def test_push_of_a_pack_changed_without_a_version_bump_is_told_to_bump_it(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The taken tag holds retag@1.0.0 with another digest: "publish under --revision X-r2" put two
    policies on the Hub as one version; the fix is a version bump."""
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "bumpme"))), "--repo-id", "org/bumpme")
    edited = make_run(tmp_path / "edited", make_pack(tmp_path / "edited-pack", "bumpme", policy_note="One more rule."))
    taken = cli.fails(1, "push", str(edited), "--repo-id", "org/bumpme")
    assert "already has a tag 'bumpme-v1.0.0'" in taken.stderr
    assert "was trained on bumpme@1.0.0 with digest" in taken.stderr and "changed without a version bump" in taken.stderr
    assert "Bump its version (`pa bump PACK_DIR patch" in " ".join(taken.stderr.split())



def test_a_taken_tag_gets_the_fix_for_what_is_pushed(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One hint for both: `pa push` of a retrained adapter was told to "bump the pack version", and
    `pa pack push` of changed files to take another tag (two different packs published as one version)."""
    source = make_pack(cli.packs, "taken")
    cli.ok("pack", "push", str(source), "--repo-id", "org/taken-pack")
    (source / "policy.md").write_text((source / "policy.md").read_text() + "\nOne more rule.\n")
    pack_again = " ".join(cli.fails(1, "pack", "push", str(source), "--repo-id", "org/taken-pack").stderr.split())
    assert "bump its version (`pa bump PACK_DIR patch --note ...`: pack.yaml and its CHANGELOG.md entry)" in pack_again
    assert "--revision" not in pack_again

    run = make_run(tmp_path / "run", make_pack(cli.packs, "retaken"))
    cli.ok("push", str(run), "--repo-id", "org/retaken")
    # the same run again: it is published already (it was told to publish a duplicate under -r2)
    same = " ".join(cli.fails(1, "push", str(run), "--repo-id", "org/retaken").stderr.split())
    assert "is this run's (its card lists the same files): it is already published, nothing to push" in same
    assert "-r2" not in same
    (run / "adapter" / "loss.png").write_bytes(b"another training's loss curve")  # retrained: other files
    adapter_again = " ".join(cli.fails(1, "push", str(run), "--repo-id", "org/retaken").stderr.split())
    assert "new tag with --revision (e.g. retaken-v1.0.0-r2)" in adapter_again and "pack version" not in adapter_again



def test_push_private_refuses_an_existing_public_repository(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--private` only applies when the repository is created: into an existing public one the
    adapter was published publicly without a word."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "secretive"))
    cli.ok("push", str(run), "--repo-id", "org/secretive")
    main = hub_server.store.rev(hub_server.repo_path("org/secretive"), "refs/heads/main")
    result = cli.fails(1, "push", str(run), "--repo-id", "org/secretive", "--private", "--revision", "second")
    assert "--private was given, but the repository already exists and is public" in result.stderr
    assert "hf repos settings org/secretive --private" in result.stderr
    assert hub_server.tags("org/secretive") == ["secretive-v1.0.0"]
    assert hub_server.store.rev(hub_server.repo_path("org/secretive"), "refs/heads/main") == main
    cli.ok("push", str(run), "--repo-id", "org/secretive-private", "--private")  # a new repository is created private
    assert hub_server.store.meta("model", "org/secretive-private")["private"] is True



def test_a_private_repository_read_without_its_owners_token_is_not_found_or_private(cli: Cli, make_run,  # type: ignore[no-untyped-def]
                                                                                     tmp_path: Path) -> None:
    """The Hub answers a private repository read without a token that can read it as it answers a missing
    one (RepoNotFound): `pa pull` and `pa pack pull` say "not found (or private)" with the login fix, and
    exit 1, not 3 (no outage: retrying changes nothing)."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "secret"))
    cli.ok("push", str(run), "--repo-id", "org/secret-adapter", "--private")
    cli.ok("pack", "push", str(cli.packs / "secret"), "--repo-id", "org/secret-pack", "--private")
    for token in (None, cli.hub.other_token):  # no token, another user's
        for args in (["pull", "org/secret-adapter", "--to", str(tmp_path / "pulled")], ["pack", "pull", "org/secret-pack"]):
            said = " ".join(cli.fails(1, *args, token=token).stderr.split())
            assert "repository not found (or private)" in said and "log in with a token that can read it" in said, said
    assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/secret-adapter", "--to", str(tmp_path / "pulled"))  # the owner's token reads it



def test_a_gated_repository_is_called_gated_with_where_to_ask_for_access(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    """A gated adapter or pack (GatedRepo, a RepositoryNotFoundError to huggingface_hub) read without a token was
    "repository not found (or private)", and read by an account not granted access (403) "the token has no write
    access to org": neither says the repository is there and access must be asked for on its page."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "guarded"))
    hub_server.store.create("model", "org/gated-adapter", False, gated=True)
    hub_server.store.create("dataset", "org/gated-pack", False, gated=True)
    cli.ok("push", str(run), "--repo-id", "org/gated-adapter")
    cli.ok("pack", "push", str(cli.packs / "guarded"), "--repo-id", "org/gated-pack")
    pulls = {"org/gated-adapter": ["pull", "org/gated-adapter", "--to", str(tmp_path / "pulled")],
             "org/gated-pack": ["pack", "pull", "org/gated-pack"]}
    for repo, args in pulls.items():
        page = f"{hub_server.endpoint}/{'datasets/' if 'pack' in repo else ''}{repo}"
        anonymous = " ".join(cli.fails(1, *args, token=None).stderr.split())
        assert "is gated (401 Unauthorized: asked for without a token)" in anonymous and f"ask for access at {page}" in anonymous, anonymous
        assert "hf auth login" in anonymous and "not found" not in anonymous, anonymous
        refused = " ".join(cli.fails(1, *args, token=hub_server.other_token).stderr.split())
        assert "is gated and the token's account has not been granted access (403 Forbidden)" in refused, refused
        assert f"ask for access at {page}" in refused and "write access" not in refused, refused
    assert not (tmp_path / "pulled").exists()

def test_a_failed_push_says_what_the_hub_holds_and_the_same_command_finishes_it(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Hub error while committing or tagging printed the HTTP error twice and no hint, so a user
    whose commit landed untagged could not tell whether to re-run, bump the version or use --revision."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "flaky"))
    hub_server.fail("POST", r"/api/models/org/flaky/commit/.*")
    failed = cli.fails(3, "push", str(run), "--repo-id", "org/flaky")  # a 500: an outage, worth retrying
    assert "nothing is tagged flaky-v1.0.0 yet; run the same command again" in failed.stderr
    assert failed.stderr.count("500 Internal Server Error") == 1
    hub_server.fail("POST", r"/api/models/org/flaky/tag/.*")
    untagged = cli.fails(3, "push", str(run), "--repo-id", "org/flaky")
    assert "the files are on the main branch (commit " in untagged.stderr
    assert "not tagged flaky-v1.0.0; run the same command again to tag them" in untagged.stderr
    assert hub_server.tags("org/flaky") == []
    cli.ok("push", str(run), "--repo-id", "org/flaky")
    assert hub_server.tags("org/flaky") == ["flaky-v1.0.0"]




def test_a_push_refused_for_its_token_after_committing_says_what_the_hub_holds(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    """A token rejected (401: expired, revoked) or not allowed to tag (403) after the commit landed said
    only "log in": not that main now held the new files untagged, nor that the same command tags them."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "revoked"))
    for status in (401, 403):
        hub_server.fail("POST", r"/api/models/org/revoked/tag/.*", status=status)
        failed = cli.fails(1, "push", str(run), "--repo-id", "org/revoked")
        assert f"({status} " in failed.stderr
        assert "the files are on the main branch (commit " in failed.stderr
        assert "not tagged revoked-v1.0.0; run the same command again to tag them" in failed.stderr
    assert hub_server.tags("org/revoked") == []
    cli.ok("push", str(run), "--repo-id", "org/revoked")
    assert hub_server.tags("org/revoked") == ["revoked-v1.0.0"]


# --------------------------------------------------------------------------- transient failures (exit code 3)


def test_a_hub_answering_not_now_exits_3_for_push_pull_and_packs(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every Hub failure exited 1, as a failed run does, so a CI job could not retry on an outage alone: a 503 or
    429 (the Hub busy, or rate-limiting) exits 3 and says it is worth retrying; the same command then succeeds."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "not-now"))
    hub_server.fail("POST", r"/api/models/org/not-now/commit/.*", status=503)
    pushed = cli.fails(3, "push", str(run), "--repo-id", "org/not-now")
    assert "503 Service Unavailable" in pushed.stderr and "worth retrying" in pushed.stderr
    cli.ok("push", str(run), "--repo-id", "org/not-now")
    for status in (503, 429):
        hub_server.fail("GET", r"/api/models/org/not-now/revision/.*", status=status)
        pulled = cli.fails(3, "pull", "org/not-now", "--to", str(tmp_path / "pulled"))
        assert "looking up revision main: " in pulled.stderr and f"'{status} " in pulled.stderr and "worth retrying" in pulled.stderr
        assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/not-now", "--to", str(tmp_path / "pulled"))

    hub_server.fail("POST", r"/api/datasets/org/not-now-pack/commit/.*", status=503)
    assert "worth retrying" in cli.fails(3, "pack", "push", str(cli.packs / "not-now"), "--repo-id", "org/not-now-pack").stderr
    cli.ok("pack", "push", str(cli.packs / "not-now"), "--repo-id", "org/not-now-pack")
    hub_server.fail("GET", r"/api/datasets/org/not-now-pack/refs", status=429)
    assert "429 Too Many Requests" in cli.fails(3, "pack", "pull", "org/not-now-pack").stderr
    cli.ok("pack", "pull", "org/not-now-pack")


def test_a_hub_answering_no_keeps_exit_1(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Only an outage is exit 3: a missing repository, a refused token or a forbidden write fails the same way
    when run again, and a CI job retrying on it would only wait longer for the same error."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "refused"))
    assert "repository not found" in cli.fails(1, "pull", "org/refused-nowhere").stderr
    missing_pack = cli.fails(1, "pack", "pull", "org/refused-nowhere").stderr
    assert "repository not found (or private)" in missing_pack and "worth retrying" not in missing_pack
    for status in (401, 403):
        hub_server.fail("POST", r"/api/models/org/refused/commit/.*", status=status)
        refused = cli.fails(1, "push", str(run), "--repo-id", "org/refused")
        assert f"({status} " in refused.stderr and "worth retrying" not in refused.stderr
    cli.ok("pack", "push", str(cli.packs / "refused"), "--repo-id", "org/refused-pack")
    hub_server.fail("GET", r"/api/datasets/org/refused-pack/refs", status=401)
    assert "worth retrying" not in cli.fails(1, "pack", "pull", "org/refused-pack").stderr


def test_offline_mode_wrapped_by_a_download_is_no_outage() -> None:
    """HF_HUB_OFFLINE=1 raises OfflineModeIsEnabled, a ConnectionError, which huggingface_hub's snapshot_download
    wraps in a LocalEntryNotFoundError: read as a connection failure, a setting would exit 3, "worth retrying",
    and a CI job would retry what can never work. An outage wrapped alike (a download's HEAD answered 503 after
    huggingface_hub's own retries, a connection reset) is one; a 403 wrapped alike is not."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from policyalign.errors import HubError

    def wrapped(cause: Exception) -> HubError:
        try:
            try:
                raise cause
            except Exception as inner:
                raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from inner
        except LocalEntryNotFoundError as outer:
            return hub._hub_error(outer, "downloading", None, "org/x")

    offline = wrapped(OfflineModeIsEnabled("offline mode is enabled"))
    assert offline.exit_code == 1 and "worth retrying" not in str(offline)
    reset = wrapped(ConnectionResetError(104, "Connection reset by peer"))
    assert reset.exit_code == 3 and "worth retrying" in str(reset)

    def answered(status: int) -> HfHubHTTPError:
        request = httpx.Request("HEAD", "http://127.0.0.1:9/org/x/resolve/main/README.md")
        return HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))

    assert wrapped(answered(503)).exit_code == 3 and wrapped(answered(403)).exit_code == 1


def test_a_hub_that_cannot_be_reached_exits_3(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A closed port (connection refused: the Hub or the network down) exits 3, for every Hub command family."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "unreached"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other process can take the port
        down = dataclasses.replace(cli, hub=SimpleNamespace(endpoint=f"http://127.0.0.1:{closed.getsockname()[1]}",
                                                            token=cli.hub.token))
        for args in (["push", str(run), "--repo-id", "org/unreached"], ["pull", "org/unreached"],
                     ["pack", "push", str(cli.packs / "unreached"), "--repo-id", "org/unreached-pack"],
                     ["pack", "pull", "org/unreached-pack"]):
            failed = down.fails(3, *args)
            assert "could not reach the Hub at http://127.0.0.1:" in failed.stderr, failed.stderr
            assert "worth retrying" in failed.stderr


# --------------------------------------------------------------------------- downloads (shared)


def test_safe_paths() -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "C:/x", "a\\..\\x", "./a", ""):
        assert not hub.is_safe_relpath(bad), bad
    assert hub.is_safe_relpath("eval/harmful.jsonl")


@pytest.mark.parametrize("name", ["COM\u00b9.md", "lpt\u00b2", "notes/Com\u00b3.json", "LPT\u00b9/x.md", "conin$", "CONOUT$.txt"])
def test_a_superscript_port_or_a_console_name_is_a_windows_device_name(name: str) -> None:
    """Windows reads the superscripts ¹ ² ³ as digits of a port name (`COM¹` is a port, as `COM1` is), and
    CONIN$/CONOUT$ open the console as CON does: all passed as portable names, so such a pack installed on
    Linux and failed, or wrote to a device, on Windows."""
    assert hub.unportable_part(name) is not None and "is a Windows device name" in hub.unportable_part(name), name


@pytest.mark.parametrize("name", ["a\x01b.md", "notes/x\x1b]0;pwned\x07.json", "tab\there.md", "line\nbreak", "nul\x1f."])
def test_a_control_character_is_unportable_and_shown_escaped(name: str) -> None:
    """Windows file names cannot hold U+0001-U+001F, yet only U+0000 was refused: an adapter whose card listed
    `a\x01b.md` passed `pa pull`'s portability check. The reason shows the name escaped, never the raw
    character (a hostile Hub's `\x1b]0;...` would retitle the terminal of whoever pulls)."""
    reason = hub.unportable_part(name)
    assert reason is not None and "holds the control character U+00" in reason, (name, reason)
    assert "which Windows file names cannot hold" in reason
    assert not any(ord(char) < 32 for char in reason), reason
    assert ascii(name.split("/")[-1])[1:-1] in reason, reason


@pytest.mark.parametrize("name", ["COM0.md", "lpt0", "com10", "console.md", "COM\u2074"])
def test_names_windows_writes_as_files_are_portable(name: str) -> None:
    """COM0 and LPT0 are no devices (Windows writes `com0.c`), nor is a longer name or another superscript."""
    assert hub.unportable_part(name) is None, name



# --------------------------------------------------------------------------- tokens


def test_missing_token_is_a_clear_error(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "notoken"))
    result = cli.fails(1, "push", str(run), "--repo-id", "org/notoken", token=None)
    assert "no Hugging Face token found" in result.stderr
    assert "hf auth login" in result.stderr and "huggingface-cli login" in result.stderr and "HF_TOKEN" in result.stderr
    assert not hub_server.store.exists("model", "org/notoken")
    assert "no Hugging Face token" in cli.fails(1, "pack", "push", str(cli.packs / "notoken"), "--repo-id", "o/n", token=None).stderr



def test_invalid_token_is_rejected_without_echoing_it(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wrong = "hf_WRONGwrongWRONG0123456789"
    run = make_run(tmp_path / "run", make_pack(cli.packs, "badtoken"))
    result = cli.fails(1, "push", str(run), "--repo-id", "org/badtoken", token=wrong)
    assert "rejected the token (401 Unauthorized)" in result.stderr and "HF_TOKEN" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert not hub_server.store.exists("model", "org/badtoken")



def test_an_invalid_token_reading_a_public_repository_is_named_as_the_problem(cli: Cli, make_run,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    """The Hub refuses every request that carries a token it does not know (401), a public repository's read
    included; the test Hub let such a token read, so what `pa pull`, `pa pack pull` and `pa pull --pack` say
    to a user whose HF_TOKEN is mistyped or revoked was never seen. Each says the Hub rejected the token, with
    the login fix, exit 1, without echoing it, and pulls nothing."""
    wrong = "hf_WRONGwrongWRONG0123456789"
    pack = make_pack(cli.packs, "opentoken")
    cli.published(make_run(tmp_path / "run", pack), "org/opentoken")
    cli.pack_published(pack, "org/opentoken-pack")
    for args in (["pull", "org/opentoken", "--to", str(tmp_path / "pulled")], ["pack", "pull", "org/opentoken-pack"],
                 ["pull", "--pack", "opentoken", "--to", str(tmp_path / "pulled")]):
        result = cli.fails(1, *args, token=wrong)
        said = " ".join(result.stderr.split())
        assert "the Hub rejected the token (401 Unauthorized)" in said and "HF_TOKEN" in said, said
        assert "not found" not in said and wrong not in result.stdout + result.stderr, said
    assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/opentoken", "--to", str(tmp_path / "pulled"), token=None)  # public: no token reads it



def test_token_never_leaks(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = hub_server.token
    run = make_run(tmp_path / "run", make_pack(cli.packs, "canary"))
    cli.ok("push", str(run), "--repo-id", "org/canary")
    cli.fails(1, "push", str(run), "--repo-id", "org/canary")                 # error path (tag exists)
    cli.ok("pull", "org/canary", "--to", str(tmp_path / "pulled"))
    hub_server.put_files("org/canary", {"policyalign.json": b"{}"})
    cli.fails(1, "pull", "org/canary", "--to", str(tmp_path / "tampered"))   # error path (provenance)
    cli.ok("pack", "push", str(cli.packs / "canary"), "--repo-id", "org/canary-pack")
    cli.ok("pack", "pull", "org/canary-pack")
    cli.fails(1, "pull", "org/nope")                                          # error path (not found)
    assert not [out for out in cli.outputs if token in out]
    written = [p for root in (tmp_path, cli.home) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 20 and (tmp_path / "run" / "README.md") in written
    assert not [p for p in written if token.encode() in p.read_bytes()]
    for repo in (hub_server.repo_path("org/canary"), hub_server.repo_path("org/canary-pack", "dataset")):
        revisions = hub_server.store.git(repo, "rev-list", "--all").split()
        contents = subprocess.run(["git", "-C", str(repo), "grep", "-I", "-c", token, *revisions], capture_output=True)
        assert contents.returncode == 1 and not contents.stdout  # 1: no match in any file of any commit
        assert token not in hub_server.store.git(repo, "log", "--all", "--format=%B")



def test_scrub_removes_tokens() -> None:
    text = "401 for url with Authorization: Bearer hf_abcdefghijk and token=hf_zyxwvut9876"
    assert "hf_abc" not in hub.scrub(text, None) and "hf_zyx" not in hub.scrub(text, None)
    assert hub.scrub("secret-token-value leaked", "secret-token-value") == "hf_*** leaked"



class _HostileHub(http.server.BaseHTTPRequestHandler):
    """A hostile (or buggy) mirror answering every request 400, with a request id of its choosing: huggingface_hub
    puts it on the error's first line, which pa prints. This one's repeats the token it was sent (without the
    `Bearer ` that `scrub` recognises)."""

    def request_id(self) -> str:
        return f"echo {self.headers.get('authorization', 'none').split()[-1]}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        # as bytes: send_response and send_header take latin-1 only
        self.wfile.write(f"HTTP/1.1 400 Bad Request\r\nX-Request-Id: {self.request_id()}\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())

    def log_message(self, *args: object) -> None:
        pass


def _hub_error_from(handler: type[http.server.BaseHTTPRequestHandler], monkeypatch: pytest.MonkeyPatch) -> str:
    """The HubError a `model_info` call to a server run by `handler` becomes, as pa prints it."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with pytest.raises(HubError) as info, hub.hub_call("looking up revision main", repo="org/x"):
            hub.hub_api(None).model_info("org/x")
    finally:
        server.shutdown()
        server.server_close()
    return str(info.value)


def test_a_token_not_shaped_like_hf_is_scrubbed_when_taken_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scrub` removed the token it was given and anything shaped like `hf_...`; `pa pull` and `pa pack pull`
    pass none (huggingface_hub reads HF_TOKEN itself), so a token of another shape (a mirror's, an old
    `api_...` one) that a Hub's error message repeated was printed whole."""
    secret = "mirror-secret-4f2a9c7e"
    monkeypatch.setenv("HF_TOKEN", secret)
    text = _hub_error_from(_HostileHub, monkeypatch)
    assert "(Request ID: echo " in text and secret not in text, text


class _EscapingHub(_HostileHub):
    def request_id(self) -> str:
        return "\x1b]0;pwned\x07\x1b[2J \u202eboom"


def test_a_hubs_error_sends_no_terminal_escape_to_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request id of a Hub's error reached the terminal raw in pa's `error:` line: ESC ]0; retitled it,
    ESC [2J cleared it, a U+202E reversed the text after it. They are shown escaped."""
    text = _hub_error_from(_EscapingHub, monkeypatch)
    assert "\\x1b]0;pwned\\x07\\x1b[2J \\u202eboom" in text, text
    assert not templates.text_problem(text), text


def test_credentials_in_hf_endpoint_are_neither_printed_nor_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror's password in HF_ENDPOINT (`https://user:password@mirror`) was printed in "could not reach the Hub
    at ..." and in the URL `pa push` prints, which `pa apply --push-to` records in run.json."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://puller:s3cret-pass@127.0.0.1:{port}")
    assert hub.repo_url("org/x", "dataset", "v1") == f"http://127.0.0.1:{port}/datasets/org/x/tree/v1"
    with pytest.raises(HubError) as info, hub.hub_call("looking up revision main", repo="org/x"):
        hub.hub_api(None).model_info("org/x")
    assert f"could not reach the Hub at http://127.0.0.1:{port} (" in str(info.value), str(info.value)
    for refused in ("ftp://puller:s3cret-pass@mirror", "puller:s3cret-pass@mirror"):  # no http(s) URL: refused
        monkeypatch.setenv("HF_ENDPOINT", refused)
        with pytest.raises(InvalidInputError, match="is not an http") as info:
            hub.endpoint()
        assert "s3cret" not in str(info.value) and "mirror" in str(info.value), str(info.value)



# --------------------------------------------------------------------------- the loopback Hub


def _listen_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a listening socket on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found



def test_servers_listen_on_loopback_only(hub_server) -> None:  # type: ignore[no-untyped-def]
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    assert hub_server.endpoint.startswith("http://127.0.0.1:")
    for port in (int(hub_server.endpoint.rsplit(":", 1)[1]), hub_server.olah_port):
        assert _listen_addresses(port) == {"127.0.0.1"}


def test_several_builds_of_one_version_are_refused_in_one_wording() -> None:
    """`pa pack pull` and `pa pull --pack` each spelled their own refusal of two builds of one version
    (1.0.0+a, 1.0.0+b); one helper says it for both, naming every build, and lets a single one through."""
    from policyalign.errors import HubError

    hub.refuse_several_builds(["1.0.0+a"], "adapters for pack p were trained on", file="pack:p", hint="h")
    with pytest.raises(HubError) as caught:
        hub.refuse_several_builds(["v1.0.0+b", "v1.0.0+a"], "org/p publishes", file="org/p", hint="name one")
    assert caught.value.problem.message == ("org/p publishes 2 builds (v1.0.0+a, v1.0.0+b), one version by SemVer "
                                            "precedence (build metadata after '+' does not order versions), so none is the newest")
    assert caught.value.problem.file == "org/p" and caught.value.problem.hint == "name one"


def test_offline_hub_calls_name_only_a_fix_that_applies(offline_hub, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """With HF_HUB_OFFLINE=1, `pa pack pull`, `pa pack push` and `pa push` were told "an adapter pulled before is
    found offline: `pa pull ORG/NAME@REVISION`": `pa pull` fetches no pack, and a push has nothing to find. That
    tip is `pa pull --pack`'s alone."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    packs = Path(__file__).resolve().parents[1] / "packs"
    for args in (["pack", "pull", "org/medical"], ["pack", "push", str(packs / "general"), "--repo-id", "org/general"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "HF_HUB_OFFLINE=1 is set, and this needs the Hub" in result.output and "unset HF_HUB_OFFLINE" in result.output
        assert "pa pull" not in result.output, result.output
    search = CliRunner().invoke(app, ["pull", "--pack", "medical"])
    assert search.exit_code == 1 and "searching the Hub: HF_HUB_OFFLINE=1 is set" in search.output
    assert "an adapter pulled before is found offline: `pa pull ORG/NAME@REVISION`" in search.output


def test_a_pulled_directory_is_on_disk_before_it_takes_its_name(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """`swap_in` moved a download into place unsynced: after a power cut `pa pull` could have left a pack or
    adapter of empty files under its name, which the next `pa pull` finds present and keeps."""
    for version in ("1", "2"):  # a first pull, then one replacing it
        staged = tmp_path / ".staging" / "pack"
        staged.mkdir(parents=True)
        (staged / "pack.yaml").write_text(f"version: {version}\n")
        synced = fsyncs(tmp_path / "packs" / "general")
        (tmp_path / "packs").mkdir(exist_ok=True)
        hub.swap_in(staged, tmp_path / "packs" / "general")
        assert not synced.problems()
    assert (tmp_path / "packs" / "general" / "pack.yaml").read_text() == "version: 2\n"
