"""Push/pull adapters and packs with the real huggingface_hub client against a loopback Hub.

The Hub is olah (read API, from git repositories) behind tests/hubserver.py (write and listing
API on the same repositories), started once per session by the `hub_server` fixture. CLI tests
run `python -m policyalign` in a subprocess with HF_ENDPOINT pointing there, exactly as a user
would; HF_HUB_DISABLE_XET=1 makes the client use the classic git-LFS upload protocol, which the
test server implements (it has no Xet storage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from policyalign import card, hub
from policyalign.errors import HubError
from policyalign.pack import files_digest, load_pack
from policyalign.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PACKS = Path(__file__).parent / "fixtures" / "packs"
DEFAULT = object()


# --------------------------------------------------------------------------- helpers


@dataclass
class Cli:
    """Runs `pa` in a subprocess against the loopback Hub, recording every output for leak checks."""

    hub: object
    home: Path
    packs: Path
    cwd: Path
    outputs: list[str] = field(default_factory=list)

    def env(self, token: object = DEFAULT) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "PA_"))}
        env.update(HF_ENDPOINT=self.hub.endpoint, HF_HOME=str(self.home / "hf"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", PA_HOME=str(self.home / "pa"), PA_PACKS_PATH=str(self.packs),
                   PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        if os.environ.get("PA_CACHE_DIR"):
            env["PA_CACHE_DIR"] = os.environ["PA_CACHE_DIR"]
        token = self.hub.token if token is DEFAULT else token
        if token:
            env["HF_TOKEN"] = str(token)
        return env

    def run(self, *args: str, token: object = DEFAULT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "policyalign", *args], cwd=self.cwd, env=self.env(token),
                                capture_output=True, text=True, timeout=300, check=False)
        self.outputs += [result.stdout, result.stderr]
        return result

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, f"pa {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def fails(self, code: int, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == code, f"pa {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def cli(hub_server, tmp_path: Path) -> Cli:  # type: ignore[no-untyped-def]
    packs = tmp_path / "packs"
    shutil.copytree(FIXTURE_PACKS, packs)
    (tmp_path / "cwd").mkdir()
    return Cli(hub_server, tmp_path / "home", packs, tmp_path / "cwd")


def make_pack(dest_root: Path, name: str, version: str = "1.0.0", policy_note: str = "") -> Path:
    """A copy of the root-pack fixture renamed to `name`@`version` (its own digest)."""
    dest = dest_root / name
    shutil.copytree(FIXTURE_PACKS / "root-pack", dest)
    manifest = yaml.safe_load((dest / "pack.yaml").read_text())
    manifest.update(name=name, version=version)
    (dest / "pack.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (dest / "CHANGELOG.md").write_text(f"# Changelog\n\n## {version}\n\n- test pack\n")
    if policy_note:
        with (dest / "policy.md").open("a") as handle:
            handle.write(f"\n{policy_note}\n")
    return dest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    return {p.relative_to(pack_dir).as_posix(): p.read_bytes() for p in hub.pack_files(pack_dir)}


def nothing_installed(cli: Cli, name: str) -> None:
    packs_dir = cli.home / "pa" / "packs"
    assert not (packs_dir / name).exists()
    assert not packs_dir.exists() or not any(p.name.startswith(".pa-pull-") for p in packs_dir.iterdir())


# --------------------------------------------------------------------------- adapters: push and pull


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


def test_pull_suggests_an_eval_command_that_finds_the_pack(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With the pack found through --packs-path, `pa pull` suggested `pa eval NAME@VERSION ...` without it:
    run as printed, that command answered "unknown pack"."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "shelved"))
    cli.ok("push", str(run), "--repo-id", "org/shelved-qwen")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)  # PA_PACKS_PATH holds no `shelved`
    pulled = bare.ok("pull", "org/shelved-qwen", "--to", str(tmp_path / "pulled"), "--packs-path", str(cli.packs))
    assert f"matches the local pack shelved@1.0.0 ({cli.packs / 'shelved'})" in pulled.stdout
    suggested = next(line for line in pulled.stdout.splitlines() if line.startswith("or evaluate it: pa eval "))
    assert suggested.endswith(f"--packs-path {cli.packs}")
    assert "shelved@1.0.0" in bare.ok("show", "shelved@1.0.0", "--packs-path", str(cli.packs)).stdout


def test_pull_names_the_repo_that_publishes_a_missing_pack(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without the pack locally, `pa pull` said "get it with `pa pack pull ORG/NAME@1.0.0`": which ORG/NAME?"""
    source = make_pack(cli.packs, "elsewhere")
    cli.ok("pack", "push", str(source), "--repo-id", "org/elsewhere-pack")
    cli.ok("push", str(make_run(tmp_path / "run", source)), "--repo-id", "org/elsewhere-qwen")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)  # PA_PACKS_PATH holds no `elsewhere`
    pulled = bare.ok("pull", "org/elsewhere-qwen", "--to", str(tmp_path / "pulled"))
    assert "pack elsewhere is not installed locally; get it with `pa pack pull org/elsewhere-pack@1.0.0`" in pulled.stdout
    bare.ok("pack", "pull", "org/elsewhere-pack@1.0.0")  # the command as printed
    assert "matches the local pack elsewhere@1.0.0" in bare.ok("pull", "org/elsewhere-qwen", "--to", str(tmp_path / "pulled")).stdout


@pytest.mark.slow
def test_published_files_hold_no_local_paths(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A run on a local base model published its absolute path (the user's home directory) in
    policyalign.json, adapter_config.json, eval/*/eval.json and the card; pulling it still verifies."""
    from policyalign.tiny import tiny_model_path

    model = tmp_path / "home" / "alice" / "my-base"
    shutil.copytree(tiny_model_path(), model)
    config = tmp_path / "run.yaml"
    config.write_text("n: 2\nsynth_max_new_tokens: 16\nmax_new_tokens: 8\nmax_steps: 2\nbatch_size: 4\n"
                      "eval_limit: 2\neval_max_new_tokens: 8\nprogress: false\n")
    run = tmp_path / "run"
    cli.ok("apply", "root-pack", "--model", str(model), "--out", str(run), "--config", str(config),
           "--push-to", "org/no-paths")
    metadata, _ = card.parse_card(hub_server.read("org/no-paths", "README.md").decode())
    published = ["README.md", *metadata["policyalign"]["files"]]
    assert {"policyalign.json", "adapter_config.json", "eval/before/eval.json", "eval/after/eval.json"} <= set(published)
    for name in published:
        assert str(tmp_path).encode() not in hub_server.read("org/no-paths", name), name
    assert metadata["policyalign"]["base_model"]["id"] == "my-base" and "base_model" not in metadata
    pulled = cli.ok("pull", "org/no-paths@root-pack-v1.0.0", "--to", str(tmp_path / "pulled"))
    assert "verified: pack root-pack@1.0.0" in pulled.stdout and "base model my-base" in pulled.stdout
    again = cli.ok("apply", "root-pack", "--model", str(model), "--out", str(run), "--config", str(config),
                   "--push-to", "org/no-paths")  # resumes: every stage, the push included, is skipped
    assert again.stderr.count("skipped (finished, inputs unchanged)") == 7 and "running" not in again.stderr


def test_pulled_adapter_loads_with_peft(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path / "run", make_pack(cli.packs, "loadable"))
    base_path = json.loads((run / "adapter" / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path or not Path(base_path).is_dir():
        pytest.skip("the test adapter's base model is not on disk")
    cli.ok("push", str(run), "--repo-id", "org/loadable")
    cli.ok("pull", "org/loadable@loadable-v1.0.0", "--to", str(tmp_path / "pulled"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), tmp_path / "pulled")
    assert model.peft_config["default"].r == 4


def test_push_refuses_an_existing_tag_and_revision_overrides(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "retag"))
    cli.ok("push", str(run), "--repo-id", "org/retag")
    again = cli.fails(1, "push", str(run), "--repo-id", "org/retag")
    assert "already has a tag 'retag-v1.0.0'" in again.stderr and "--revision" in again.stderr
    cli.ok("push", str(run), "--repo-id", "org/retag", "--revision", "retag-v1.0.0-rerun")
    assert sorted(hub_server.tags("org/retag")) == ["retag-v1.0.0", "retag-v1.0.0-rerun"]
    bad = cli.fails(2, "push", str(run), "--repo-id", "org/retag", "--revision", "../evil")
    assert "invalid revision tag" in bad.stderr


def test_push_of_a_pack_changed_without_a_version_bump_is_told_to_bump_it(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The taken tag holds retag@1.0.0 with another digest: "publish under --revision X-r2" put two
    policies on the Hub as one version; the fix is a version bump."""
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "bumpme"))), "--repo-id", "org/bumpme")
    edited = make_run(tmp_path / "edited", make_pack(tmp_path / "edited-pack", "bumpme", policy_note="One more rule."))
    taken = cli.fails(1, "push", str(edited), "--repo-id", "org/bumpme")
    assert "already has a tag 'bumpme-v1.0.0'" in taken.stderr
    assert "was trained on bumpme@1.0.0 with digest" in taken.stderr and "changed without a version bump" in taken.stderr
    assert "Bump `version` in pack.yaml" in taken.stderr


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


def test_push_removes_stale_eval_files(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pack = make_pack(cli.packs, "stale")
    cli.ok("push", str(make_run(tmp_path / "with-eval", pack)), "--repo-id", "org/stale")
    cli.ok("push", str(make_run(tmp_path / "no-eval", pack, evals=False)), "--repo-id", "org/stale", "--revision", "second")
    files = hub_server.store.files(hub_server.repo_path("org/stale"), "second")
    assert not any(name.startswith("eval/") for name in files)
    assert "No evaluation yet" in hub_server.read("org/stale", "README.md", "second").decode()


def test_a_failed_push_says_what_the_hub_holds_and_the_same_command_finishes_it(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Hub error while committing or tagging printed the HTTP error twice and no hint, so a user
    whose commit landed untagged could not tell whether to re-run, bump the version or use --revision."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "flaky"))
    hub_server.fail("POST", r"/api/models/org/flaky/commit/.*")
    failed = cli.fails(1, "push", str(run), "--repo-id", "org/flaky")
    assert "nothing is tagged flaky-v1.0.0 yet; run the same command again" in failed.stderr
    assert failed.stderr.count("500 Internal Server Error") == 1
    hub_server.fail("POST", r"/api/models/org/flaky/tag/.*")
    untagged = cli.fails(1, "push", str(run), "--repo-id", "org/flaky")
    assert "the files are on the main branch (commit " in untagged.stderr
    assert "not tagged flaky-v1.0.0; run the same command again to tag them" in untagged.stderr
    assert hub_server.tags("org/flaky") == []
    cli.ok("push", str(run), "--repo-id", "org/flaky")
    assert hub_server.tags("org/flaky") == ["flaky-v1.0.0"]


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


def test_pull_detects_tampered_provenance(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "tamper"))
    repo = "org/tamper"
    cli.ok("push", str(run), "--repo-id", repo)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["pack"]["digest"] = "0" * 64
    hub_server.put_files(repo, {"policyalign.json": json.dumps(provenance).encode()}, "swap the pack digest")

    dest = tmp_path / "pulled"
    result = cli.fails(1, "pull", repo, "--to", str(dest))
    assert "provenance check failed" in result.stderr
    assert "pack digest: README.md `policyalign.pack.digest` says" in result.stderr
    assert f"policyalign.json `pack.digest` says '{'0' * 64}'" in result.stderr
    assert "policyalign.json does not match its sha256" in result.stderr
    assert not dest.exists() and not any(p.name.startswith(".pulled.pa-pull-") for p in tmp_path.iterdir())
    assert cli.fails(1, "pull", repo).stderr.count("provenance check failed") == 1  # HF-cache path checks too

    # the tagged revision is untouched and still verifies
    cli.ok("pull", f"{repo}@tamper-v1.0.0", "--to", str(dest))


def test_pull_detects_swapped_weights(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "weights"))
    cli.ok("push", str(run), "--repo-id", "org/weights")
    weights = bytearray((run / "adapter" / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    hub_server.put_files("org/weights", {"adapter_model.safetensors": bytes(weights)}, "swap weights")
    result = cli.fails(1, "pull", "org/weights", "--to", str(tmp_path / "pulled"))
    assert "adapter_model.safetensors does not match its sha256" in result.stderr


def test_pull_detects_results_edited_in_the_card(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An edited model-index (the results the Hub displays) passed `pa pull` as verified: only the
    file hashes were checked, and eval/after/eval.json still said 0.125."""
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "boast"))), "--repo-id", "org/boast")
    metadata, body = card.parse_card(hub_server.read("org/boast", "README.md").decode())
    metadata["model-index"][0]["results"][0]["metrics"][0]["value"] = 0.01
    hub_server.put_files("org/boast", {"README.md": (card.dump_front_matter(metadata) + body).encode()}, "better numbers")
    result = cli.fails(1, "pull", "org/boast", "--to", str(tmp_path / "pulled"))
    assert "provenance check failed" in result.stderr
    assert "the card says 0.01, eval/after/eval.json says 0.125" in result.stderr
    assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/boast@boast-v1.0.0", "--to", str(tmp_path / "pulled"))  # the pushed card still verifies


def test_pull_refuses_files_the_card_does_not_list(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "extra"))), "--repo-id", "org/extra")
    hub_server.put_files("org/extra", {"chat_template.jinja": b"{{ 'EVIL' }}", "adapter_model.bin": b"junk",
                                       "eval/after/extra.json": b"{}"}, "add files the card does not list")
    dest = tmp_path / "pulled"
    result = cli.fails(1, "pull", "org/extra", "--to", str(dest))
    assert "provenance check failed" in result.stderr
    for name in ("chat_template.jinja", "adapter_model.bin", "eval/after/extra.json"):
        assert f"{name} is in the repository but not listed in the card" in result.stderr, name
    assert "README.md" not in result.stderr and ".gitattributes" not in result.stderr
    assert not dest.exists() and not any(p.name.startswith(".pulled.pa-pull-") for p in tmp_path.iterdir())
    assert "not listed in the card" in cli.fails(1, "pull", "org/extra").stderr  # HF-cache path checks too
    cli.ok("pull", "org/extra@extra-v1.0.0", "--to", str(dest))  # the pushed revision still verifies
    assert not (dest / "chat_template.jinja").exists() and not (dest / "adapter_model.bin").exists()


def _forge(hub_server, repo: str, provenance: bytes, edit_card, message: str) -> None:  # type: ignore[no-untyped-def]
    """Replace policyalign.json and re-sign it in the card, so card and files agree (a forged push)."""
    metadata, body = card.parse_card(hub_server.read(repo, "README.md").decode())
    metadata["policyalign"]["files"]["policyalign.json"] = hashlib.sha256(provenance).hexdigest()
    edit_card(metadata)
    hub_server.put_files(repo, {"policyalign.json": provenance,
                                "README.md": (card.dump_front_matter(metadata) + body).encode()}, message)


def test_pull_requires_the_pack_and_base_model_in_policyalign_json(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "forged"))
    repo = "org/forged"
    cli.ok("push", str(run), "--repo-id", repo)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    del provenance["pack"]["digest"]

    def drop_digest(metadata: dict) -> None:
        del metadata["policyalign"]["pack"]["digest"]

    def drop_pack(metadata: dict) -> None:
        metadata["policyalign"] = {"files": metadata["policyalign"]["files"]}
        metadata.pop("base_model", None)

    cases = [(json.dumps(provenance).encode(), drop_digest, "lacks pack.digest", "policyalign.json:/pack/digest"),
             (b"{}", drop_pack, "lacks pack.name", "policyalign.json:/pack/name"),
             (b"[1]", drop_pack, "must be a JSON object", "policyalign.json")]
    for i, (content, edit, message, where) in enumerate(cases):
        _forge(hub_server, repo, content, edit, f"forgery {i}")
        dest = tmp_path / f"pulled{i}"
        result = cli.fails(1, "pull", repo, "--to", str(dest))
        assert "provenance check failed" in result.stderr and message in result.stderr, result.stderr
        assert f"{repo}@main:{where}" in result.stderr
        assert not dest.exists() and not any(".pa-pull-" in p.name for p in tmp_path.iterdir())
        assert message in cli.fails(1, "pull", repo).stderr  # HF-cache path checks too


def _edit_card(hub_server, repo: str, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    """Edit the card's metadata on the Hub, as its web editor would; the files stay as pushed."""
    metadata, body = card.parse_card(hub_server.read(repo, "README.md").decode())
    edit(metadata)
    hub_server.put_files(repo, {"README.md": (card.dump_front_matter(metadata) + body).encode()}, message)


def test_pull_refuses_a_card_whose_facts_policyalign_json_does_not_record(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The card's base model commit (what `pa pull --pack --model M@COMMIT` chooses by, and what the Hub
    shows) was never compared with policyalign.json's: a card edited on the Hub to another commit, or
    a policyalign.json replaced and re-hashed in the card, was pulled as verified."""
    trained, other = "a" * 40, "b" * 40
    run = make_run(tmp_path / "run", make_pack(cli.packs, "facts"))
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["base_model"]["commit"] = trained
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance, indent=2))
    repo = "org/facts"
    cli.ok("push", str(run), "--repo-id", repo)
    pushed, _ = card.parse_card(hub_server.read(repo, "README.md").decode())
    assert pushed["policyalign"]["base_model"]["commit"] == trained

    def commit(metadata: dict) -> None:
        metadata["policyalign"]["base_model"]["commit"] = other

    def revision(metadata: dict) -> None:
        metadata["policyalign"]["base_model"]["revision"] = "v2"

    def name(metadata: dict) -> None:
        metadata["policyalign"]["base_model"]["name"] = "Qwen2.5-72B"

    def version(metadata: dict) -> None:  # tags and all, so only policyalign.json tells
        metadata["policyalign"]["pack"]["version"] = "1.1.0"
        metadata["tags"] = [t.replace("pack-version:1.0.0", "pack-version:1.1.0") for t in metadata["tags"]]

    cases = [(commit, f"base model commit: README.md `policyalign.base_model.commit` says '{other}', "
                      f"policyalign.json `base_model.commit` says '{trained}'"),
             (revision, "base model revision: README.md `policyalign.base_model.revision` says 'v2', "
                        "policyalign.json `base_model.revision` says '0123456789abcdef'"),
             (name, "base model name: README.md `policyalign.base_model.name` says 'Qwen2.5-72B', "
                    "policyalign.json `base_model.name` says 'Qwen2.5-0.5B'"),
             (version, "pack version: README.md `policyalign.pack.version` says '1.1.0', "
                       "policyalign.json `pack.version` says '1.0.0'")]
    for i, (edit, message) in enumerate(cases):
        _edit_card(hub_server, repo, edit, f"edit {i}")
        dest = tmp_path / f"pulled{i}"
        result = cli.fails(1, "pull", repo, "--to", str(dest))
        text = " ".join(result.stderr.split())
        assert "provenance check failed" in text and message in text, result.stderr
        assert f"ask its publisher to re-publish the run: `pa push RUN_DIR --repo-id {repo} --revision NEW-TAG`" in text
        assert f"hf repos tag list {repo}" in text
        assert not dest.exists() and not any(".pa-pull-" in p.name for p in tmp_path.iterdir())
        assert message in " ".join(cli.fails(1, "pull", repo).stderr.split())  # HF-cache path checks too
        hub_server.put_files(repo, {"README.md": hub_server.read(repo, "README.md", "facts-v1.0.0")}, f"undo {i}")
    cli.ok("pull", repo, "--to", str(tmp_path / "undone"))  # the card as pushed verifies again

    # policyalign.json replaced by one naming other weights, its sha256 re-signed in the card
    provenance["base_model"]["commit"] = other
    _forge(hub_server, repo, json.dumps(provenance).encode(), lambda metadata: None, "other weights")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "forged"))
    assert (f"base model commit: README.md `policyalign.base_model.commit` says '{trained}', "
            f"policyalign.json `base_model.commit` says '{other}'") in " ".join(result.stderr.split())
    cli.ok("pull", f"{repo}@facts-v1.0.0", "--to", str(tmp_path / "tagged"))  # the tag still verifies

    # adapter_config.json pinning other base weights for AutoPeftModelForCausalLM, re-signed in the card
    config = json.loads(hub_server.read(repo, "adapter_config.json", "facts-v1.0.0"))
    config["revision"] = other
    forged = json.dumps(config).encode()
    metadata, body = card.parse_card(hub_server.read(repo, "README.md", "facts-v1.0.0").decode())
    metadata["policyalign"]["files"]["adapter_config.json"] = hashlib.sha256(forged).hexdigest()
    hub_server.put_files(repo, {"adapter_config.json": forged, "README.md": (card.dump_front_matter(metadata) + body).encode(),
                                "policyalign.json": hub_server.read(repo, "policyalign.json", "facts-v1.0.0")}, "pin other")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "pinned"))
    assert (f"base model commit: adapter_config.json `revision` says '{other}', policyalign.json `base_model.commit` "
            f"says '{trained}'") in " ".join(result.stderr.split())


def test_a_card_without_a_base_commit_claims_none(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Facts a card leaves out (cards written before the base commit was recorded) are not disagreements."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "older"))
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())
    provenance["base_model"]["commit"] = "a" * 40
    (run / "adapter" / "policyalign.json").write_text(json.dumps(provenance, indent=2))
    cli.ok("push", str(run), "--repo-id", "org/older")
    _edit_card(hub_server, "org/older", lambda m: m["policyalign"]["base_model"].pop("commit"), "as an older card")
    cli.ok("pull", "org/older", "--to", str(tmp_path / "pulled"))


def test_an_adapter_of_a_child_pack_records_and_reports_its_parents(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A child pack trains on its parents' policy too, but policyalign.json and the card named only the
    child: which version of the parent was inside could not be told from the adapter."""
    registry = Registry([cli.packs])
    child, root = registry.load("child-pack"), registry.load("root-pack")
    run = make_run(tmp_path / "run", cli.packs / "child-pack")
    parents = [{"name": "root-pack", "version": "1.0.0", "digest": root.digest}]
    assert json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]["parents"] == parents
    cli.ok("push", str(run), "--repo-id", "org/child-qwen")
    readme = hub_server.read("org/child-qwen", "README.md").decode()
    metadata, body = card.parse_card(readme)
    assert metadata["policyalign"]["pack"] == {"name": "child-pack", "version": "1.0.0", "digest": child.digest,
                                               "parents": parents}
    assert f"| Extends | root-pack 1.0.0 (digest {root.digest}) |" in body

    verified = f"verified: pack child-pack@1.0.0 (digest {child.digest[:12]}…), extends root-pack@1.0.0 (digest {root.digest[:12]}…)"
    pulled = cli.ok("pull", "org/child-qwen", "--to", str(tmp_path / "pulled"))
    assert verified in pulled.stdout
    assert f"which extends root-pack@1.0.0 (digest {root.digest[:12]}…)" in pulled.stdout
    # --model: other tests publish child-pack adapters of tiny on the same loopback Hub
    chosen = cli.ok("pull", "--pack", "child-pack", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--to", str(tmp_path / "chosen"))
    assert "best match: org/child-qwen@child-pack-v1.0.0  pack child-pack@1.0.0" in chosen.stdout
    assert "extends root-pack@1.0.0  base Qwen/Qwen2.5-0.5B-Instruct" in chosen.stdout and verified in chosen.stdout

    def parent_version(metadata: dict) -> None:
        metadata["policyalign"]["pack"]["parents"][0]["version"] = "1.9.0"

    _edit_card(hub_server, "org/child-qwen", parent_version, "claim a newer parent")
    refused = " ".join(cli.fails(1, "pull", "org/child-qwen", "--to", str(tmp_path / "edited")).stderr.split())
    assert ("pack parents[0] version: README.md `policyalign.pack.parents[0].version` says '1.9.0', "
            "policyalign.json `pack.parents[0].version` says '1.0.0'") in refused

    # the local parent moved on (same child version): the warning names the parent it was trained with
    shutil.rmtree(cli.packs / "root-pack")
    newer = load_pack(make_pack(cli.packs, "root-pack", version="1.1.0"))
    drifted = cli.ok("pull", "org/child-qwen@child-pack-v1.0.0", "--to", str(tmp_path / "drifted"))
    warning = " ".join(drifted.stderr.split())
    assert (f"it was trained with root-pack@1.0.0 (digest {root.digest[:12]}…) inside, the local pack extends "
            f"root-pack@1.1.0 (digest {newer.digest[:12]}…, {cli.packs / 'root-pack'})") in warning
    assert verified in drifted.stdout  # what was inside is still told, from the adapter's own record


def test_pull_warns_when_the_local_pack_differs(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pack = make_pack(cli.packs, "drifty")
    cli.ok("push", str(make_run(tmp_path / "run", pack)), "--repo-id", "org/drifty")
    with (pack / "policy.md").open("a") as handle:
        handle.write("\nA local edit without a version bump.\n")
    same_version = cli.ok("pull", "org/drifty", "--to", str(tmp_path / "a"))
    assert "warning:" in same_version.stderr and "same version, different content" in same_version.stderr
    shutil.rmtree(pack)
    make_pack(cli.packs, "drifty", version="1.1.0")
    newer = cli.ok("pull", "org/drifty", "--to", str(tmp_path / "b"))
    assert "trained on drifty@1.0.0, but the local pack is at version 1.1.0" in newer.stderr
    shutil.rmtree(cli.packs / "drifty")
    absent = cli.ok("pull", "org/drifty", "--to", str(tmp_path / "c"))
    assert "not installed locally" in absent.stdout


def test_pull_suggests_evaluating_the_pack_version_it_was_trained_on(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With the trained-on version and a newer one installed, `pa pull` said it matched the local
    pack and suggested `pa eval NAME ...`, which evaluates the newest version instead. Its commands
    also loaded the base model at `main`, not at the revision the adapter was trained on."""
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "versioned"))), "--repo-id", "org/versioned")
    make_pack(tmp_path / "newer", "versioned", version="1.1.0")
    dest = tmp_path / "pulled dir"
    pulled = cli.ok("pull", "org/versioned", "--to", str(dest), "--packs-path", str(tmp_path / "newer"))
    assert "matches the local pack versioned@1.0.0" in pulled.stdout
    assert f"pa eval versioned@1.0.0 --model Qwen/Qwen2.5-0.5B-Instruct@0123456789abcdef --adapter '{dest}'" in pulled.stdout
    assert "from_pretrained('Qwen/Qwen2.5-0.5B-Instruct', revision='0123456789abcdef')" in pulled.stdout


def test_pull_refuses_to_overwrite_an_unrelated_directory(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "careful"))), "--repo-id", "org/careful")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = cli.fails(1, "pull", "org/careful", "--to", str(precious))
    assert "not a previously pulled adapter" in result.stderr and (precious / "notes.txt").read_text() == "keep me"
    cli.ok("pull", "org/careful", "--to", str(tmp_path / "again"))
    cli.ok("pull", "org/careful", "--to", str(tmp_path / "again"))  # re-pulling over a pulled adapter is fine


def test_pull_errors_are_clear(cli: Cli) -> None:
    assert "not found" in cli.fails(1, "pull", "org/does-not-exist").stderr
    assert "invalid repository id" in cli.fails(2, "pull", "not-a-repo-id").stderr
    assert "either ORG/NAME" in cli.fails(2, "pull").stderr


# --------------------------------------------------------------------------- adapters: find by pack


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
        cli.ok("push", str(make_run(tmp_path / f"run{i}", pack, base_id=base_id, base_name=base_name)), "--repo-id", repo)

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


def test_pull_by_pack_takes_a_version_range(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--pack NAME@VERSION` / `NAME@^1`, as a pack is named everywhere else: the whole spec was searched
    as the tag `pack:ranged@1.0.0`, so no adapter was ever found ("nobody has published")."""
    old = make_pack(tmp_path / "old", "ranged")
    new = make_pack(cli.packs, "ranged", version="1.1.0")
    for pack in (old, new):
        cli.ok("push", str(make_run(tmp_path / f"run-{pack.parent.name}", pack)), "--repo-id", "org/ranged")
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
    cli.ok("push", str(make_run(tmp_path / "run", make_pack(cli.packs, "findme"))), "--repo-id", "org/good-findme")
    good_pack = {"name": "findme", "version": "1.0.0", "digest": "d" * 64}
    good_base = {"id": "Qwen/Qwen2.5-0.5B-Instruct", "name": "Qwen2.5-0.5B"}
    hostile = {"base-is-a-string": {"pack": {"name": "findme", "version": "1.0.0"}, "base_model": "Qwen/x"},
               "pack-is-a-list": {"pack": ["findme"], "base_model": good_base},
               "version-is-a-number": {"pack": {**good_pack, "version": 1}, "base_model": good_base},
               "digest-is-a-dict": {"pack": {**good_pack, "digest": {"a": 1}}, "base_model": good_base},
               "id-is-missing": {"pack": good_pack, "base_model": {"name": "Qwen2.5-0.5B"}},
               "control-characters": {"pack": {**good_pack, "version": "1.0.0\x1b[2J"}, "base_model": good_base},
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


def _candidate(repo: str, version: str, digest: str = "d", base: str = "Qwen/Qwen2.5-0.5B-Instruct",
               revision: str = "", when: str = "2026-01-01") -> hub.Candidate:
    return hub.Candidate(repo, revision or f"p-v{version}", "c" * 40, "p", version, digest, base, base, when)


def test_choose_adapter_rules() -> None:
    pool = [_candidate("o/a", "1.0.0"), _candidate("o/b", "1.2.0", when="2026-01-01"),
            _candidate("o/c", "1.2.0", when="2026-02-01"), _candidate("o/d", "1.2.0", revision="main", when="2026-03-01")]
    assert hub.choose_adapter(pool, "p").repo_id == "o/c"  # no local pack: newest version, tags before main, newest
    assert hub.choose_adapter(pool, "p", local_version="1.0.0").repo_id == "o/a"
    exact = [_candidate("o/x", "1.0.0", digest="other"), _candidate("o/y", "1.0.0", digest="mine", when="2000")]
    assert hub.choose_adapter(exact, "p", local_version="1.0.0", local_digest="mine").repo_id == "o/y"
    with pytest.raises(HubError, match="no published adapter matches"):
        hub.choose_adapter(pool, "p", local_version="9.9.9")
    assert "qwen/qwen2.5-7b-instruct" in hub.model_names("Qwen2.5-7B")


def test_local_pack_differing_only_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    """A child's digest composes its parents': an edited parent makes `pa pull` warn about the
    child, whose own files are untouched, so the warning must point at the parent too."""
    shipped = Registry([REPO_ROOT / "packs"])
    trained = load_pack(REPO_ROOT / "packs" / "medical", registry=shipped)
    shutil.copytree(REPO_ROOT / "packs", tmp_path / "packs")
    harmful = tmp_path / "packs" / "general" / "eval" / "harmful.jsonl"
    harmful.write_text(harmful.read_text().replace("subway", "train station", 1))
    record = {"name": "medical", "version": "1.0.0", "digest": trained.digest}
    warnings, _ = hub.compare_local_pack(record, Registry([tmp_path / "packs"]))
    assert len(warnings) == 1 and "same version, different content" in warnings[0]
    assert f"in a pack it extends: general@1.0.0 ({tmp_path / 'packs' / 'general'})" in warnings[0]


def test_local_pack_differing_in_a_recorded_parent_names_the_versions_trained_with(tmp_path: Path) -> None:
    """With the parents policyalign.json records, `pa pull` names the parent that differs and what was
    inside (a bare "in a pack it extends" left the user to compare digests), or clears them all."""
    from policyalign.pack import parent_records

    shipped = Registry([REPO_ROOT / "packs"])
    trained = load_pack(REPO_ROOT / "packs" / "agent-tools", registry=shipped)
    general = load_pack(REPO_ROOT / "packs" / "general", registry=shipped)
    record = {"name": "agent-tools", "version": "1.0.0", "digest": trained.digest, "parents": parent_records(trained)}
    assert record["parents"] == [{"name": "general", "version": "1.0.0", "digest": general.digest}]
    _, notes = hub.compare_local_pack(record, shipped)
    assert notes == [f"matches the local pack agent-tools@1.0.0 ({REPO_ROOT / 'packs' / 'agent-tools'}), "
                     f"which extends general@1.0.0 (digest {general.digest[:12]}…)"]

    shutil.copytree(REPO_ROOT / "packs", tmp_path / "packs")
    harmful = tmp_path / "packs" / "general" / "eval" / "harmful.jsonl"
    harmful.write_text(harmful.read_text().replace("subway", "train station", 1))
    edited = load_pack(tmp_path / "packs" / "general")
    warnings, _ = hub.compare_local_pack(record, Registry([tmp_path / "packs"]))
    assert len(warnings) == 1 and (f"it was trained with general@1.0.0 (digest {general.digest[:12]}…) inside, the "
                                   f"local pack extends general@1.0.0 (digest {edited.digest[:12]}…, "
                                   f"{tmp_path / 'packs' / 'general'})") in warnings[0]

    harmful.write_text((REPO_ROOT / "packs" / "general" / "eval" / "harmful.jsonl").read_text())
    with (tmp_path / "packs" / "agent-tools" / "policy.md").open("a") as handle:
        handle.write("\nA local edit without a version bump.\n")
    warnings, _ = hub.compare_local_pack(record, Registry([tmp_path / "packs"]))
    assert "(in its own files: the packs it extends are the ones it was trained with)" in warnings[0]


def test_choose_adapter_honours_a_pinned_base_commit() -> None:
    """`--model M@COMMIT` picks the adapter trained on that commit of M, not a newer one trained on
    other weights after `main` moved (which the pin was given to avoid)."""
    old, new = "a" * 40, "b" * 40
    pool = [dataclasses.replace(_candidate("o/old", "1.0.0", when="2026-01-01"), base_commit=old),
            dataclasses.replace(_candidate("o/new", "1.0.0", when="2026-02-01"), base_commit=new)]
    base = "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub.choose_adapter(pool, "p", model=base).repo_id == "o/new"
    assert hub.choose_adapter(pool, "p", model=f"{base}@{old}").repo_id == "o/old"
    assert hub.choose_adapter(pool, "p", model=f"{base}@{old[:12]}").repo_id == "o/old"
    with pytest.raises(HubError, match="no published adapter matches") as caught:
        hub.choose_adapter(pool, "p", model=f"{base}@{'c' * 40}")
    assert f"base {base}@{old[:12]}" in str(caught.value.problem.hint)  # the candidates show what they were trained on


# --------------------------------------------------------------------------- packs


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


def test_pack_pull_of_another_version_says_which_one_it_replaced(cli: Cli, tmp_path: Path) -> None:
    """The install directory holds one version per pack: pulling 1.0.0 over an installed 1.1.0 removed
    it without a word (a child pinned to ^1.1 then stops resolving)."""
    for version in ("1.0.0", "1.1.0"):
        cli.ok("pack", "push", str(make_pack(tmp_path / version, "versioned", version=version)), "--repo-id", "org/versioned")
    assert "replaced" not in cli.ok("pack", "pull", "org/versioned@1.1.0").stderr
    older = cli.ok("pack", "pull", "org/versioned@1.0.0")
    assert "installed versioned@1.0.0" in older.stdout and "replaced versioned@1.1.0" in older.stderr
    assert "replaced" not in cli.ok("pack", "pull", "org/versioned@1.0.0").stderr  # the same version again


def test_pack_pull_of_a_range_installs_the_highest_published_version_in_it(cli: Cli, tmp_path: Path) -> None:
    """Every other pack argument takes `name@^1`; `pa pack pull ORG/NAME@^1` answered "no version '^1' is
    published" and listed the very versions the range holds."""
    for version in ("1.0.0", "1.1.0", "2.0.0", "10.0.0"):
        cli.ok("pack", "push", str(make_pack(tmp_path / version, "ranged", version=version)), "--repo-id", "org/ranged")
    pulled = cli.ok("pack", "pull", "org/ranged@^1")
    assert "installed ranged@1.1.0" in pulled.stdout and "org/ranged@v1.1.0" in pulled.stdout
    assert "installed ranged@1.0.0" in cli.ok("pack", "pull", "org/ranged@>=1.0,<1.1").stdout
    assert "installed ranged@1.1.0" in cli.ok("pack", "pull", "org/ranged@~1.1").stdout
    assert "installed ranged@10.0.0" in cli.ok("pack", "pull", "org/ranged").stdout  # none: the last pushed
    failed = cli.fails(1, "pack", "pull", "org/ranged@^3").stderr
    assert "no version matches '^3'" in failed and "1.0.0, 1.1.0, 2.0.0, 10.0.0" in failed  # in version order


def test_pack_with_parents_pulls_when_parents_are_local(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.ok("pack", "push", str(cli.packs / "child-pack"), "--repo-id", "org/child-pack")
    cli.ok("pack", "pull", "org/child-pack@1.0.0", "--to", str(tmp_path / "installed"))
    registry = Registry.default(extra=[cli.packs])
    assert load_pack(tmp_path / "installed" / "child-pack", registry=registry).digest == \
        load_pack(cli.packs / "child-pack", registry=registry).digest


def test_pack_pull_finds_parents_where_it_installs_and_says_how_to_get_missing_ones(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, tmp_path: Path) -> None:
    """`pa pack pull --to DIR` refused a pack whose parent sat in DIR, where it would live once installed
    (it looked beside its staging directory instead); `pa pack pull` took no --packs-path; and with the
    parent nowhere, the hint was "known packs: child-pack": neither where it looked nor the fix."""
    cli.ok("pack", "push", str(cli.packs / "child-pack"), "--repo-id", "org/child-elsewhere")
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


def test_a_taken_tag_gets_the_fix_for_what_is_pushed(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One hint for both: `pa push` of a retrained adapter was told to "bump the pack version", and
    `pa pack push` of changed files to take another tag (two different packs published as one version)."""
    source = make_pack(cli.packs, "taken")
    cli.ok("pack", "push", str(source), "--repo-id", "org/taken-pack")
    (source / "policy.md").write_text((source / "policy.md").read_text() + "\nOne more rule.\n")
    pack_again = " ".join(cli.fails(1, "pack", "push", str(source), "--repo-id", "org/taken-pack").stderr.split())
    assert "bump `version` in pack.yaml (with its CHANGELOG.md entry)" in pack_again and "--revision" not in pack_again

    run = make_run(tmp_path / "run", make_pack(cli.packs, "retaken"))
    cli.ok("push", str(run), "--repo-id", "org/retaken")
    adapter_again = " ".join(cli.fails(1, "push", str(run), "--repo-id", "org/retaken").stderr.split())
    assert "new tag with --revision (e.g. retaken-v1.0.0-r2)" in adapter_again and "pack version" not in adapter_again


def test_invalid_pack_is_not_pushed(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    broken = make_pack(cli.packs, "broken")
    (broken / "CHANGELOG.md").write_text("# nothing here\n")
    (broken / "pack.yaml").write_text((broken / "pack.yaml").read_text().replace("action: guide", "action: maybe"))
    result = cli.fails(2, "pack", "push", str(broken), "--repo-id", "org/broken")
    assert "2 problems found" in result.stderr and "no entry for version 1.0.0" in result.stderr
    assert not hub_server.store.exists("dataset", "org/broken")


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


def test_pack_pull_rejects_oversized_files(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = pack_bytes(make_pack(tmp_path / "src", "bloated"))
    files["notes.txt"] = b"x" * (3 * 1024 * 1024)
    publish_raw_pack(hub_server, "org/bloated", "bloated", files)
    result = cli.fails(2, "pack", "pull", "org/bloated@1.0.0")
    assert "notes.txt" in result.stderr and "over the 2097152-byte limit" in result.stderr
    nothing_installed(cli, "bloated")


def test_pack_pull_rejects_tampered_files(cli: Cli, hub_server) -> None:  # type: ignore[no-untyped-def]
    cli.ok("pack", "push", str(make_pack(cli.packs, "edited")), "--repo-id", "org/edited")
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
        with pytest.raises(hub._TooLarge):
            hub._download_capped(f"http://127.0.0.1:{server.server_address[1]}/f", tmp_path / "f", 4096, None)
        assert (tmp_path / "f").stat().st_size <= 4096 + 65536
    finally:
        server.shutdown()
        server.server_close()


def test_safe_paths() -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "C:/x", "a\\..\\x", "./a", ""):
        assert not hub._is_safe_relpath(bad), bad
    assert hub._is_safe_relpath("eval/harmful.jsonl")


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


# --------------------------------------------------------------------------- API used by `pa apply --push-to`


def test_push_run_api(hub_server, make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    packs = tmp_path / "packs"
    run = make_run(tmp_path / "run", make_pack(packs, "apiuse"))
    url = hub.push_run(run, "org/apiuse", private=True, revision="apiuse-custom")
    assert url == f"{hub_server.endpoint}/org/apiuse/tree/apiuse-custom"
    assert hub_server.store.meta("model", "org/apiuse")["private"] is True
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        hub.push_run(run, "org/apiuse")


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


# --------------------------------------------------------------------------- the real Hub (opt-in)


@pytest.mark.online
@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("PA_ONLINE_TESTS") == "1"),
                    reason="needs HF_TOKEN and PA_ONLINE_TESTS=1")
def test_real_hub_round_trip(make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    api = hub._api(os.environ["HF_TOKEN"])
    repo = f"{api.whoami()['name']}/policyalign-test-{uuid.uuid4().hex[:8]}"
    run = make_run(tmp_path / "run", make_pack(tmp_path / "packs", "online"))
    try:
        url = hub.push_run(run, repo, private=True)
        assert url.endswith("/tree/online-v1.0.0")
        result = hub.pull_adapter(f"{repo}@online-v1.0.0", to=tmp_path / "pulled")
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
