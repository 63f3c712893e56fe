"""Model resolution, loading and context checks; `pa models`."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from policyalign import tiny
from policyalign.cli import app
from policyalign.errors import InvalidInputError, ModelError, ResolveError
from policyalign.models import (
    MODEL_ALIASES, LoadedModel, ModelRef, check_fits, load_model, max_context, model_license, resolve_model,
    weights_key,
)


# --------------------------------------------------------------------------- identity in cache keys


def test_weights_key_follows_a_local_directorys_files_and_leaves_tiny_and_hub_ids_alone(tmp_path: Path) -> None:
    """Keys built from a local model's path alone survived new weights saved into it; its key now
    changes with any file's content, and not with its path: the directory moved or copied elsewhere
    is the same model, where keyed by its path it re-ran (or was refused) every stage of its run."""
    import os

    model = tmp_path / "model"
    shutil.copytree(tiny.tiny_model_path(), model)
    ref = resolve_model(str(model))
    first = weights_key(ref)
    assert first and weights_key(resolve_model(str(model))) == first, "stable while nothing changes"
    weights = model / "model.safetensors"
    info = weights.stat()
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # same bytes, saved again
    assert weights_key(ref) == first
    model.rename(tmp_path / "moved")
    assert weights_key(resolve_model(str(tmp_path / "moved"))) == first
    shutil.copytree(tmp_path / "moved", tmp_path / "copy", copy_function=shutil.copyfile)  # new inodes and mtimes
    assert weights_key(resolve_model(str(tmp_path / "copy"))) == first
    moved = tmp_path / "moved" / "model.safetensors"
    moved.write_bytes(moved.read_bytes()[:-1] + bytes([moved.read_bytes()[-1] ^ 1]))  # new weights, same size
    second = weights_key(resolve_model(str(tmp_path / "moved")))
    assert second != first
    (tmp_path / "moved" / "generation_config.json").write_text("{}")
    assert weights_key(resolve_model(str(tmp_path / "moved"))) != second
    assert weights_key(resolve_model("tiny")) is None


def test_a_local_directory_is_keyed_where_the_cache_cannot_be_written(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file's sha256 is remembered in PA_CACHE_DIR; a cache the disk refuses (here /sys, which nobody may
    write into) failed every stage key of a local model with "Operation not permitted", naming the cache."""
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys")
    model = tmp_path / "model"
    shutil.copytree(tiny.tiny_model_path(), model)
    expected = weights_key(resolve_model(str(model)))
    shutil.copytree(model, tmp_path / "fresh", copy_function=shutil.copyfile)  # new inodes: not remembered
    monkeypatch.setenv("PA_CACHE_DIR", "/sys/policyalign-test-cache")
    assert weights_key(resolve_model(str(tmp_path / "fresh"))) == expected


C1, C2 = "1" * 40, "2" * 40


def test_a_hub_model_is_keyed_by_the_commit_the_cache_resolves_it_to(hf_cache: Any) -> None:
    """`org/name` was keyed by its name: a new commit on `main` kept every stage of the old weights.
    The cache's `refs/<revision>` says, offline, which snapshot the model loads from."""
    from policyalign.models import hub_commit, keyed_name

    assert weights_key(resolve_model("acme/tiny")) is None, "not downloaded yet: nothing to name"
    hf_cache("acme/tiny", C1)
    hf_cache("acme/tiny", C2, ref="v2")
    assert [weights_key(resolve_model(name)) for name in ("acme/tiny", "acme/tiny@main", "acme/tiny@v2")] == [C1, C1, C2]
    assert hub_commit(resolve_model(f"acme/tiny@{C2}")) == C2
    assert weights_key(resolve_model("acme/tiny@v9")) is None, "a tag never downloaded"
    hf_cache("acme/tiny", C2)  # main moved on, and the new commit was downloaded
    assert weights_key(resolve_model("acme/tiny")) == C2
    assert {keyed_name(resolve_model(n)) for n in ("acme/tiny", "acme/tiny@main", f"acme/tiny@{C1}")} == {"acme/tiny"}
    assert keyed_name(resolve_model("acme/tiny@v9")) == "acme/tiny@v9"


# --------------------------------------------------------------------------- resolve


def test_resolve_tiny_is_a_real_model_directory() -> None:
    ref = resolve_model("TINY")
    assert (ref.name, ref.kind, ref.revision) == ("tiny", "tiny", None)
    assert (Path(ref.location) / "config.json").is_file()
    assert str(ref) == "tiny"


@pytest.mark.parametrize("name", ["Qwen2.5-7B", "qwen2.5-7b", " QWEN2.5-7B "])
def test_aliases_are_case_insensitive(name: str) -> None:
    assert resolve_model(name) == ModelRef("Qwen2.5-7B", "hub", "Qwen/Qwen2.5-7B-Instruct", None)


def test_alias_table_covers_the_documented_families() -> None:
    for alias in ("Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-14B", "Qwen3-4B", "Qwen3-8B",
                  "Llama-3.1-8B", "Mistral-7B", "gemma-2-9b"):
        assert "/" in MODEL_ALIASES[alias]


def test_hub_ids_with_and_without_revision() -> None:
    assert resolve_model("org/model-x") == ModelRef("org/model-x", "hub", "org/model-x", None)
    ref = resolve_model("org/model-x@v1.2")
    assert (ref.location, ref.revision, str(ref)) == ("org/model-x", "v1.2", "org/model-x@v1.2")
    assert resolve_model("Qwen2.5-3B@abc123").revision == "abc123"
    with pytest.raises(ResolveError, match="empty revision"):
        resolve_model("org/model-x@")


def test_a_hub_revision_may_hold_slashes() -> None:
    """A pull request's revision (`refs/pr/N`) made the name look like a path: "model directory not found"."""
    ref = resolve_model("Qwen/Qwen2.5-7B-Instruct@refs/pr/12")
    assert (ref.kind, ref.location, ref.revision) == ("hub", "Qwen/Qwen2.5-7B-Instruct", "refs/pr/12")
    assert resolve_model("Qwen2.5-7B@refs/pr/3").revision == "refs/pr/3"
    with pytest.raises(ResolveError, match="model directory not found"):
        resolve_model("./models/mine@v1")


def test_local_directory_needs_config_json(tmp_path: Path) -> None:
    good = tmp_path / "model"
    shutil.copytree(tiny.tiny_model_path(), good)
    ref = resolve_model(str(good))
    assert (ref.kind, ref.location) == ("local", str(good.resolve()))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ResolveError, match=f"no config.json in model directory {empty}"):
        resolve_model(str(empty))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ResolveError) as info:
        resolve_model(str(adapter))
    assert "PEFT adapter" in info.value.problem.hint


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no-such-model-dir", "a/b/c"])
def test_missing_local_path_is_named(name: str) -> None:
    with pytest.raises(ResolveError) as info:
        resolve_model(name)
    assert "model directory not found" in str(info.value)
    assert str(Path(name).expanduser()) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("Qwen2.5-7", "Qwen2.5-7B"), ("qwen25-7b", "Qwen2.5-7B"), ("lama-3.1-8b", "Llama-3.1-8B"), ("tinny", "tiny"),
])
def test_unknown_alias_suggests_the_near_miss(typo: str, suggestion: str) -> None:
    with pytest.raises(ResolveError) as info:
        resolve_model(typo)
    assert f"unknown model {typo!r}" in str(info.value)
    assert "did you mean" in info.value.problem.hint and suggestion in info.value.problem.hint


def test_unrelated_name_gets_the_general_hint() -> None:
    with pytest.raises(ResolveError) as info:
        resolve_model("zzzz")
    assert "did you mean" not in info.value.problem.hint
    assert "pa models" in info.value.problem.hint


# --------------------------------------------------------------------------- load


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny", device="cpu")


def test_default_device_and_dtype() -> None:
    default = load_model("tiny")
    if torch.cuda.is_available():
        assert (default.device, default.dtype) == ("cuda:0", torch.bfloat16)
    else:
        assert (default.device, default.dtype) == ("cpu", torch.float32)
    assert next(default.model.parameters()).dtype == default.dtype


def test_a_gpu_without_native_bf16_defaults_to_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 or V100 (compute capability 7.x) emulates bf16, and torch's `is_bf16_supported()` counts
    emulation: "auto" loaded bf16 there, without tensor cores, and vLLM refuses bf16 below 8.0."""
    from policyalign.models import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16


def test_pa_dtype_sets_the_precision_every_stage_loads_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stage takes a dtype, yet a GPU user needs one: fp16 (a T4's default) overflows some models,
    and the sampler's error said "load it in bfloat16 or float32" with no way to; fp32 is for debugging."""
    monkeypatch.setenv("PA_DTYPE", "bf16")
    loaded = load_model("tiny", device="cpu")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert load_model("tiny", device="cpu", dtype="fp32").dtype == torch.float32, "a caller's dtype comes first"
    monkeypatch.setenv("PA_DTYPE", "float8")
    with pytest.raises(InvalidInputError, match="PA_DTYPE") as info:  # exit 2: a value to fix, not a model failing
        load_model("tiny", device="cpu")
    assert "fp32" in info.value.problem.hint


def test_load_tiny_for_inference(loaded: LoadedModel) -> None:
    assert (loaded.device, loaded.dtype) == ("cpu", torch.float32)
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.config is loaded.model.config


def test_load_trainable_and_dtype_override() -> None:
    model = load_model("tiny", device="cpu", trainable=True, dtype="bf16").model
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_local_directory_through_the_same_path(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny.tiny_model_path(), copy)
    local = load_model(str(copy), device="cpu")
    assert local.ref.kind == "local"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(local.model(ids).logits, load_model("tiny", device="cpu").model(ids).logits)


@pytest.mark.parametrize(("config", "named", "hint"), [
    ({"model_type": "mistral3", "architectures": ["Mistral3ForConditionalGeneration"]},
     "image-text model (Mistral3ForConditionalGeneration)", "text-only model of its family"),
    ({"model_type": "qwen2_5_vl"}, "image-text model (Qwen2_5_VLForConditionalGeneration)", "Qwen2.5-Instruct"),
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
     "(T5ForConditionalGeneration) is not a causal language model", "decoder-only chat models"),
])
def test_a_model_causal_lm_loading_cannot_load_is_named_with_its_kind(tmp_path: Path, config: dict[str, Any],
                                                                       named: str, hint: str) -> None:
    """Mistral Small 3.1 or Qwen2.5-VL was refused in transformers' words ("Unrecognized configuration class ... for
    AutoModelForCausalLM") under a hint to check the checkpoint was complete and memory sufficed."""
    model = tmp_path / "vlm"
    shutil.copytree(tiny.tiny_model_path(), model)
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=re.escape(named)) as caught:
        load_model(str(model), device="cpu")
    assert hint in caught.value.problem.hint and caught.value.problem.file == str(model)


def test_public_ref_names_a_local_directory_by_its_name_only(tmp_path: Path) -> None:
    """What published files call the base model: never the local path (it shows the user's home directory)."""
    copy = tmp_path / "my-base"
    shutil.copytree(tiny.tiny_model_path(), copy)
    assert resolve_model(str(copy)).public() == ModelRef("my-base", "local", "my-base")
    assert resolve_model("tiny").public() == ModelRef("tiny", "tiny", "tiny")
    hub = resolve_model("Qwen2.5-7B@abc")
    assert hub.public() == hub


def test_model_license_is_read_from_the_models_readme(tmp_path: Path) -> None:
    """Nothing recorded the base model's license, so every card said `license: other`."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny.tiny_model_path(), copy)
    assert model_license(resolve_model(str(copy))) == {}  # no README.md: nothing to tell
    (copy / "README.md").write_text("---\nlicense: apache-2.0\ntags: [chat]\n---\n# A model\n")
    assert model_license(resolve_model(str(copy))) == {"license": "apache-2.0"}
    (copy / "README.md").write_text("---\nlicense: other\nlicense_name: qwen-research\n"
                                    "license_link: https://example.org/LICENSE\n---\n")
    assert model_license(resolve_model(str(copy))) == {
        "license": "other", "license_name": "qwen-research", "license_link": "https://example.org/LICENSE"}
    (copy / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert model_license(resolve_model(str(copy))) == {}
    assert model_license(resolve_model("tiny")) == {}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtype": "fp8"}, "unknown dtype"),
    ({"device": "tpu-ish"}, "unknown device"),
])
def test_bad_device_or_dtype_is_invalid_input(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_model("tiny", **kwargs)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without Apple's GPU")
@pytest.mark.parametrize("device", ["mps", "meta"])
def test_an_accelerator_not_present_is_a_model_error_not_a_broken_checkpoint(device: str) -> None:
    with pytest.raises(ModelError, match=f"no {device} device is available"):
        load_model("tiny", device=device)


@pytest.mark.parametrize("device", ["cpu:0", " CPU ", "cpu"])
def test_any_spelling_of_the_cpu_is_the_cpu(device: str) -> None:
    """`--device cpu:0` loaded onto "cpu:0", which every `== "cpu"` check (one thread for a small model) missed."""
    from policyalign.models import cpu_threads

    loaded = load_model("tiny", device=device)
    assert loaded.device == "cpu"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests run with one thread (conftest), which would hide a missed check
    try:
        with cpu_threads(loaded):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model("tiny", device="cuda:1")


def test_uncached_hub_model_offline_is_a_model_error_with_a_fix(offline_hub: object) -> None:
    with pytest.raises(ModelError) as info:
        load_model("policyalign-tests/not-downloaded-model@main")
    assert "not in the local Hugging Face cache" in str(info.value)
    hint = info.value.problem.hint
    assert "hf download policyalign-tests/not-downloaded-model --revision main" in hint
    assert "huggingface-cli download" in hint and "local directory" in hint


def test_a_public_hub_model_refused_for_an_invalid_token_names_the_token(cli: Any, tmp_path: Path) -> None:
    """The Hub answers 401 to a token it does not know (mistyped, revoked), a public model's download included:
    pa read the 401 as a gated model ("accept its license on the Hub"), a fix that cannot work for a model that
    has no license to accept. It names the token, and logging in again or unsetting HF_TOKEN."""
    cli.hub.store.create("model", "org/open-model", False)
    cli.hub.put_files("org/open-model", {p.name: p.read_bytes() for p in tiny.tiny_model_path().iterdir() if p.is_file()})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "response": "no"}) + "\n")
    judge = ("judge", str(pairs), "--judge", "llm:org/open-model", "--out", str(tmp_path / "judged.jsonl"))
    result = cli.fails(1, *judge, token="hf_WRONGwrongWRONG0123456789")
    said = " ".join(result.stderr.split())
    assert "the Hub rejected the token (401 Unauthorized) while downloading org/open-model" in said, said
    assert "gated" not in said and "unset HF_TOKEN" in said and "hf auth login" in said and "WRONG" not in said, said
    cli.ok(*judge, token=None)  # public: no token downloads it


def test_a_refused_hub_download_is_told_by_the_hub_error_not_its_status(cli: Any, tmp_path: Path) -> None:
    """Every 401 and 403 of a model download (but the invalid-token one) was reported as "gated ... accept its
    license on the Hub": a private repository read with another user's token too, a fix that cannot work. The
    message follows the Hub's error code: GatedRepo without a token (401: log in) or for an account not granted
    access (403: ask for access), and RepoNotFound for a missing or private repository (check the name)."""
    files = {p.name: p.read_bytes() for p in tiny.tiny_model_path().iterdir() if p.is_file()}
    cli.hub.store.create("model", "org/gated-model", False, gated=True)
    cli.hub.store.create("model", "org/private-model", True)
    for repo_id in ("org/gated-model", "org/private-model"):
        cli.hub.put_files(repo_id, files)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "response": "no"}) + "\n")

    def said(model: str, token: object) -> str:
        judge = ("judge", str(pairs), "--judge", f"llm:{model}", "--out", str(tmp_path / "judged.jsonl"))
        return " ".join(cli.fails(1, *judge, token=token).stderr.split())

    anonymous = said("org/gated-model", None)
    assert "org/gated-model is gated on the Hugging Face Hub and was asked for without a token (401 Unauthorized)" \
        in anonymous, anonymous
    assert f"accept its license at {cli.hub.endpoint}/org/gated-model" in anonymous and "hf auth login" in anonymous
    refused = said("org/gated-model", cli.hub.other_token)
    assert "the token's account has not been granted access (403 Forbidden)" in refused, refused
    assert "ask for access" in refused and cli.hub.other_token not in refused
    private = said("org/private-model", cli.hub.other_token)
    assert "the Hugging Face Hub has no model org/private-model that this token may read" in private, private
    assert "gated" not in private and "license" not in private and "check the name" in private, private


def test_a_forbidden_download_that_is_not_gated_is_not_called_gated() -> None:
    """A 403 without GatedRepo (a fine-grained token not allowed to read the repository) reaches `_model_error` as
    transformers' OSError raised from huggingface_hub's HfHubHTTPError: its "403" made pa say "gated, accept its
    license". The Hub's own words are shown (escaped) and the fix is the token's read access."""
    import httpx
    from huggingface_hub.utils import hf_raise_for_status

    from policyalign.models import _model_error, resolve_model

    url = "https://huggingface.co/acme/model/resolve/main/config.json"
    answer = httpx.Response(403, headers={"X-Error-Message": "Forbidden: token lacks \x1b[31mread"},
                            request=httpx.Request("GET", url))
    try:
        try:
            hf_raise_for_status(answer)
        except Exception as http_error:  # as transformers.utils.hub.cached_files wraps it
            raise OSError(f"There was a specific connection error when trying to load acme/model:\n{http_error}") \
                from http_error
    except OSError as failure:
        error = _model_error(resolve_model("acme/model"), failure)
    said = f"{error.problem.message} {error.problem.hint}"
    assert "the Hugging Face Hub refused the download of acme/model (403: Forbidden: token lacks \\x1b[31mread)" in said
    assert "gated" not in said and "license" not in said, said
    assert "read access" in said and "\x1b" not in said


def test_a_hub_out_of_reach_suggests_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without internet `pa eval` of an uncached model spent ~50 s in huggingface_hub's
    retries before failing, and nothing said how to skip them."""
    import huggingface_hub.constants

    from policyalign.models import _model_error, resolve_model

    # transformers' words when every retry to the Hub failed (seen on this offline machine)
    failure = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                      "in the cached files.\nCheck your internet connection or see how to run the library in offline mode")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hint = _model_error(resolve_model("acme/absent-model"), failure).problem.hint
    assert "set HF_HUB_OFFLINE=1 to fail at once" in hint
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # already offline: nothing to add
    assert "HF_HUB_OFFLINE" not in _model_error(resolve_model("acme/absent-model"), failure).problem.hint


def test_uncached_alias_offline_names_the_hub_id(offline_hub: object) -> None:
    """An alias fails like its Hub id; the CLI prints ModelError and exits 1 (no traceback)."""
    with pytest.raises(ModelError) as info:
        load_model("Qwen2.5-0.5B")
    assert info.value.exit_code == 1
    assert "Qwen/Qwen2.5-0.5B-Instruct" in str(info.value)


def test_model_without_tokenizer_files_says_so(tmp_path: Path) -> None:
    """A fine-tune saved with `model.save_pretrained` alone loads an empty tokenizer (transformers builds
    one from nothing); the error said "no chat template, use the instruction-tuned variant"."""
    copy = tmp_path / "fine-tuned"
    copy.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny.tiny_model_path() / name, copy / name)
    with pytest.raises(ModelError, match="has no tokenizer files") as info:
        load_model(str(copy))
    assert info.value.problem.file == str(copy.resolve()) and "save_pretrained" in info.value.problem.hint


def test_model_whose_tokenizer_json_was_left_behind_says_so(tmp_path: Path) -> None:
    """tokenizer_config.json without tokenizer.json loads a tokenizer of only its added tokens: len()
    of 7 passed the check for an empty one, and every text encoded to nothing."""
    copy = tmp_path / "copied"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="has no tokenizer files, or none holding its vocabulary"):
        load_model(str(copy))


def test_model_without_chat_template_is_a_model_error(tmp_path: Path) -> None:
    """Named with the directory and the files a template is looked for in (tiny ships its own as chat_template.jinja)."""
    copy = tmp_path / "base-model"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "chat_template.jinja").unlink()
    with pytest.raises(ModelError) as info:
        load_model(str(copy))
    assert "has no chat template (none in tokenizer_config.json, chat_template.jinja or chat_template.json)" \
        in str(info.value)
    assert info.value.problem.file == str(copy.resolve())
    assert "Instruct" in info.value.problem.hint and "chat_template.jinja" in info.value.problem.hint


def _template_as_processor_file(model_dir: Path) -> str:
    """Move `model_dir`'s chat template into chat_template.json, as multimodal models ship it; returns the template."""
    template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    (model_dir / "chat_template.jinja").unlink()
    (model_dir / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    return template


def test_a_chat_template_shipped_only_in_chat_template_json_is_used(tmp_path: Path, hf_cache: Any,
                                                                    offline_hub: object) -> None:
    """Multimodal chat models (LLaVA and others) ship their template only there, for the processor; AutoTokenizer
    reads none from it, and the model was refused as having no chat template (use an -Instruct variant)."""
    from policyalign.chat import encode_chat

    local = tmp_path / "processor-model"
    shutil.copytree(tiny.tiny_model_path(), local)
    template = _template_as_processor_file(local)
    cache = hf_cache("acme/vision-chat", C1)
    _template_as_processor_file(cache / "models--acme--vision-chat" / "snapshots" / C1)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    expected = encode_chat(load_model("tiny", weights=False).tokenizer, chat)
    for name in (str(local), "acme/vision-chat"):
        loaded = load_model(name, weights=False)
        assert loaded.tokenizer.chat_template == template, name
        assert encode_chat(loaded.tokenizer, chat) == expected, name


# Content as a list of parts only, as LLaVA's processor template reads it; and as Gemma 3's reads either.
PARTS_ONLY = ("{% for m in messages %}{{ m['role'].upper() }}: {% for part in m['content'] | selectattr('type', 'equalto', "
              "'text') %}{{ part['text'] }} {% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
PARTS_OR_TEXT = ("{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for part in m['content'] %}{{ part['text'] }}{% endfor %}{% endif %} {% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.mark.parametrize("template", [PARTS_ONLY, PARTS_OR_TEXT])
def test_a_chat_template_reading_text_only_as_parts_renders_the_text(tmp_path: Path, template: str) -> None:
    """LLaVA's processor template skips content that is not a list of parts: every student prompt rendered as
    'USER: ASSISTANT:', the instruction silently gone (the teacher's failed, blamed on its system message), and
    such a model was then refused. Its turns' text is now given to it as text parts (`chat.text_part_roles`)."""
    from policyalign.chat import render_chat

    copy = tmp_path / "processor-model"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "chat_template.jinja").unlink()
    (copy / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    tokenizer = load_model(str(copy), weights=False).tokenizer
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    assert render_chat(tokenizer, chat) == "SYSTEM: Be brief. USER: hello ASSISTANT:"


def test_a_chat_template_that_renders_no_user_text_is_refused(tmp_path: Path) -> None:
    """A template that shows a user turn's text neither as a string nor as a text part would train and evaluate
    on bare role markup: refused when the model loads, naming the directory and the fix."""
    copy = tmp_path / "textless-model"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {% endfor %}", encoding="utf-8")
    with pytest.raises(ModelError, match="renders a user turn without its text") as info:
        load_model(str(copy), weights=False)
    assert info.value.problem.file == str(copy.resolve()) and "chat_template.jinja" in info.value.problem.hint


def test_a_chat_template_json_without_a_template_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "processor-model"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "chat_template.jinja").unlink()
    (copy / "chat_template.json").write_text(json.dumps({"template": "{{ messages }}"}), encoding="utf-8")
    with pytest.raises(ModelError, match="chat_template.json holds no chat template") as info:
        load_model(str(copy))
    problem = info.value.problem
    assert (problem.file, problem.where) == (str(copy.resolve() / "chat_template.json"), "chat_template")
    assert '{"chat_template":' in problem.hint


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed: Gemma 3n's vision tower loads")
def test_a_model_needing_a_package_not_installed_is_a_model_error(tmp_path: Path) -> None:
    """Gemma 3n (Gemma3nForConditionalGeneration) builds its vision tower with timm, which policyalign does not
    depend on: transformers' ImportError escaped `pa` as a traceback from inside from_pretrained."""
    import transformers
    from safetensors.torch import save_file

    copy = tmp_path / "gemma-3n"
    shutil.copytree(tiny.tiny_model_path(), copy)
    text = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    transformers.Gemma3nConfig(text_config=text).save_pretrained(copy)
    save_file({"unused": torch.zeros(1)}, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="requires the timm library") as info:
        load_model(str(copy))
    assert info.value.problem.file == str(copy.resolve()) and "`pip install timm`" in info.value.problem.hint


def test_broken_local_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(tiny.tiny_model_path(), copy)
    (copy / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="could not load the model"):
        load_model(str(copy))


def test_an_adapter_pinned_to_a_hub_commit_is_refused_on_another(tmp_path: Path, hf_cache: Any,
                                                                  offline_hub: object) -> None:
    """adapter_config.json pins a Hub base at the commit it was trained on; after `main` moved,
    `pa eval --model org/name --adapter A` measured the adapter on weights it was never trained on."""
    from peft import LoraConfig, get_peft_model

    hf_cache("acme/tiny", C1)
    base = load_model(f"acme/tiny@{C1}", device="cpu", trainable=True).model
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "acme/tiny", "revision": C1}))
    hf_cache("acme/tiny", C2)  # main moved on, and the new commit was downloaded
    with pytest.raises(ModelError, match=f"trained on acme/tiny at commit {C1}, but acme/tiny loads commit {C2}") as caught:
        load_model("acme/tiny", device="cpu", adapter=tmp_path / "adapter")
    assert f"--model acme/tiny@{C1}" in caught.value.problem.hint
    assert load_model(f"acme/tiny@{C1}", device="cpu", adapter=tmp_path / "adapter").model is not None


def test_an_adapter_for_a_base_of_other_shapes_names_the_base_it_was_trained_on(tmp_path: Path) -> None:
    """`pa eval --model other --adapter A` with A trained on tiny was PEFT's forty "size mismatch" lines
    and a hint that named no base model; adapter_config.json records the one to load."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    base = load_model("tiny", device="cpu", trainable=True).model
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"  # as `pa distill` names tiny there
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": "tiny"}))
    narrow = tmp_path / "narrow"
    shutil.copytree(tiny.tiny_model_path(), narrow)
    config = AutoConfig.from_pretrained(narrow)
    config.hidden_size, config.intermediate_size, config.head_dim = 32, 96, 32 // config.num_attention_heads
    AutoModelForCausalLM.from_config(config).save_pretrained(narrow)
    with pytest.raises(ModelError, match="does not fit .*trained on tiny") as caught:
        load_model(str(narrow), device="cpu", adapter=tmp_path / "adapter")
    assert caught.value.problem.file == str(tmp_path / "adapter" / "adapter_config.json")
    assert caught.value.problem.hint.endswith("--model tiny") and "size mismatch" not in str(caught.value)


def test_peft_adapter_is_applied(tmp_path: Path, loaded: LoadedModel) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_model("tiny", device="cpu", trainable=True).model
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    with_adapter = load_model("tiny", device="cpu", adapter=tmp_path / "adapter")
    assert isinstance(with_adapter.model, PeftModel) and not with_adapter.model.training
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(with_adapter.model(ids).logits, loaded.model(ids).logits)
    trainable = load_model("tiny", device="cpu", adapter=tmp_path / "adapter", trainable=True).model
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_model("tiny", device="cpu", adapter=tmp_path)
    with pytest.raises(InvalidInputError, match="adapter directory not found: .*typo"):  # was "no adapter_config.json in ..."
        load_model("tiny", device="cpu", adapter=tmp_path / "typo")
    with pytest.raises(InvalidInputError, match="adapter_config.json is a file, not an adapter directory"):
        load_model("tiny", device="cpu", adapter=tmp_path / "adapter" / "adapter_config.json")  # was "no ... in FILE"
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])  # a truncated copy was a SafetensorError traceback
    with pytest.raises(ModelError, match="damaged or incomplete"):
        load_model("tiny", device="cpu", adapter=tmp_path / "adapter")
    weights.unlink()  # was PEFT's "Repo id must be in the form ..."
    with pytest.raises(ModelError, match="no adapter weights"):
        load_model("tiny", device="cpu", adapter=tmp_path / "adapter")


def test_weights_false_loads_tokenizer_and_config_only() -> None:
    light = load_model("tiny", weights=False)
    assert light.model is None and light.config.model_type == "qwen2"
    assert max_context(light) == tiny.MAX_POSITIONS


# --------------------------------------------------------------------------- context


def test_max_context_and_check_fits(loaded: LoadedModel) -> None:
    assert max_context(loaded) == tiny.MAX_POSITIONS >= 4096
    check_fits(loaded, tiny.MAX_POSITIONS, "policy + prompt")
    with pytest.raises(ModelError) as info:
        check_fits(loaded, tiny.MAX_POSITIONS + 1, "policy + prompt")
    assert f"policy + prompt needs {tiny.MAX_POSITIONS + 1} tokens but tiny fits at most {tiny.MAX_POSITIONS}" in str(
        info.value
    )
    assert "shorten the policy" in info.value.problem.hint


# --------------------------------------------------------------------------- CLI


def test_pa_models_help() -> None:
    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--json" in result.output


def test_pa_models_table_and_json() -> None:
    table = CliRunner().invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    for alias, hub_id in MODEL_ALIASES.items():
        assert alias in table.output and hub_id in table.output
    assert "tiny" in table.output and "org/name[@revision]" in table.output
    rows = json.loads(CliRunner().invoke(app, ["models", "--json"]).output)
    assert rows[0]["name"] == "tiny"
    assert {r["name"]: r["model"] for r in rows[1:]} == MODEL_ALIASES
    assert all(r["cached"] in (True, False) for r in rows[1:])


def test_pa_models_counts_a_model_cached_only_with_all_its_weights(tmp_path: Path) -> None:
    """config.json alone (an interrupted download) was listed as cached, and loading then failed offline."""
    from policyalign.cli.model_cmds import _in_hub_cache

    repo = tmp_path / "models--Org--M"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert not _in_hub_cache("Org/M", str(tmp_path))
    (snapshot / "config.json").write_text("{}")
    assert not _in_hub_cache("Org/M", str(tmp_path)), "config only"
    shards = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert not _in_hub_cache("Org/M", str(tmp_path)), "one shard of two"
    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert _in_hub_cache("Org/M", str(tmp_path))


def test_resolve_error_type_is_invalid_input() -> None:
    assert issubclass(ResolveError, InvalidInputError)


def _lora_model(targets: Any = ("q_proj", "k_proj", "v_proj", "o_proj"), dtype: str | None = None, **extra: Any) -> Any:
    """tiny with a LoRA adapter whose B is non-zero, so merging it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model("tiny", trainable=True, dtype=dtype).model,
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(targets) if not isinstance(targets, str)
                                      else targets, **extra))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-4), ("bf16", 0.5)])  # logits up to ~6
def test_merged_adapter_decodes_the_same_model_and_restores_every_weight_bit_for_bit(dtype: str, tolerance: float) -> None:
    """bf16 is the GPU default: W + BA is rounded once to bf16 there, and the teacher's weights must still come back exact."""
    from policyalign.models import merged_adapter

    model = _lora_model(dtype=dtype)
    ids = torch.randint(10, 2000, (2, 24))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with merged_adapter(model) as merged:
            inside = model(input_ids=ids).logits
            assert not any("lora" in n for n, _ in model.named_modules())
    assert merged and (unmerged - base).abs().max() > 0.1
    assert (inside - unmerged).abs().max() < tolerance
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_merged_adapter_declines_costly_tied_or_non_linear_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    from policyalign import models
    from policyalign.models import merged_adapter

    tied = _lora_model(["lm_head", "q_proj"])  # tiny ties lm_head to the input embeddings
    monkeypatch.setattr(models, "MERGE_BUDGET", 1.0)  # so only the tie can decline it
    for model in (tied, _lora_model(use_dora=True), load_model("tiny").model):
        ids = torch.randint(10, 2000, (1, 8))
        with torch.no_grad():
            expected = model(input_ids=ids).logits
            with merged_adapter(model) as merged:
                assert not merged
                assert torch.equal(model(input_ids=ids).logits, expected)
    monkeypatch.setattr(models, "MERGE_BUDGET", 0.25)
    with merged_adapter(_lora_model("all-linear")) as merged:
        assert not merged, "LoRA on every linear of tiny would copy about half its weights"


def test_a_local_directory_keys_alike_however_typed_and_wherever_it_is(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage keys held the name as typed: `./m` and `/abs/m` re-ran every stage of one run; then the
    absolute path: the directory moved elsewhere re-ran them too. Its files (`weights_key`) tell it apart."""
    from policyalign.models import LOCAL, keyed_name, resolve_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    names = ["./m", "m/", str(tmp_path / "m")]
    assert {keyed_name(resolve_model(name)) for name in names} == {LOCAL}


def test_tiny_keys_by_one_name_however_typed() -> None:
    """`--model Tiny` is the built-in tiny (its demo defaults too), yet keyed as typed it re-ran every stage
    of a run made with `--model tiny`."""
    from policyalign.models import keyed_name, resolve_model
    from policyalign.stages import synthesize_key, synthesize_options
    from policyalign.pack import load_pack

    names = ["tiny", "Tiny", " TINY "]
    assert {keyed_name(resolve_model(name)) for name in names} == {"tiny"}
    pack = load_pack(Path(__file__).resolve().parents[1] / "packs" / "general")
    assert len({synthesize_key(pack, name, synthesize_options(name, None, 2, None, 0, None, 16)) for name in names}) == 1


def test_an_alias_not_downloaded_keys_by_its_one_spelling(fixture_packs: Path, hf_cache: Any) -> None:
    """Aliases resolve whatever their case, yet one not downloaded yet was keyed as typed: `Qwen2.5-7B` and
    `qwen2.5-7b` re-ran each other's stages."""
    from policyalign.models import keyed_name
    from policyalign.registry import Registry
    from policyalign.stages import eval_key, synthesize_key, synthesize_options

    names = ["Qwen2.5-7B", "qwen2.5-7b", " QWEN2.5-7B "]
    assert weights_key(resolve_model(names[0])) is None, "not downloaded"
    assert {keyed_name(resolve_model(name)) for name in names} == {"Qwen2.5-7B"}
    assert keyed_name(resolve_model("qwen2.5-7b@v1")) == "Qwen2.5-7B@v1", "the revision still counts"
    pack = Registry([fixture_packs]).load("root-pack")
    assert len({synthesize_key(pack, name, synthesize_options(name, "tiny", 2, None, 0, None, 16)) for name in names}) == 1
    assert len({eval_key(Path("run"), pack, name, "before", {"judge": "refusal"}) for name in names}) == 1


@pytest.mark.parametrize("text", ["[1, 2]", '"config"', "null"])
def test_a_config_json_that_is_not_an_object_is_a_model_error(tmp_path: Path, text: str) -> None:
    """transformers indexes config.json's value as a dict: an array or a string was a TypeError traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny.tiny_model_path(), model)
    (model / "config.json").write_text(text)
    with pytest.raises(ModelError, match="config.json holds .*not the JSON object") as info:
        load_model(str(model), device="cpu")
    assert info.value.problem.file == str(model / "config.json")
    assert "save_pretrained" in info.value.problem.hint


def test_an_adapter_named_as_a_hub_repository_is_told_to_pull_it_first(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa eval general --model tiny --adapter org/name@TAG`, the name a model card or `pa pull --pack` gives,
    said only "adapter directory not found" and to pass a run's directory: nothing of `pa pull`, which
    verifies it and prints the `pa eval` command with its path. A mistyped path keeps the old hint."""
    from policyalign.models import check_adapter_dir

    monkeypatch.chdir(tmp_path)
    for named in ("acme/tiny-general", "acme/tiny-general@general-v1.0.0"):
        with pytest.raises(InvalidInputError) as raised:
            check_adapter_dir(Path(named))
        assert f"if {named} is a published adapter, pull it first: `pa pull {named}`" in raised.value.problem.hint
    for path in ("./runs/x/adapter", "runs/x/adapter", str(tmp_path / "typo")):
        with pytest.raises(InvalidInputError) as raised:
            check_adapter_dir(Path(path))
        assert "pa pull" not in raised.value.problem.hint
