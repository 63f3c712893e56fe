"""Publishing a run's adapter (policyalign/adapter_push.py): `pa push`, `push_run`, `pa apply --push-to`;
against the loopback Hub (tests/hubserver.py, run through tests/hubcli.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from hubcli import Cli, make_pack
from policyalign import adapter_pull, adapter_push, card, hub
from policyalign.errors import HubError


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def test_push_then_pull_round_trip(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "roundtrip"))
    repo = "org/roundtrip-qwen"
    pushed = cli.ok("push", str(run), "--repo-id", repo)
    assert "tag roundtrip-v1.0.0" in pushed.stdout and f"/{repo}/tree/roundtrip-v1.0.0" in pushed.stdout

    assert hub_server.tags(repo) == ["roundtrip-v1.0.0"]
    readme = hub_server.read(repo, "README.md", "roundtrip-v1.0.0").decode()
    assert (run / "README.md").read_text() == readme  # the published card is kept with the run
    metadata, _ = card.parse_card(readme)
    assert metadata["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and metadata["library_name"] == "peft"
    assert {"policyalign", "safety", "pack:roundtrip", "pack-version:1.0.0"} <= set(metadata["tags"])
    # a pack without parents: nothing about parents, in the card or policyalign.json (their bytes are as before)
    assert "parents" not in metadata["policyalign"]["pack"] and "| Extends |" not in readme
    assert "parents" not in json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.125
    # the weights went through the git-LFS batch protocol and are stored as an LFS pointer
    assert hub_server.read(repo, "adapter_model.safetensors").startswith(b"version https://git-lfs.github.com/spec/v1")
    assert any(method == "POST" and path.endswith(".git/info/lfs/objects/batch") for method, path, _ in hub_server.requests)

    dest = tmp_path / "pulled"
    pulled = cli.ok("pull", f"{repo}@roundtrip-v1.0.0", "--to", str(dest))
    for name in ("adapter_config.json", "adapter_model.safetensors", "policyalign.json", "loss.png",
                 "eval/after/eval.json", "eval/before_after.png"):
        source = run / "adapter" / name if (run / "adapter" / name).exists() else run / name
        assert sha(dest / name) == sha(source), name
    assert "matches the local pack roundtrip@1.0.0" in pulled.stdout
    assert "PeftModel.from_pretrained" in pulled.stdout and pulled.stderr.count("warning") == 0

    cached = cli.ok("pull", repo)  # no revision, no --to: main, into the Hugging Face cache
    assert str(cli.home / "hf") in cached.stdout



@pytest.mark.slow
def test_published_files_hold_no_local_paths(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A run on a local base model published its absolute path (the user's home directory) in
    policyalign.json, adapter_config.json, eval/*/eval.json and the card; pulling it still verifies."""
    from policyalign.tiny import tiny_model_path

    model, judge = tmp_path / "home" / "alice" / "my-base", tmp_path / "home" / "alice" / "my-judge"
    shutil.copytree(tiny_model_path(), model)
    shutil.copytree(tiny_model_path(), judge)
    config = tmp_path / "run.yaml"
    config.write_text("n: 2\nsynth_max_new_tokens: 16\nmax_new_tokens: 8\nmax_steps: 2\nbatch_size: 4\n"
                      f"eval_limit: 2\neval_max_new_tokens: 8\nprogress: false\njudge: llm:{judge}\n")
    run = tmp_path / "run"
    cli.ok("apply", "root-pack", "--model", str(model), "--out", str(run), "--config", str(config),
           "--push-to", "org/no-paths")
    metadata, _ = card.parse_card(hub_server.read("org/no-paths", "README.md").decode())
    published = ["README.md", *metadata["policyalign"]["files"]]
    assert {"policyalign.json", "adapter_config.json", "eval/before/eval.json", "eval/after/eval.json"} <= set(published)
    for name in published:
        assert str(tmp_path).encode() not in hub_server.read("org/no-paths", name), name
    assert metadata["policyalign"]["base_model"]["id"] == "my-base" and "base_model" not in metadata
    assert json.loads(hub_server.read("org/no-paths", "eval/after/eval.json"))["judge"] == "llm:my-judge"
    pulled = cli.ok("pull", "org/no-paths@root-pack-v1.0.0", "--to", str(tmp_path / "pulled"))
    assert "verified: pack root-pack@1.0.0" in pulled.stdout and "base model my-base" in pulled.stdout
    again = cli.ok("apply", "root-pack", "--model", str(model), "--out", str(run), "--config", str(config),
                   "--push-to", "org/no-paths")  # resumes: every stage, the push included, is skipped
    assert again.stderr.count("skipped (finished, up to date)") == 7 and "running" not in again.stderr



def test_push_refuses_a_run_directory_in_use(cli: Cli, hub_server, make_run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        hold_run) -> None:
    """Beside a `pa apply` retraining in the same directory, push could publish one training's adapter
    with another's evals and card."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "busy"))
    with hold_run(run) as pid:
        result = cli.fails(1, "push", str(run), "--repo-id", "org/busy")
    assert f"another pa process (pid {pid}) is working in this run directory" in result.stderr
    assert not hub_server.repo_path("org/busy").exists(), "refused before anything reached the Hub"
    cli.ok("push", str(run), "--repo-id", "org/busy")



def test_push_of_an_outdated_run_warns_that_the_adapter_is_the_old_selections(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    """`pa filter` re-run by hand after training (a new --top-k): `pa runs` lists the run as outdated, yet
    `pa push` published the adapter of the old selection without a word, as if it were the new one's."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "stale-run"))
    (run / "selected.jsonl").write_text('{"id": "a"}\n')
    distill = {"status": "done", "key": "k", "settings": {"selected": sha(run / "selected.jsonl"), "heldout": None}}
    (run / "run.json").write_text(json.dumps({"inputs": {}, "stages": {"distill": distill}}))
    first = cli.ok("push", str(run), "--repo-id", "org/stale-run")
    assert "warning" not in first.stderr, first.stderr
    (run / "selected.jsonl").write_text('{"id": "b"}\n')
    hub_server.fail("POST", r"/api/models/org/stale-run/commit/.*", times=10)  # said before the upload, not after it
    failed = cli.fails(3, "push", str(run), "--repo-id", "org/stale-run", "--revision", "second")
    assert 0 <= failed.stderr.find(f"warning: {run} is outdated") < failed.stderr.index("500 Internal Server Error")
    hub_server.outages.clear()
    second = cli.ok("push", str(run), "--repo-id", "org/stale-run", "--revision", "second")
    text = " ".join(second.stderr.split())
    assert f"warning: {run} is outdated from distill" in text and "selected.jsonl or heldout.jsonl changed" in text
    assert "re-run `pa apply` on this run" in text and hub_server.tags("org/stale-run") == ["second", "stale-run-v1.0.0"]


def test_push_of_the_adapter_folder_leaves_nothing_in_it(tmp_path: Path, make_run) -> None:  # type: ignore[no-untyped-def]
    """`pa push RUN/adapter` was refused, naming the run, but took the run lock first: `.pa.lock` stayed in the
    adapter folder, a file a later push of the run would publish beside it."""
    from policyalign.errors import RunError

    adapter = make_run(tmp_path / "run", make_pack(tmp_path / "packs", "slip")) / "adapter"
    before = sorted(p.name for p in adapter.iterdir())
    with pytest.raises(RunError, match="is the run's adapter directory"):
        adapter_push.push_adapter(adapter, "org/slip")
    assert sorted(p.name for p in adapter.iterdir()) == before


def test_a_push_with_a_token_without_write_access_names_the_organization_and_the_fix(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, make_run, tmp_path: Path) -> None:
    """A valid token of a user who may not write to ORG gets 403 from the Hub (this test Hub answered 401, the
    invalid-token answer, so pa's message for it was never seen): to a new repository (refused at its creation)
    and to an existing public one (refused at the commit), pa says the token has no write access to ORG and
    how to get one, and nothing is published."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "theirs"))
    cli.ok("push", str(run), "--repo-id", "org/existing", "--revision", "first")
    for repo_id in ("org/existing", "org/brand-new"):
        said = " ".join(cli.fails(1, "push", str(run), "--repo-id", repo_id, token=hub_server.other_token).stderr.split())
        assert "the token has no write access to org (403 Forbidden)" in said, said
        assert "a token of an account that may write to org" in said and "hf auth login" in said, said
        assert "rejected the token" not in said and hub_server.other_token not in said, said
    assert not hub_server.store.exists("model", "org/brand-new")
    assert list(hub_server.store.files(hub_server.repo_path("org/existing"), "main")) == \
        list(hub_server.store.files(hub_server.repo_path("org/existing"), "first"))


def test_push_removes_stale_eval_files(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pack = make_pack(cli.packs, "stale")
    cli.ok("push", str(make_run(tmp_path / "with-eval", pack)), "--repo-id", "org/stale")
    cli.ok("push", str(make_run(tmp_path / "no-eval", pack, evals=False)), "--repo-id", "org/stale", "--revision", "second")
    files = hub_server.store.files(hub_server.repo_path("org/stale"), "second")
    assert not any(name.startswith("eval/") for name in files)
    assert "No evaluation yet" in hub_server.read("org/stale", "README.md", "second").decode()



def test_push_refuses_a_repository_with_files_it_does_not_publish(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pushing into a repo that already held someone's files published an adapter `pa pull` then
    rejected as tampered ("NOTES.md is in the repository but not listed in the card")."""
    hub_server.store.create("model", "org/occupied", False)
    hub_server.put_files("org/occupied", {"NOTES.md": b"my notes", "config.json": b"{}"}, "someone's files")
    before = hub_server.store.rev(hub_server.repo_path("org/occupied"), "refs/heads/main")
    result = cli.fails(1, "push", str(make_run(tmp_path / "run", make_pack(cli.packs, "occupied"))), "--repo-id", "org/occupied")
    assert "does not publish: NOTES.md, config.json" in result.stderr
    assert "hf repos delete-files org/occupied NOTES.md config.json" in result.stderr
    assert hub_server.store.rev(hub_server.repo_path("org/occupied"), "refs/heads/main") == before
    assert hub_server.tags("org/occupied") == []
    hub_server.put_files("org/occupied", {f"checkpoint-{i}/optimizer.pt": b"x" for i in range(12)}, "a trainer's push")
    many = cli.fails(1, "push", str(tmp_path / "run"), "--repo-id", "org/occupied")
    assert "checkpoint-1/optimizer.pt, checkpoint-10/optimizer.pt" in many.stderr and "(and 4 more)" in many.stderr


def test_push_keeps_files_under_eval_it_does_not_publish(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every file under eval/ was taken for one `pa push` publishes: a report someone uploaded there
    (eval/after/report.md, eval/notes.md) was deleted by the next push without a word, where any other
    file it does not publish is refused, never deleted."""
    pack = make_pack(cli.packs, "reported")
    cli.ok("push", str(make_run(tmp_path / "run", pack)), "--repo-id", "org/reported")
    hub_server.put_files("org/reported", {"eval/after/report.md": b"# report", "eval/notes.md": b"mine"}, "reports")
    before = hub_server.store.rev(hub_server.repo_path("org/reported"), "refs/heads/main")
    result = cli.fails(1, "push", str(tmp_path / "run"), "--repo-id", "org/reported", "--revision", "second")
    assert "does not publish: eval/after/report.md, eval/notes.md" in result.stderr
    assert hub_server.store.rev(hub_server.repo_path("org/reported"), "refs/heads/main") == before
    assert hub_server.read("org/reported", "eval/notes.md") == b"mine"



# --------------------------------------------------------------------------- API used by `pa apply --push-to`


def test_push_refuses_a_license_that_is_not_an_id(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--license "Apache 2.0"` was published as `license: other`, and the card said the base model's
    license "was not found": the license the publisher gave was dropped without a word."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "licensed"))
    refused = cli.fails(2, "push", str(run), "--repo-id", "org/licensed", "--license", "Apache 2.0")
    assert "--license: invalid license id 'Apache 2.0'" in refused.stderr and "apache-2.0" in refused.stderr
    assert not hub_server.store.exists("model", "org/licensed")  # refused before the repository was created
    before_training = cli.fails(2, "apply", "licensed", "--model", "tiny", "--out", str(tmp_path / "new"),
                                "--push-to", "org/licensed", "--license", "Apache 2.0")
    assert "--license: invalid license id 'Apache 2.0'" in before_training.stderr
    assert not (tmp_path / "new" / "instructions.jsonl").exists()
    cli.ok("push", str(run), "--repo-id", "org/licensed", "--license", "Apache-2.0")
    assert card.parse_card((run / "README.md").read_text())[0]["license"] == "apache-2.0"



def test_push_run_api(hub_server, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    packs = tmp_path / "packs"
    run = make_run(tmp_path / "run", make_pack(packs, "apiuse"))
    url = adapter_push.push_run(run, "org/apiuse", private=True, revision="apiuse-custom")
    assert url == f"{hub_server.endpoint}/org/apiuse/tree/apiuse-custom"
    assert hub_server.store.meta("model", "org/apiuse")["private"] is True
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        adapter_push.push_run(run, "org/apiuse")



def test_a_tag_holding_this_runs_files_under_another_card_is_not_taken_for_this_push(  # type: ignore[no-untyped-def]
        hub_server, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa apply --push-to` run again with --license mit after publishing without one: the push failed on
    the tag, `published_url` found the same files there and recorded the push as done, reporting the
    run published while the Hub's card still said `license: other`; `pa push --license mit` said
    "already published, nothing to push"."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    run, repo = make_run(tmp_path / "run", make_pack(tmp_path / "packs", "relicensed")), "org/relicensed"
    url = adapter_push.push_run(run, repo)
    assert adapter_push.published_url(run, repo) == url  # the very card: a push killed before it was recorded
    assert adapter_push.published_url(run, repo, license="mit") is None
    with pytest.raises(HubError) as caught:
        adapter_push.push_adapter(run, repo, license="mit")
    hint = str(caught.value.problem.hint)
    assert "published with another card" in hint and "--revision" in hint and "nothing to push" not in hint
    with pytest.raises(HubError, match="already has a tag") as caught:
        adapter_push.push_adapter(run, repo)
    assert "already published, nothing to push" in str(caught.value.problem.hint)
    assert card.parse_card(hub_server.read(repo, "README.md").decode())[0]["license"] == "other"


# --------------------------------------------------------------------------- the real Hub (opt-in)


@pytest.mark.online
@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("PA_ONLINE_TESTS") == "1"),
                    reason="needs HF_TOKEN and PA_ONLINE_TESTS=1")
def test_real_hub_round_trip(make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    api = hub.hub_api(os.environ["HF_TOKEN"])
    repo = f"{api.whoami()['name']}/policyalign-test-{uuid.uuid4().hex[:8]}"
    run = make_run(tmp_path / "run", make_pack(tmp_path / "packs", "online"))
    try:
        url = adapter_push.push_run(run, repo, private=True)
        assert url.endswith("/tree/online-v1.0.0")
        result = adapter_pull.pull_adapter(f"{repo}@online-v1.0.0", to=tmp_path / "pulled")
        assert result.pack["name"] == "online"
    finally:
        api.delete_repo(repo)



# --------------------------------------------------------------------------- pa apply --push-to


@pytest.mark.slow
def test_apply_push_to_publishes_the_run_and_pull_verifies_it(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pack = make_pack(cli.packs, "applied")
    run = tmp_path / "run"
    cli.ok("apply", str(pack), "--model", "tiny", "--out", str(run), "--quiet", "--n", "2", "--max-steps", "4",
           "--eval-limit", "4", "--batch-size", "4", "--max-new-tokens", "8", "--push-to", "org/applied-tiny")
    assert hub_server.tags("org/applied-tiny") == ["applied-v1.0.0"]
    readme = hub_server.read("org/applied-tiny", "README.md", "applied-v1.0.0").decode()
    metadata, _ = card.parse_card(readme)
    assert metadata["policyalign"]["pack"]["name"] == "applied"
    assert json.loads((run / "run.json").read_text())["stages"]["push"]["url"].endswith("/org/applied-tiny/tree/applied-v1.0.0")
    pulled = cli.ok("pull", "org/applied-tiny", "--to", str(tmp_path / "pulled"))
    assert "matches the local pack applied@1.0.0" in pulled.stdout



@pytest.mark.slow
def test_apply_publishes_a_retrained_run_under_a_new_revision(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Retraining a published run made `pa apply --push-to` fail on the taken tag with the hint
    "pass --revision", an option `pa apply` did not have. With --license, the card stage re-ran on
    every re-run (it recorded its key without the license)."""
    pack, run = make_pack(cli.packs, "retrained"), tmp_path / "run"
    args = ["apply", str(pack), "--model", "tiny", "--out", str(run), "--quiet", "--n", "2", "--eval-limit", "2",
            "--batch-size", "4", "--max-new-tokens", "8", "--license", "apache-2.0", "--push-to", "org/retrained"]
    assert "--revision only applies with --push-to" in cli.fails(2, *args[:-2], "--revision", "x").stderr
    cli.ok(*args, "--max-steps", "2")
    taken = cli.fails(1, *args, "--max-steps", "3")
    assert "already has a tag 'retrained-v1.0.0'" in taken.stderr and "--revision" in taken.stderr
    cli.ok(*args, "--max-steps", "3", "--revision", "retrained-v1.0.0-b")
    assert sorted(hub_server.tags("org/retrained")) == ["retrained-v1.0.0", "retrained-v1.0.0-b"]
    readme = hub_server.read("org/retrained", "README.md", "retrained-v1.0.0-b").decode()
    assert readme == (run / "README.md").read_text() and "revision=\"retrained-v1.0.0-b\"" in readme
    again = cli.ok(*args, "--max-steps", "3", "--revision", "retrained-v1.0.0-b")
    assert "[card] skipped" in again.stderr and "[push] skipped" in again.stderr
