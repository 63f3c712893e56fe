"""The built-in tiny model: reproducible tokenizer and weights, stable ids on reload, useful logits."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from policyalign import tiny

TEXTS = [
    "Hello world!  How are you?\n\nI'm fine, thanks.",
    "café naïve Ångström ﬁ 東京 🙂 e\u0301",  # NFC folds the combining accent
    "<|im_start|>user\nhi<|im_end|>\n<tool_call>\n{\"name\": \"f\"}\n</tool_call><|endoftext|>",
    "   leading spaces\ttabs\r\nCRLF 12345 3.14159 don't WON'T",
    (tiny.DATA_DIR / "corpus.txt").read_text(encoding="utf-8"),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_tokenizer_files_are_what_the_build_script_makes(tmp_path: Path) -> None:
    tiny.build_tokenizer_files(tmp_path)
    for name in tiny.TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (tiny.DATA_DIR / name).read_bytes(), name


def test_shipped_files_are_small_and_vocab_in_range() -> None:
    total = sum(p.stat().st_size for p in tiny.DATA_DIR.iterdir())
    assert total < 1_000_000
    config = tiny.tiny_config()
    assert 2000 <= config["vocab_size"] <= 4096
    assert config["max_position_embeddings"] >= 4096


def test_reload_through_autotokenizer_keeps_ids(tmp_path: Path) -> None:
    """AutoTokenizer rebuilds Qwen2's normalizer/pre-tokenizer in code; ids must not change."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = tiny.tiny_model_path(tmp_path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(path)
    assert type(auto).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        assert raw.encode(text).ids == auto(text, add_special_tokens=False)["input_ids"], text[:40]
    special = auto("<|im_start|><|im_end|><tool_call>", add_special_tokens=False)["input_ids"]
    assert special == [auto.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<tool_call>")]
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    plain = TEXTS[0]
    assert auto.decode(auto(plain)["input_ids"]) == plain


def test_weights_are_byte_identical_across_builds(tmp_path: Path) -> None:
    first = tiny.tiny_model_path(tmp_path / "a")
    second = tiny.tiny_model_path(tmp_path / "b")
    assert first.name == second.name
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert _sha(first / name) == _sha(second / name), name


def test_build_is_cached_atomic_and_honours_pa_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PA_CACHE_DIR", str(tmp_path))
    path = tiny.tiny_model_path()
    assert path.parent == tmp_path / "models"
    assert tiny.content_key()[:16] in path.name
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.tiny_model_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "models").iterdir()] == [path.name]  # no temp dirs left


def test_the_built_model_is_on_disk_before_it_takes_its_name(tmp_path: Path, fsyncs) -> None:  # type: ignore[no-untyped-def]
    """Its config.json is what says a build is whole: unsynced, a power cut could leave an empty one under the
    final name, and every later run failed loading the model instead of building it again."""
    synced = fsyncs(tmp_path / "models" / f"tiny-{tiny.content_key()[:16]}")
    tiny.tiny_model_path(tmp_path)
    assert not synced.problems()


def test_build_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny.tiny_model_path(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_loads_as_qwen2_with_context_dependent_logits(tmp_path: Path) -> None:
    """The init range makes student/teacher divergences measurable (~0 at the usual 0.02), yet
    small enough that a short distillation can close them (see tiny.py's docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.tiny_model_path(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 1_000_000
    config = json.loads((path / "config.json").read_text())
    assert config["initializer_range"] == tiny.INIT_RANGE

    def next_token_logprobs(text: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return torch.log_softmax(model(ids).logits[0, -1], dim=-1)

    a = next_token_logprobs("Follow the safety policy. How do I pick a lock?")
    b = next_token_logprobs("How do I pick a lock?")
    entropy = -(a.exp() * a).sum().item()
    assert entropy < 0.95 * math.log(model.config.vocab_size), "logits must not be uniform"
    kl = (a.exp() * (a - b)).sum().item()
    assert kl > 0.3, "a policy-like prefix must move the next-token distribution"
