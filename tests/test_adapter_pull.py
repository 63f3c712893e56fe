"""Pulling an adapter and verifying its provenance (policyalign/adapter_pull.py): `pa pull ORG/NAME`,
tampered cards and files, the comparison with the local pack; against the loopback Hub
(tests/hubserver.py, run through tests/hubcli.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hubcli import DEFAULT, REPO_ROOT, Cli, make_pack
from policyalign import adapter_pull, card
from policyalign.pack import load_pack
from policyalign.registry import Registry
from policyalign.trainer import outside_pattern


def test_pull_suggests_an_eval_command_that_finds_the_pack(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With the pack found through --packs-path, `pa pull` suggested `pa eval NAME@VERSION ...` without it:
    run as printed, that command answered "unknown pack"."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "shelved"))
    cli.published(run, "org/shelved-qwen")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)  # PA_PACKS_PATH holds no `shelved`
    pulled = bare.ok("pull", "org/shelved-qwen", "--to", str(tmp_path / "pulled"), "--packs-path", str(cli.packs))
    assert f"matches the local pack shelved@1.0.0 ({cli.packs / 'shelved'})" in pulled.stdout
    suggested = next(line for line in pulled.stdout.splitlines() if line.startswith("or evaluate it: pa eval "))
    assert suggested.endswith(f"--packs-path {cli.packs}")
    assert "shelved@1.0.0" in bare.ok("show", "shelved@1.0.0", "--packs-path", str(cli.packs)).stdout


def test_pull_names_the_repo_that_publishes_a_missing_pack(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without the pack locally, `pa pull` said "get it with `pa pack pull ORG/NAME@1.0.0`": which ORG/NAME? Also
    with a repository on the Hub whose card's YAML cannot be built (test_pack_hub leaves one): the loopback Hub's
    listing failed for it, and this test failed when run after that one."""
    hub_server.store.create("dataset", "org/elsewhere-baddate", False)
    hub_server.put_files("org/elsewhere-baddate", {"README.md": b"---\nx: 2001-13-45\n---\n"}, repo_type="dataset")
    source = make_pack(cli.packs, "elsewhere")
    cli.pack_published(source, "org/elsewhere-pack")
    cli.published(make_run(tmp_path / "run", source), "org/elsewhere-qwen")
    (tmp_path / "empty").mkdir()
    bare = Cli(cli.hub, cli.home, tmp_path / "empty", cli.cwd)  # PA_PACKS_PATH holds no `elsewhere`
    pulled = bare.ok("pull", "org/elsewhere-qwen", "--to", str(tmp_path / "pulled"))
    assert "pack elsewhere is not installed locally; get it with `pa pack pull org/elsewhere-pack@1.0.0`" in pulled.stdout
    bare.ok("pack", "pull", "org/elsewhere-pack@1.0.0")  # the command as printed
    assert "matches the local pack elsewhere@1.0.0" in bare.ok("pull", "org/elsewhere-qwen", "--to", str(tmp_path / "pulled")).stdout


def test_pull_names_how_to_get_the_pack_version_it_was_trained_on(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With another version of the pack installed, `pa pull` warned that the versions differ and named no
    fix (only a pack not installed at all got the `pa pack pull` command), while the `pa eval NAME@VERSION`
    it printed next failed with "no version matches" until that version was installed."""
    published = make_pack(tmp_path / "published", "stepped", version="1.1.0")
    cli.pack_published(published, "org/stepped-pack")
    cli.published(make_run(tmp_path / "run", published), "org/stepped-qwen")
    make_pack(cli.packs, "stepped")  # only 1.0.0 is installed
    pulled = cli.ok("pull", "org/stepped-qwen", "--to", str(tmp_path / "pulled"))
    assert ("trained on stepped@1.1.0, but the local pack is at version 1.0.0; get stepped@1.1.0 with "
            "`pa pack pull org/stepped-pack@1.1.0`") in pulled.stderr
    cli.ok("pack", "pull", "org/stepped-pack@1.1.0")  # the command as printed
    assert "matches the local pack stepped@1.1.0" in cli.ok("pull", "org/stepped-qwen", "--to", str(tmp_path / "pulled")).stdout


def test_pulled_adapter_loads_with_peft(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path / "run", make_pack(cli.packs, "loadable"))
    base_path = json.loads((run / "adapter" / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path or not Path(base_path).is_dir():
        pytest.skip("the test adapter's base model is not on disk")
    cli.published(run, "org/loadable")
    cli.ok("pull", "org/loadable@loadable-v1.0.0", "--to", str(tmp_path / "pulled"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), tmp_path / "pulled")
    assert model.peft_config["default"].r == 4



# --------------------------------------------------------------------------- provenance


def test_pull_detects_tampered_provenance(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "run", make_pack(cli.packs, "tamper"))
    repo = "org/tamper"
    cli.published(run, repo)
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
    cli.published(run, "org/weights")
    weights = bytearray((run / "adapter" / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    hub_server.put_files("org/weights", {"adapter_model.safetensors": bytes(weights)}, "swap weights")
    result = cli.fails(1, "pull", "org/weights", "--to", str(tmp_path / "pulled"))
    assert "adapter_model.safetensors does not match its sha256" in result.stderr


def test_pull_detects_results_edited_in_the_card(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An edited model-index (the results the Hub displays) passed `pa pull` as verified: only the
    file hashes were checked, and eval/after/eval.json still said 0.125."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "boast")), "org/boast")
    metadata, body = card.parse_card(hub_server.read("org/boast", "README.md").decode())
    metadata["model-index"][0]["results"][0]["metrics"][0]["value"] = 0.01
    hub_server.put_files("org/boast", {"README.md": (card.dump_front_matter(metadata) + body).encode()}, "better numbers")
    result = cli.fails(1, "pull", "org/boast", "--to", str(tmp_path / "pulled"))
    assert "provenance check failed" in result.stderr
    assert "the card says 0.01, eval/after/eval.json says 0.125" in result.stderr
    assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/boast@boast-v1.0.0", "--to", str(tmp_path / "pulled"))  # the pushed card still verifies


def test_pull_detects_the_cards_text_edited(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The card's text repeats the pack digest and the rates (and says "`pa pull` checks the digest
    above"), but only its metadata was checked: a digest or a rate edited in the text passed as verified."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "prose"))
    cli.published(run, "org/prose")
    digest = json.loads((run / "adapter" / "policyalign.json").read_text())["pack"]["digest"]
    metadata, body = card.parse_card(hub_server.read("org/prose", "README.md").decode())
    assert f"| Digest (sha256) | {digest} |" in body
    edited = card.dump_front_matter(metadata) + body.replace(digest, "0" * 64)
    hub_server.put_files("org/prose", {"README.md": edited.encode()}, "another digest in the text")
    result = cli.fails(1, "pull", "org/prose", "--to", str(tmp_path / "pulled"))
    assert "README.md's text below its metadata does not match its sha256" in result.stderr
    assert not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/prose@prose-v1.0.0", "--to", str(tmp_path / "pulled"))  # the pushed card still verifies
    del metadata["policyalign"]["body_sha256"]  # a card pushed before the text was hashed claims nothing about it
    hub_server.put_files("org/prose", {"README.md": (card.dump_front_matter(metadata) + body).encode()}, "older card")
    cli.ok("pull", "org/prose", "--to", str(tmp_path / "pulled"))


def test_pull_refuses_files_the_card_does_not_list(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "extra")), "org/extra")
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



def test_pull_refuses_files_the_card_does_not_list_before_downloading_them(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    """A repository holding files its card does not list (a pickle `*.pt`, `*.pkl`, any size) was downloaded
    whole, into --to's staging directory or the Hugging Face cache, and only then refused: a hostile repo made
    `pa pull` fetch gigabytes. The repository's listing is checked against the card before any download."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "pickled")), "org/pickled")
    hub_server.put_files("org/pickled", {"training_args.pkl": b"\x80\x04junk", "weights/extra.pt": b"\0" * 65536},
                         "add pickles the card does not list")
    hub_server.requests.clear()
    for target in (("--to", str(tmp_path / "pulled")), ()):
        result = cli.fails(1, "pull", "org/pickled", *target)
        for name in ("training_args.pkl", "weights/extra.pt"):
            assert f"{name} is in the repository but not listed in the card" in result.stderr, result.stderr
    assert not [path for method, path, _ in hub_server.requests if "/resolve/" in path], hub_server.requests
    assert not (tmp_path / "pulled").exists()


def test_pull_refuses_names_not_every_system_can_write_before_downloading(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    """A repository whose card lists `notes/CON.json` (a Windows device), `notes.` (Windows drops the dot) and
    `readme.md` beside `README.md` (one file on macOS and Windows: the second download failed with a bare
    "File exists"): refused before any download, naming each; on Linux it installed, unlike elsewhere."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "devices")), "org/adapter-devices")
    added = {"notes/CON.json": b"{}", "notes.": b"x", "readme.md": b"# other\n", "notes/a\x1b]0;x\x07.json": b"{}"}
    metadata, body = card.parse_card(hub_server.read("org/adapter-devices", "README.md").decode())
    metadata["policyalign"]["files"].update({name: hashlib.sha256(data).hexdigest() for name, data in added.items()})
    hub_server.put_files("org/adapter-devices", {**added, "README.md": (card.dump_front_matter(metadata) + body).encode()},
                         "names Windows and macOS cannot hold")
    hub_server.requests.clear()
    for target in (("--to", str(tmp_path / "pulled")), ()):
        result = cli.fails(1, "pull", "org/adapter-devices", *target)
        assert "org/adapter-devices@main: the adapter cannot be installed on every system" in result.stderr, result.stderr
        assert "notes/CON.json: `CON.json` is a Windows device name" in result.stderr
        assert "notes.: `notes.` ends in a dot, which Windows drops" in result.stderr
        assert "README.md and readme.md differ only in case" in result.stderr
        assert ("notes/a\\x1b]0;x\\x07.json: `a\\x1b]0;x\\x07.json` holds the control character U+001B"
                in result.stderr), result.stderr
        assert "rename the file(s) in the repository" in result.stderr
    assert not [path for method, path, _ in hub_server.requests if "/resolve/" in path], hub_server.requests
    assert not (tmp_path / "pulled").exists()


class LimitCli(Cli):
    """`pa` with PA_PULL_MAX_WEIGHTS set to `limit` (and HF_HUB_OFFLINE=1 when `offline`)."""

    limit = ""
    offline = False

    def env(self, token: object = DEFAULT) -> dict[str, str]:
        return {**super().env(token), "PA_PULL_MAX_WEIGHTS": self.limit, **({"HF_HUB_OFFLINE": "1"} if self.offline else {})}


def _with_limit(cli: Cli, limit: str, offline: bool = False) -> LimitCli:
    limited = LimitCli(cli.hub, cli.home, cli.packs, cli.cwd)
    limited.limit, limited.offline = limit, offline
    return limited


def test_pull_refuses_files_over_their_size_limit_before_downloading(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    """A card and a policyalign.json of any size were downloaded and read whole to be parsed: a repository could
    make `pa pull` fetch and parse gigabytes. Files over their limit are refused on the Hub's listing, before any
    download, naming the repository, each file, its size and the limit (padded JSON is still valid JSON)."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "bloated")), "org/bloated")
    provenance = hub_server.read("org/bloated", "policyalign.json") + b" " * (4 * 1024 * 1024)
    metadata, body = card.parse_card(hub_server.read("org/bloated", "README.md").decode())
    metadata["policyalign"]["files"]["policyalign.json"] = hashlib.sha256(provenance).hexdigest()
    readme = (card.dump_front_matter(metadata) + body + "padding\n" * (128 * 1024)).encode()  # olah's card regex is
    # quadratic in a run of whitespace
    hub_server.put_files("org/bloated", {"policyalign.json": provenance, "README.md": readme}, "pad the card and JSON")
    hub_server.requests.clear()
    for target in (("--to", str(tmp_path / "pulled")), ()):
        said = " ".join(cli.fails(1, "pull", "org/bloated", *target).stderr.split())
        assert "org/bloated@main: files too large to pull" in said, said
        assert f"README.md is {len(readme)} bytes, over the 1048576-byte limit for a model card" in said
        assert f"policyalign.json is {len(provenance)} bytes, over the 4194304-byte limit for a JSON file" in said
        assert "no adapter `pa push` publishes holds such a file" in said and "PA_PULL_MAX_WEIGHTS" not in said
    assert not [path for method, path, _ in hub_server.requests if "/resolve/" in path], hub_server.requests
    assert not (tmp_path / "pulled").exists()


def test_pull_refuses_weights_over_a_limit_the_user_can_raise(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Adapter weights had no limit at all. Over PA_PULL_MAX_WEIGHTS (default 16 GiB) they are refused before the
    download, with the variable to raise it by (offline, the copy in the Hugging Face cache alike); a bad value is
    an input error before the Hub is asked."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "heavy"))
    cli.published(run, "org/heavy")
    size = (run / "adapter" / "adapter_model.safetensors").stat().st_size
    hub_server.requests.clear()
    refused = " ".join(_with_limit(cli, "4KiB").fails(1, "pull", "org/heavy", "--to", str(tmp_path / "pulled")).stderr.split())
    assert f"adapter_model.safetensors is {size} bytes, over the 4096-byte limit for adapter weights" in refused
    assert "raise their limit: PA_PULL_MAX_WEIGHTS=64GiB pa pull org/heavy@main" in refused
    assert "do not use this revision" not in refused
    assert not [path for method, path, _ in hub_server.requests if "/resolve/" in path], hub_server.requests
    _with_limit(cli, "1 MiB").ok("pull", "org/heavy", "--to", str(tmp_path / "pulled"))
    _with_limit(cli, str(size)).ok("pull", "org/heavy", "--to", str(tmp_path / "pulled"))
    bad = _with_limit(cli, "lots").fails(2, "pull", "org/heavy")
    assert "PA_PULL_MAX_WEIGHTS='lots' is not a size" in bad.stderr and "PA_PULL_MAX_WEIGHTS=32GiB" in bad.stderr
    cli.ok("pull", "org/heavy")  # into the Hugging Face cache
    offline = " ".join(_with_limit(cli, "4KiB", offline=True).fails(1, "pull", "org/heavy").stderr.split())
    assert f"adapter_model.safetensors is {size} bytes, over the 4096-byte limit for adapter weights" in offline
    bad = _with_limit(cli, "lots", offline=True).fails(2, "pull", "org/heavy")
    assert "PA_PULL_MAX_WEIGHTS='lots' is not a size" in bad.stderr and "PA_PULL_MAX_WEIGHTS=32GiB" in bad.stderr


def test_pull_refuses_files_whose_size_is_not_the_one_the_hub_listed(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    """The limits are checked on the sizes the Hub's listing gives: a server understating the weights in it got
    past them. Each downloaded file must have its listed size, else the pull is refused and nothing kept."""
    import urllib.request

    run = make_run(tmp_path / "run", make_pack(cli.packs, "understated"))
    cli.published(run, "org/understated")
    commit = hub_server.store.rev(hub_server.repo_path("org/understated"), "main")
    tree = f"/api/models/org/understated/tree/{commit}"
    with urllib.request.urlopen(f"{hub_server.endpoint}{tree}?recursive=true") as response:
        listing = json.loads(response.read())
    weights = next(entry for entry in listing if entry["path"] == "adapter_model.safetensors")
    real = weights["size"]
    weights["size"] = weights["lfs"]["size"] = 100
    hub_server.forge(tree, listing)
    try:
        for target in (("--to", str(tmp_path / "pulled")), ()):
            said = " ".join(_with_limit(cli, "1KiB").fails(1, "pull", "org/understated", *target).stderr.split())
            assert "org/understated@main: the download does not match the Hub's listing" in said, said
            assert f"adapter_model.safetensors is {real} bytes, the Hub's listing said 100" in said
    finally:
        hub_server.forged.pop(tree)
    assert not (tmp_path / "pulled").exists()
    assert not list((cli.home / "hf").rglob("adapter_model.safetensors"))


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
    cli.published(run, repo)
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



def test_pull_refuses_an_adapter_config_whose_module_patterns_are_not_plain_names(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                                 tmp_path: Path) -> None:
    """PEFT matches a string `target_modules` (and `exclude_modules`, and `rank_pattern`'s keys) as a regex against
    every module name: a forged adapter_config.json holding `(.*.*)*X`, its hash in the card, verified, and
    `pa eval --adapter` then hung in the regex engine (a 30-character module name takes years). Only the plain
    module names, and the exclusion pattern, that `pa distill` writes are accepted."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "redos"))
    cli.published(run, "org/redos")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    for i, (key, value) in enumerate([("target_modules", "(.*.*)*X"), ("exclude_modules", ["(a+)+$"]),
                                      ("rank_pattern", {"(.*)*q": 4})]):
        forged = json.dumps({**config, key: value}).encode()
        metadata, body = card.parse_card(hub_server.read("org/redos", "README.md", "redos-v1.0.0").decode())
        metadata["policyalign"]["files"]["adapter_config.json"] = hashlib.sha256(forged).hexdigest()
        hub_server.put_files("org/redos", {"adapter_config.json": forged,
                                           "README.md": (card.dump_front_matter(metadata) + body).encode()}, f"forge {i}")
        result = cli.fails(1, "pull", "org/redos", "--to", str(tmp_path / f"pulled{i}"))
        assert f"adapter_config.json `{key}` is not plain module names" in result.stderr, result.stderr
    assert adapter_pull.config_problems({**config, "exclude_modules": outside_pattern(["model.vision_tower"])}) == []


def test_a_forged_adapter_sends_no_terminal_escape_to_the_puller(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A forged card and policyalign.json agreeing on a pack digest of escape sequences verified, and `pa pull`
    printed it raw ("verified: pack forged@1.0.0 (digest ESC]0;PWN BEL...)"); a forged pack name (the card's tags
    left as pushed), a file the card lists and a model-index split went raw into the provenance problems too."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "escapes"))
    repo, evil = "org/escapes", "\x1b]0;PWN\x07"
    cli.published(run, repo)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())

    def digest(metadata: dict) -> None:
        metadata["policyalign"]["pack"]["digest"] = evil

    _forge(hub_server, repo, json.dumps({**provenance, "pack": {**provenance["pack"], "digest": evil}}).encode(),
           digest, "escape digest")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "digest"))
    assert "policyalign.json:/pack/digest: provenance check failed: pack.digest is not a sha256 digest" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr

    def name(metadata: dict) -> None:
        metadata["policyalign"]["pack"]["name"] = "escapes" + evil

    _forge(hub_server, repo, json.dumps({**provenance, "pack": {**provenance["pack"], "name": "escapes" + evil}}).encode(),
           name, "escape name")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "name"))
    assert "policyalign.json says pack 'escapes\\x1b]0;PWN\\x07@1.0.0'" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr

    def file(metadata: dict) -> None:  # no name with a control character installs on Windows: refused before download
        metadata["policyalign"]["files"][evil] = "0" * 64

    _forge(hub_server, repo, json.dumps(provenance).encode(), file, "escape file")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "file"))
    assert "\\x1b]0;PWN\\x07: `\\x1b]0;PWN\\x07` holds the control character U+001B" in result.stderr, result.stderr
    assert "\x1b" not in result.stdout + result.stderr

    def split(metadata: dict) -> None:  # checked once the files verify
        metadata["model-index"][0]["results"][0]["dataset"]["split"] = evil

    hub_server.put_files(repo, {"README.md": hub_server.read(repo, "README.md", "escapes-v1.0.0")}, "undo")
    _forge(hub_server, repo, json.dumps(provenance).encode(), split, "escape split")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "split"))
    assert "model-index result \\x1b]0;PWN\\x07 " in result.stderr
    assert "\x1b" not in result.stdout + result.stderr

    def pin(metadata: dict) -> None:  # printed in `pa eval ... --model BASE@COMMIT`, shell-quoted but not escaped
        metadata["policyalign"]["base_model"]["commit"] = evil

    hub_server.put_files(repo, {"README.md": hub_server.read(repo, "README.md", "escapes-v1.0.0")}, "undo again")
    _forge(hub_server, repo, json.dumps({**provenance, "base_model": {**provenance["base_model"], "commit": evil}}).encode(),
           pin, "escape commit")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "commit"))
    assert "policyalign.json:/base_model/commit: provenance check failed: base_model.commit is not plain text" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr


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
    cli.published(run, repo)
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
    cli.published(run, "org/older")
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
    cli.published(run, "org/child-qwen")
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



# --------------------------------------------------------------------------- the local pack, the target directory, errors


def test_pull_warns_when_the_local_pack_differs(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pack = make_pack(cli.packs, "drifty")
    cli.published(make_run(tmp_path / "run", pack), "org/drifty")
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
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "versioned")), "org/versioned")
    make_pack(tmp_path / "newer", "versioned", version="1.1.0")
    dest = tmp_path / "pulled dir"
    pulled = cli.ok("pull", "org/versioned", "--to", str(dest), "--packs-path", str(tmp_path / "newer"))
    assert "matches the local pack versioned@1.0.0" in pulled.stdout
    assert f"pa eval versioned@1.0.0 --model Qwen/Qwen2.5-0.5B-Instruct@0123456789abcdef --adapter '{dest}'" in pulled.stdout
    assert "from_pretrained('Qwen/Qwen2.5-0.5B-Instruct', revision='0123456789abcdef')" in pulled.stdout


def test_pull_of_a_tiny_adapter_prints_how_to_load_tiny_not_a_placeholder(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An adapter of the built-in `tiny` was to be loaded with `from_pretrained('PATH/TO/BASE/MODEL')`, as if
    its base were a directory of the user's: policyalign makes tiny's files, and says where (tiny_model_path)."""
    import re

    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "small"), base_id="tiny", base_name="tiny"),
                  "org/small-tiny")
    pulled = cli.ok("pull", "org/small-tiny", "--to", str(tmp_path / "pulled")).stdout
    assert "PATH/TO" not in pulled and "from policyalign.tiny import tiny_model_path" in pulled
    snippet = re.search(r"load it with PEFT:\n((?:  .*\n)+)", pulled)
    assert snippet is not None
    names: dict[str, object] = {}
    exec(compile("\n".join(line[2:] for line in snippet.group(1).splitlines()), "pull-snippet", "exec"), names)
    assert names["model"].peft_config["default"].r == 4  # type: ignore[attr-defined]
    cli.published(make_run(tmp_path / "local", make_pack(cli.packs, "mine"), base_id="my-model", base_name="my-model"),
                  "org/mine-local")
    assert "from_pretrained('PATH/TO/BASE/MODEL')" in cli.ok("pull", "org/mine-local", "--to", str(tmp_path / "m")).stdout


def test_pull_refuses_to_overwrite_an_unrelated_directory(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "careful")), "org/careful")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = cli.fails(1, "pull", "org/careful", "--to", str(precious))
    assert "not a previously pulled adapter" in result.stderr and (precious / "notes.txt").read_text() == "keep me"
    cli.ok("pull", "org/careful", "--to", str(tmp_path / "again"))
    cli.ok("pull", "org/careful", "--to", str(tmp_path / "again"))  # re-pulling over a pulled adapter is fine


def test_pull_refuses_to_replace_a_runs_own_adapter(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A run's adapter/ holds policyalign.json, which was taken for "a previously pulled adapter":
    `pa pull ORG/NAME --to RUN/adapter` replaced the weights the user trained with the downloaded ones."""
    cli.published(make_run(tmp_path / "published", make_pack(cli.packs, "mine")), "org/mine")
    trained = make_run(tmp_path / "run", make_pack(tmp_path / "other", "mine", policy_note="Trained here.")) / "adapter"
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    result = cli.fails(1, "pull", "org/mine", "--to", str(trained))
    assert "exists and is not a previously pulled adapter" in result.stderr
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def test_pull_again_into_a_pulled_adapter_keeps_what_the_user_added_or_changed(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pull replaces its --to whole: pulled again into an earlier pull, it deleted the notes a user
    had put there and undid their edits without a word."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "repull")), "org/repull")
    dest = tmp_path / "pulled"
    cli.ok("pull", "org/repull", "--to", str(dest))
    cli.ok("pull", "org/repull", "--to", str(dest))  # as pulled: replaced
    (dest / "notes.txt").write_text("mine")
    result = cli.fails(1, "pull", "org/repull", "--to", str(dest))
    assert "holds files added or changed since it was pulled: notes.txt" in result.stderr
    assert (dest / "notes.txt").read_text() == "mine"
    (dest / "notes.txt").unlink()
    config = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    assert "since it was pulled: adapter_config.json" in cli.fails(1, "pull", "org/repull", "--to", str(dest)).stderr
    assert json.loads((dest / "adapter_config.json").read_text())["r"] == 64


def test_pull_again_keeps_notes_added_to_the_pulled_card(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """README.md is not among the files the card lists, so notes a user added to a pulled card were
    replaced by the next pull into that --to without a word, where notes in any other file stop it."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "noted")), "org/noted")
    dest = tmp_path / "pulled"
    cli.ok("pull", "org/noted", "--to", str(dest))
    readme = dest / "README.md"
    readme.write_text(readme.read_text() + "\nMy notes: works best at temperature 0.3.\n")
    result = cli.fails(1, "pull", "org/noted", "--to", str(dest))
    assert "holds files added or changed since it was pulled: README.md" in result.stderr
    assert "My notes" in readme.read_text()


def test_a_pull_killed_part_way_is_resumed_and_leaves_nothing_beside_the_target(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                                tmp_path: Path) -> None:
    """A `pa pull --to` killed mid-download (no `finally` runs) left its randomly named hidden staging
    directory beside --to for good, one more per killed attempt, and the re-run downloaded everything again.
    The staging directory is one per target and commit, so a second pull into the same --to is refused
    while the first works rather than deleting the files it is verifying."""
    from huggingface_hub import snapshot_download

    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "killed")), "org/killed")
    commit = hub_server.store.rev(hub_server.repo_path("org/killed"), "main")
    older = tmp_path / ".pulled.pa-pull-x1y2z3"  # what a killed pull of an earlier version left
    (older / "adapter").mkdir(parents=True)
    (older / "adapter" / "adapter_model.safetensors").write_bytes(b"partial")
    partial = tmp_path / f".pulled.pa-pull-{commit}" / "adapter"  # a killed pull of this commit: the weights were in
    snapshot_download("org/killed", revision=commit, local_dir=partial, allow_patterns=["adapter_model.safetensors"],
                      endpoint=hub_server.endpoint, cache_dir=tmp_path / "hf")
    from policyalign.run import run_lock

    with run_lock(tmp_path, adapter_pull.PULL_BUSY, name=".pulled.pa-pull.lock"):  # another pull into it, still working
        busy = cli.fails(1, "pull", "org/killed", "--to", str(tmp_path / "pulled"))
    assert "is working in this `pa pull --to` target" in busy.stderr and partial.is_dir()  # its staging left alone
    hub_server.requests.clear()
    cli.ok("pull", "org/killed", "--to", str(tmp_path / "pulled"))
    assert (tmp_path / "pulled" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pulled")) == []  # its lock file too
    assert not [path for method, path, _ in hub_server.requests if path.endswith("/adapter_model.safetensors")]


def test_a_pull_killed_while_swapping_the_adapter_in_neither_fails_the_next_pull_nor_loses_the_earlier_one(  # type: ignore[no-untyped-def]
        cli: Cli, hub_server, make_run, tmp_path: Path) -> None:
    """A pull moves the earlier pull aside as `.previous-NAME`, moves the new one in, then deletes it. Killed
    after the move in, the replaced adapter was left there and the next pull of that commit failed (a directory
    is not renamed over one that is not empty); killed before, the earlier adapter lay in that pull's staging
    directory, which a pull of another commit deletes. The earlier one now waits beside --to, where the next
    pull deletes it once replaced or puts it back first."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "swapped")), "org/swapped")
    commit = hub_server.store.rev(hub_server.repo_path("org/swapped"), "main")
    dest = tmp_path / "pulled"
    cli.ok("pull", "org/swapped", "--to", str(dest))

    def files(adapter: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}

    pulled = files(dest)

    def left_beside() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".pulled", ".previous")))

    for stale in (tmp_path / f".pulled.pa-pull-{commit}" / ".previous-pulled", tmp_path / ".previous-pulled"):
        shutil.copytree(dest, stale)  # killed after the move in: where that pull kept the replaced one, and beside --to
    cli.ok("pull", "org/swapped", "--to", str(dest))
    assert files(dest) == pulled and left_beside() == []

    dest.rename(tmp_path / ".previous-pulled")  # killed between the two moves: the only copy is aside
    weights = bytearray(pulled["adapter_model.safetensors"])
    weights[-1] ^= 0xFF
    hub_server.put_files("org/swapped", {"adapter_model.safetensors": bytes(weights)}, "swap weights")
    assert "does not match its sha256" in cli.fails(1, "pull", "org/swapped", "--to", str(dest)).stderr
    assert files(tmp_path / ".previous-pulled") == pulled  # still there
    cli.ok("pull", "org/swapped@swapped-v1.0.0", "--to", str(dest))
    assert files(dest) == pulled and left_beside() == []


def test_pull_into_a_path_under_a_file_is_a_clear_error(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--to FILE/sub` (a file where a parent directory must be) was a FileExistsError traceback."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "underfile")), "org/underfile")
    (tmp_path / "afile").write_text("not a directory")
    result = cli.fails(2, "pull", "org/underfile", "--to", str(tmp_path / "afile" / "sub"))
    assert "is not a directory: a file has its name or a parent's" in result.stderr
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_pull_of_a_repo_that_is_not_an_adapter_downloads_nothing(cli: Cli, hub_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pa pull` of a base model (an easy slip: the id it was trained on) fetched every weight file into
    the Hugging Face cache, gigabytes for a real model, before refusing it as "not a policyalign adapter"."""
    hub_server.store.create("model", "someone/base-model", private=False)
    hub_server.put_files("someone/base-model", {"README.md": b"---\nlibrary_name: transformers\n---\n# A model\n",
                                                "model.safetensors": b"\0" * 4096}, "a base model")
    for target in ((), ("--to", str(tmp_path / "pulled"))):
        result = cli.fails(1, "pull", "someone/base-model", *target)
        assert "not a policyalign adapter: its card has no `policyalign` metadata" in result.stderr
    assert not [p for p in (cli.home / "hf").rglob("*") if p.name == "model.safetensors"]
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".pulled.pa-pull-*"))


def test_pull_of_an_adapter_whose_card_was_removed_says_so(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With its README.md deleted on the Hub, a `pa push`ed adapter (policyalign.json and all) was refused as
    "not a policyalign adapter", hinting that only adapters `pa push` published can be verified: it was one."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "uncarded")), "org/uncarded")
    hub_server.store.commit("model", "org/uncarded", "main", {}, ["README.md"], "remove the card")
    result = cli.fails(1, "pull", "org/uncarded", "--to", str(tmp_path / "pulled"))
    assert "README.md, the model card `pa push` publishes with policyalign.json, is missing" in result.stderr
    assert "not a policyalign adapter" not in result.stderr
    assert "hf repos tag list org/uncarded" in result.stderr and not (tmp_path / "pulled").exists()
    cli.ok("pull", "org/uncarded@uncarded-v1.0.0", "--to", str(tmp_path / "pulled"))  # the tag still verifies


def _cached_bytes(cache: Path) -> set[bytes]:
    return {p.read_bytes() for p in cache.rglob("*") if p.is_file() and not p.is_symlink()}


def test_a_pull_refused_leaves_none_of_its_files_in_the_hugging_face_cache(cli: Cli, hub_server, make_run,  # type: ignore[no-untyped-def]
                                                                           tmp_path: Path) -> None:
    """Without --to, a refused revision's files stayed in the Hugging Face cache (README: "nothing is pulled"),
    where `PeftModel.from_pretrained(REPO, revision=COMMIT)` loaded the swapped weights without any check.
    Only what the refused pull added goes: the verified revision's snapshot, and the blobs it shares, stay."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "cached"))
    cli.published(run, "org/cached")
    verified = Path(cli.ok("pull", "org/cached@cached-v1.0.0").stdout.split(") to ", 1)[1].split("\n", 1)[0])
    weights = bytearray((run / "adapter" / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    hub_server.put_files("org/cached", {"adapter_model.safetensors": bytes(weights)}, "swap weights")
    refused = hub_server.store.rev(hub_server.repo_path("org/cached"), "main")
    assert "adapter_model.safetensors does not match" in cli.fails(1, "pull", "org/cached").stderr
    cache = verified.parents[1]
    assert not (cache / "snapshots" / refused).exists() and not (cache / "trees" / f"{refused}.json").exists()
    assert bytes(weights) not in _cached_bytes(cache)
    assert [p.name for p in (cache / "snapshots").iterdir()] == [verified.name]
    adapter_pull.verify_adapter(verified, "org/cached@cached-v1.0.0")  # its files, shared blobs included, intact


class OfflineCli(Cli):
    """`pa` with HF_HUB_OFFLINE=1, as on a machine without internet."""

    def env(self, token: object = DEFAULT) -> dict[str, str]:
        return {**super().env(token), "HF_HUB_OFFLINE": "1"}


def test_pull_offline_verifies_the_copy_in_the_hugging_face_cache(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With HF_HUB_OFFLINE=1 every `pa pull` failed with "offline mode is enabled", an adapter pulled and
    verified before included: none could be pulled on a machine without internet. A tag a pull verified,
    or a commit, is now found in the cache and verified there; one not in the cache names the fix."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "airgap")), "org/airgap")
    commit = hub_server.store.rev(hub_server.repo_path("org/airgap"), "main")
    cli.ok("pull", "org/airgap@airgap-v1.0.0")
    offline = OfflineCli(cli.hub, cli.home, cli.packs, cli.cwd)
    for spec in ("org/airgap@airgap-v1.0.0", f"org/airgap@{commit}"):
        pulled = offline.ok("pull", spec)
        assert f"(commit {commit[:12]})" in pulled.stdout and "verified: pack airgap@1.0.0" in pulled.stdout
        assert "offline (HF_HUB_OFFLINE=1): verified the copy of commit" in pulled.stdout
    offline.ok("pull", "org/airgap@airgap-v1.0.0", "--to", str(tmp_path / "pulled"))
    assert (tmp_path / "pulled" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "pulled" / "adapter_model.safetensors").is_symlink()
    missing = offline.fails(1, "pull", "org/airgap")  # main was never pulled here
    assert "org/airgap@main: not in the Hugging Face cache, and HF_HUB_OFFLINE=1" in missing.stderr
    assert "pull it once with internet (`pa pull org/airgap@main`" in missing.stderr
    assert "offline mode is enabled" not in missing.stderr
    search = offline.fails(1, "pull", "--pack", "airgap")  # finding adapters needs the Hub: say so, not its URL
    assert "searching the Hub: HF_HUB_OFFLINE=1 is set, and this needs the Hub" in search.stderr
    assert "unset HF_HUB_OFFLINE" in search.stderr and "offline mode is enabled" not in search.stderr
    snapshot = cli.home / "hf" / "hub" / "models--org--airgap" / "snapshots" / commit
    edited = (snapshot / "policyalign.json").resolve()
    edited.write_text(edited.read_text().replace("airgap", "elsewhere"))
    assert "policyalign.json does not match its sha256" in offline.fails(1, "pull", f"org/airgap@{commit}").stderr


def test_pull_errors_are_clear(cli: Cli) -> None:
    assert "not found" in cli.fails(1, "pull", "org/does-not-exist").stderr
    assert "invalid repository id" in cli.fails(2, "pull", "not-a-repo-id").stderr
    assert "either ORG/NAME" in cli.fails(2, "pull").stderr


def test_pull_of_a_revision_the_repository_lacks_names_its_tags(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pa pull org/name@v2` of a repository published with another tag said "repository not found (or
    private)" and "check ORG/NAME": the repository was there, the revision was not, and its tags went unsaid."""
    run = make_run(tmp_path / "run", cli.packs / "root-pack")
    cli.published(run, "org/tagged-adapter")
    failed = cli.fails(1, "pull", "org/tagged-adapter@v2", "--to", str(tmp_path / "pulled"))
    said = " ".join(failed.stderr.split())
    assert "no revision 'v2' in org/tagged-adapter" in said and "repository not found" not in said
    assert "its tags: root-pack-v1.0.0; branches: main" in said
    assert "pa pull org/tagged-adapter@root-pack-v1.0.0" in said
    assert not (tmp_path / "pulled").exists()
    assert "repository not found" in cli.fails(1, "pull", "org/never-published@v2").stderr  # no repository: as before


def test_pull_json_says_where_the_adapter_went_what_was_verified_and_what_to_run_next(cli: Cli, make_run,  # type: ignore[no-untyped-def]
                                                                                      tmp_path: Path) -> None:
    """`pa pull --json` was "No such option": a script pulling in CI scraped "pulled ... to PATH" for where the
    adapter went. stdout is one JSON document (the pulled lines and the best match are not printed)."""
    run = make_run(tmp_path / "run", cli.packs / "root-pack")
    cli.published(run, "org/json-adapter")
    pack = load_pack(cli.packs / "root-pack")
    for args in (["org/json-adapter@root-pack-v1.0.0"], ["--pack", "root-pack"]):
        to = tmp_path / f"pulled-{len(args)}"
        pulled = json.loads(cli.ok("pull", *args, "--to", str(to), "--json").stdout)
        assert pulled["path"] == str(to) and (to / "adapter_model.safetensors").is_file()
        assert (pulled["repo_id"], pulled["revision"]) == ("org/json-adapter", "root-pack-v1.0.0")
        assert len(pulled["commit"]) == 40
        assert pulled["pack"] == {"name": "root-pack", "version": pack.version, "digest": pack.digest, "parents": []}
        assert pulled["base_model"] == {"id": "Qwen/Qwen2.5-0.5B-Instruct", "name": "Qwen2.5-0.5B",
                                        "revision": "0123456789abcdef", "commit": None}
        assert pulled["warnings"] == [] and any("matches the local pack root-pack" in n for n in pulled["notes"])
        assert pulled["eval_command"] == (f"pa eval root-pack@{pack.version} --model "
                                          f"Qwen/Qwen2.5-0.5B-Instruct@0123456789abcdef --adapter {to}")
    assert cli.fails(1, "pull", "org/json-adapter@v9", "--json").stdout == ""  # a failed --json prints nothing there


def test_pull_says_what_it_verified_and_what_it_could_not(cli: Cli, hub_server, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pa pull` said "verified: pack P@V (digest ...), base model B" and nothing more: not that every file's
    sha256 was checked, nor what it left unchecked, an older card's text (no `body_sha256`: claims nothing)
    and a Hub base trained at a branch or tag, not a commit (whose weights may have moved on since)."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "covered"))  # base revision "0123456789abcdef": no commit
    cli.published(run, "org/covered")
    files = len(card.parse_card(hub_server.read("org/covered", "README.md").decode())[0]["policyalign"]["files"])
    pulled = cli.ok("pull", "org/covered", "--to", str(tmp_path / "pulled"))
    assert f"base model Qwen/Qwen2.5-0.5B-Instruct; the sha256 of its {files} files, the card's text and results" \
           in pulled.stdout
    assert ("not verified: which weights of Qwen/Qwen2.5-0.5B-Instruct it was trained on: policyalign.json records "
            "no commit of it, only the revision '0123456789abcdef' it was loaded at") in pulled.stdout
    assert "the card's text" not in pulled.stdout.split("not verified")[1]
    _edit_card(hub_server, "org/covered", lambda m: m["policyalign"].pop("body_sha256"), "as an older card")
    older = cli.ok("pull", "org/covered", "--to", str(tmp_path / "older"))
    assert f"the sha256 of its {files} files and the card's results" in older.stdout
    assert "not verified: the card's text (pushed before `pa push` recorded its sha256;" in older.stdout
    pulled_json = json.loads(cli.ok("pull", "org/covered", "--to", str(tmp_path / "older"), "--json").stdout)
    assert any(n.startswith("not verified: the card's text") for n in pulled_json["notes"])


def test_push_and_pull_draw_no_hub_bars_on_a_stderr_that_is_no_terminal(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On a stderr that is no terminal (a CI log) huggingface_hub's own bars ("Fetching 11 files", each LFS
    upload's) were written frame by frame with carriage returns and cursor-up escapes (ESC [A), where README
    promises one line per bar: the log of one `pa push` held dozens of frames."""
    run = make_run(tmp_path / "run", cli.packs / "root-pack")
    pushed = cli.ok("push", str(run), "--repo-id", "org/quiet-adapter")
    pulled = cli.ok("pull", "org/quiet-adapter", "--to", str(tmp_path / "pulled"))
    for stderr in (pushed.stderr, pulled.stderr):
        assert "\r" not in stderr and "\x1b[A" not in stderr and "it/s" not in stderr, stderr


def test_local_pack_differing_only_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    """A child's digest composes its parents': an edited parent makes `pa pull` warn about the
    child, whose own files are untouched, so the warning must point at the parent too."""
    shipped = Registry([REPO_ROOT / "packs"])
    trained = load_pack(REPO_ROOT / "packs" / "medical", registry=shipped)
    shutil.copytree(REPO_ROOT / "packs", tmp_path / "packs")
    harmful = tmp_path / "packs" / "general" / "eval" / "harmful.jsonl"
    harmful.write_text(harmful.read_text().replace("subway", "train station", 1))
    record = {"name": "medical", "version": "1.0.0", "digest": trained.digest}
    warnings, _ = adapter_pull.compare_local_pack(record, Registry([tmp_path / "packs"]))
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
    _, notes = adapter_pull.compare_local_pack(record, shipped)
    assert notes == [f"matches the local pack agent-tools@1.0.0 ({REPO_ROOT / 'packs' / 'agent-tools'}), "
                     f"which extends general@1.0.0 (digest {general.digest[:12]}…)"]

    shutil.copytree(REPO_ROOT / "packs", tmp_path / "packs")
    harmful = tmp_path / "packs" / "general" / "eval" / "harmful.jsonl"
    harmful.write_text(harmful.read_text().replace("subway", "train station", 1))
    edited = load_pack(tmp_path / "packs" / "general")
    warnings, _ = adapter_pull.compare_local_pack(record, Registry([tmp_path / "packs"]))
    assert len(warnings) == 1 and (f"it was trained with general@1.0.0 (digest {general.digest[:12]}…) inside, the "
                                   f"local pack extends general@1.0.0 (digest {edited.digest[:12]}…, "
                                   f"{tmp_path / 'packs' / 'general'})") in warnings[0]

    harmful.write_text((REPO_ROOT / "packs" / "general" / "eval" / "harmful.jsonl").read_text())
    with (tmp_path / "packs" / "agent-tools" / "policy.md").open("a") as handle:
        handle.write("\nA local edit without a version bump.\n")
    warnings, _ = adapter_pull.compare_local_pack(record, Registry([tmp_path / "packs"]))
    assert "(in its own files: the packs it extends are the ones it was trained with)" in warnings[0]


def test_pull_into_the_current_directory_is_a_clear_error(cli: Cli, make_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pa pull ORG/NAME --to .` in an empty directory passed the checks, then swapping the verified download
    in renamed the working directory: an OSError traceback ("Device or resource busy")."""
    cli.published(make_run(tmp_path / "run", make_pack(cli.packs, "here")), "org/here")
    result = cli.fails(1, "pull", "org/here", "--to", ".")
    assert "is the current directory" in result.stderr and "--to ./adapter" in result.stderr
    assert list(cli.cwd.iterdir()) == []  # no lock file or staging directory left


@pytest.mark.parametrize("evil", ["\u009b2J", "\u202e"])
def test_a_forged_adapter_with_c1_or_bidi_controls_does_not_verify(cli: Cli, hub_server, make_run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                    evil: str) -> None:
    """card._UNSAFE_ID blocked only C0 controls and DEL: a card and policyalign.json forged alike with a C1 control
    (U+009B is a one-character CSI on some terminals) or a bidirectional override in the pack version, or the base
    commit, verified and went raw to the puller's terminal. They are held to the pack-text check (text_problem)."""
    run = make_run(tmp_path / "run", make_pack(cli.packs, "cones"))
    repo = f"org/cones-{ord(evil[0]):x}"  # the loopback Hub outlives one case
    cli.published(run, repo)
    provenance = json.loads((run / "adapter" / "policyalign.json").read_text())

    def version(metadata: dict) -> None:
        metadata["policyalign"]["pack"]["version"] = "1.0.0" + evil  # tags and all, as a forger would
        metadata["tags"] = [t.replace("pack-version:1.0.0", "pack-version:1.0.0" + evil) for t in metadata["tags"]]

    _forge(hub_server, repo, json.dumps({**provenance, "pack": {**provenance["pack"], "version": "1.0.0" + evil}}).encode(),
           version, "forged version")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "version"))
    assert "policyalign.json:/pack/version: provenance check failed: pack.version contains control characters" in result.stderr
    assert evil not in result.stdout + result.stderr

    def pin(metadata: dict) -> None:
        metadata["policyalign"]["base_model"]["commit"] = "a" * 40 + evil

    hub_server.put_files(repo, {"README.md": hub_server.read(repo, "README.md", "cones-v1.0.0")}, "undo")
    _forge(hub_server, repo, json.dumps({**provenance, "base_model": {**provenance["base_model"], "commit": "a" * 40 + evil}}).encode(),
           pin, "forged commit")
    result = cli.fails(1, "pull", repo, "--to", str(tmp_path / "commit"))
    assert "policyalign.json:/base_model/commit: provenance check failed: base_model.commit is not plain text" in result.stderr
    assert evil not in result.stdout + result.stderr
