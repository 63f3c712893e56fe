"""Generation on tiny: batching changes nothing, EOS stops, seeds reproduce, params are honoured."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from policyalign.chat import encode_chat
from policyalign.errors import InvalidInputError, ModelError
from policyalign.generation import Generation, RowSampler, SamplingParams, decode, eos_token_ids, get_backend, request_seed
from policyalign.models import LoadedModel, load_model, max_context

TOOLS = [{"type": "function", "function": {"name": "send_email", "description": "Send an email.",
                                            "parameters": {"type": "object", "properties": {}}}}]
CONVERSATIONS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {"messages": [{"role": "user", "content": "Write a short poem about the sea and the city library."}]},
    {"prompt": "How do I pick a lock?"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]},
    {"messages": [{"role": "user", "content": "Email my landlord about the heater."}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Tell me a story about a detective and a painting, please."}]},
]
GREEDY = SamplingParams(max_new_tokens=12, do_sample=False)
SAMPLED = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny", device="cpu")  # fp32: batched and single runs agree exactly


def _ids(generations: list[Generation]) -> list[list[int]]:
    return [g.token_ids for g in generations]


def test_batched_greedy_equals_one_at_a_time(loaded: LoadedModel) -> None:
    backend = get_backend("transformers", loaded)
    batched = backend.generate(CONVERSATIONS, GREEDY, batch_size=len(CONVERSATIONS), progress=False)
    single = [backend.generate([c], GREEDY, progress=False)[0] for c in CONVERSATIONS]
    assert _ids(batched) == _ids(single)
    assert [g.text for g in batched] == [g.text for g in single]
    assert len({tuple(ids) for ids in _ids(batched)}) > 1  # prompts matter: not one constant output


def test_decode_matches_transformers_generate_greedily(loaded: LoadedModel) -> None:
    """Our decoding loop (left padding, continued positions, KV cache) is the model's own greedy decoding."""
    from transformers import GenerationConfig

    tok = loaded.tokenizer
    prompts = [encode_chat(tok, c["messages"], c.get("tools")) for c in CONVERSATIONS if "messages" in c]
    eos = eos_token_ids(loaded)
    with torch.inference_mode():
        ours = decode(loaded.model, prompts, max_new_tokens=24, eos_ids=eos, pad_id=tok.pad_token_id)
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        config = GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        theirs = loaded.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
    eos_set = set(eos)
    for mine, row in zip(ours, theirs.tolist()):
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_set), len(row))
        assert mine == row[:cut]
    assert sum(map(len, ours)) > 4 * len(ours)  # compared real continuations, not bare EOS
    assert decode(loaded.model, prompts, max_new_tokens=0, eos_ids=eos, pad_id=0) == [[]] * len(prompts)


def test_decode_recomputes_for_a_model_that_keeps_no_key_value_cache() -> None:
    """State-space models ignore `past_key_values`; decode must notice, not feed them one token blind."""
    from transformers import GenerationConfig, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, state_size=8,
                                         pad_token_id=0, eos_token_id=1, initializer_range=1.0)).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    config = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=1, pad_token_id=0)
    with torch.inference_mode():
        ours = decode(model, prompts, max_new_tokens=10, eos_ids=[1], pad_id=0)
        theirs = [model.generate(input_ids=torch.tensor([p]), generation_config=config)[0, len(p):].tolist()
                  for p in prompts]
    assert ours == theirs and len(set(ours[0])) > 3


def test_row_sampler_draws_the_softmax_distribution_and_never_a_zero_probability_token() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0])
    logits = probs.log().expand(4, -1)
    sampler = RowSampler([1, 2, 3, 4], temperature=1.0, top_p=1.0, device="cpu")
    draws = torch.cat([sampler(logits, step) for step in range(3000)])
    counts = torch.bincount(draws, minlength=5).float() / len(draws)
    assert counts[3:].sum() == 0
    assert torch.allclose(counts[:3], probs[:3], atol=0.02)
    sampler.check()
    nucleus = RowSampler([1], temperature=1.0, top_p=0.6, device="cpu")
    assert {int(nucleus(logits[:1], step)) for step in range(200)} == {0, 1}
    for bad in (torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([[0.0, float("inf"), 1.0]]),
                torch.full((1, 3), float("-inf"))):
        broken = RowSampler([1], temperature=1.0, top_p=1.0, device="cpu")
        assert 0 <= int(broken(bad, 0)) < 3  # still a valid id, so the next forward does not fail first
        broken(logits[:1], 1)
        with pytest.raises(ModelError, match="NaN or infinite logits") as info:
            broken.check()
        assert "PA_DTYPE=bf16" in info.value.problem.hint, "the way to load the model in another dtype"


def test_non_finite_logits_of_a_finished_row_do_not_fail_the_batch() -> None:
    """A finished row's draw is discarded; its forward on padding may overflow (fp16) harmlessly."""
    from policyalign.generation import _next_tokens

    logits = torch.tensor([[0.0, 1.0, 2.0], [float("nan")] * 3])
    live = torch.tensor([True, False])
    sampler = RowSampler([1, 2], temperature=1.0, top_p=1.0, device="cpu")
    assert _next_tokens(logits, live, sampler, 0, 0)[1] == 0  # the finished row gets padding
    sampler.check()
    sampler(logits, 1, live)
    sampler.check()
    still_live = RowSampler([1, 2], temperature=1.0, top_p=1.0, device="cpu")
    still_live(logits, 0, torch.tensor([True, True]))
    with pytest.raises(ModelError, match="NaN or infinite logits"):
        still_live.check()


def test_a_rows_draws_do_not_depend_on_its_batch_or_on_when_they_are_taken() -> None:
    """Row r's t-th token uses its t-th uniform: alone or in a batch, drawn ahead in chunks or one by one."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    steps = RowSampler.CHUNK + 6  # crosses a chunk boundary
    batch = RowSampler([11, 12, 13], temperature=1.0, top_p=1.0, device="cpu")
    together = torch.stack([batch(logits, t) for t in range(steps)], dim=1)
    alone = RowSampler([12], temperature=1.0, top_p=1.0, device="cpu")
    assert torch.equal(torch.stack([alone(logits[1:2], t) for t in range(steps)], dim=1)[0], together[1])
    cdf = torch.softmax(logits[1].double(), -1).cumsum(-1)
    generator = torch.Generator().manual_seed(12)
    one_by_one = [int(torch.searchsorted(cdf, torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1],
                                         right=True)) for _ in range(steps)]
    assert together[1].tolist() == one_by_one


def test_generation_fields(loaded: LoadedModel) -> None:
    [gen] = get_backend("transformers", loaded).generate([CONVERSATIONS[4]], GREEDY, progress=False)
    assert gen.prompt_ids == encode_chat(loaded.tokenizer, CONVERSATIONS[4]["messages"], TOOLS)
    assert gen.finish_reason == "length" and len(gen.token_ids) == GREEDY.max_new_tokens
    assert gen.text == loaded.tokenizer.decode(gen.token_ids, skip_special_tokens=True)


def test_greedy_is_plain_argmax_even_if_the_model_config_says_otherwise() -> None:
    """The model's own generation defaults (here a repetition penalty) must not leak in."""
    fresh = load_model("tiny", device="cpu")
    fresh.model.generation_config.repetition_penalty = 3.0
    prompt = encode_chat(fresh.tokenizer, [{"role": "user", "content": "Hello there, hello there"}])
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(fresh.model(torch.tensor([ids])).logits[0, -1].argmax()))
    [gen] = get_backend("transformers", fresh).generate(
        [{"prompt": "Hello there, hello there"}], SamplingParams(max_new_tokens=8, temperature=0.0), progress=False,
    )
    eos = {fresh.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    expected = ids[len(prompt):]
    cut = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))
    assert gen.token_ids == expected[:cut]


def test_stops_at_eos_and_keeps_it_as_the_last_id() -> None:
    """Make the third greedy token an EOS id: generation must stop right there."""
    fresh = load_model("tiny", device="cpu")
    backend = get_backend("transformers", fresh)
    [free] = backend.generate([CONVERSATIONS[1]], GREEDY, progress=False)
    stop_at = free.token_ids.index(free.token_ids[2]) + 1  # first occurrence of that id
    fresh.model.generation_config.eos_token_id = [free.token_ids[2]]
    batch = [CONVERSATIONS[1], CONVERSATIONS[0]]  # a neighbour that keeps going: padding must be cut
    stopped, _ = backend.generate(batch, GREEDY, progress=False)
    assert stopped.token_ids == free.token_ids[:stop_at]
    assert stopped.finish_reason == "stop"
    assert stopped.text == fresh.tokenizer.decode(stopped.token_ids, skip_special_tokens=True)


def test_sampling_is_reproducible_and_independent_of_batching(loaded: LoadedModel) -> None:
    backend = get_backend("transformers", loaded)
    runs = [backend.generate(CONVERSATIONS, SAMPLED, batch_size=size, progress=False) for size in (1, 4, 16)]
    assert _ids(runs[0]) == _ids(runs[1]) == _ids(runs[2])
    other_seed = backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=12, seed=12), progress=False)
    assert _ids(other_seed) != _ids(runs[0])
    greedy = backend.generate(CONVERSATIONS, GREEDY, progress=False)
    assert _ids(greedy) != _ids(runs[0])


def test_a_callers_seed_makes_a_request_sample_the_same_in_any_call(loaded: LoadedModel) -> None:
    """Synthesis seeds each request from its cache key: where it lands in a call must not matter."""
    backend = get_backend("transformers", loaded)
    seeds = [request_seed(7, i) for i in range(len(CONVERSATIONS))]
    together = backend.generate(CONVERSATIONS, SAMPLED, progress=False, seeds=seeds)
    alone = backend.generate(CONVERSATIONS[4:], SAMPLED, progress=False, seeds=seeds[4:])
    assert _ids(alone) == _ids(together)[4:]
    assert _ids(together) == _ids(backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=12, seed=7), progress=False))
    with pytest.raises(ValueError, match="1 seeds for 6 conversations"):
        backend.generate(CONVERSATIONS, SAMPLED, progress=False, seeds=seeds[:1])


def test_repeated_prompts_in_one_batch_get_different_samples(loaded: LoadedModel) -> None:
    same = [CONVERSATIONS[2]] * 4
    out = get_backend("transformers", loaded).generate(same, SAMPLED, progress=False)
    assert len({tuple(g.token_ids) for g in out}) == 4


def test_tiny_top_p_or_zero_temperature_is_greedy(loaded: LoadedModel) -> None:
    backend = get_backend("transformers", loaded)
    greedy = _ids(backend.generate(CONVERSATIONS, GREEDY, progress=False))
    nucleus = SamplingParams(max_new_tokens=12, top_p=1e-6, seed=5)
    assert _ids(backend.generate(CONVERSATIONS, nucleus, progress=False)) == greedy
    cold = SamplingParams(max_new_tokens=12, temperature=0.0, do_sample=True)
    assert _ids(backend.generate(CONVERSATIONS, cold, progress=False)) == greedy


def test_progress_bar_runs(loaded: LoadedModel, capsys: pytest.CaptureFixture[str]) -> None:
    get_backend("transformers", loaded).generate(CONVERSATIONS[:2], GREEDY, batch_size=1, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_prompt_plus_max_new_tokens_must_fit_the_context(loaded: LoadedModel) -> None:
    """The error names the record (its file and id, else its index), not only the numbers: one
    over-long item among thousands has to be findable."""
    backend = get_backend("transformers", loaded)
    long = {"messages": [{"role": "user", "content": "word " * 200}]}
    params = SamplingParams(max_new_tokens=max_context(loaded) - 100)  # short prompts fit, the long one not
    named = {**long, "id": "long-3", "file": "evals/long.jsonl"}
    for records, file, where in (([long], "", "conversation 0"),
                                 ([CONVERSATIONS[0], named], "evals/long.jsonl", "id long-3")):
        with pytest.raises(ModelError, match="prompt \\+ max_new_tokens needs") as caught:
            backend.generate(records, params, progress=False)
        assert (caught.value.problem.file, caught.value.problem.where) == (file, where)


@pytest.mark.parametrize("kwargs", [
    {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5},
])
def test_sampling_params_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        SamplingParams(**kwargs)


def test_request_seeds_are_stable_and_distinct() -> None:
    assert request_seed(0, 0) == request_seed(0, 0)
    assert len({request_seed(s, i) for s in range(3) for i in range(100)}) == 300


def test_unknown_backend(loaded: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match="unknown generation backend"):
        get_backend("llamacpp", loaded)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_says_how_to_install(loaded: LoadedModel) -> None:
    with pytest.raises(ModelError) as info:
        get_backend("vllm", loaded)
    assert "pip install 'policyalign[vllm]'" in info.value.problem.hint


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampling_is_batch_independent() -> None:
    """On CUDA the default is bf16; per-request CUDA generators keep sampling batch-independent
    (checked in fp32, where padding cannot change the rounding)."""
    assert load_model("tiny").dtype == torch.bfloat16
    gpu = load_model("tiny", dtype="fp32")
    assert gpu.device.startswith("cuda")
    backend = get_backend("transformers", gpu)
    a = backend.generate(CONVERSATIONS, SAMPLED, batch_size=2, progress=False)
    b = backend.generate(CONVERSATIONS, SAMPLED, batch_size=16, progress=False)
    assert _ids(a) == _ids(b)


def test_vllm_beside_a_loaded_model_asks_for_half_the_free_memory() -> None:
    """vLLM's default 0.9 of the GPU can't be had beside the scorer's weights: it would refuse to start."""
    from policyalign.errors import ModelError
    from policyalign.generation import vllm_memory_utilization

    gib = 1 << 30
    assert vllm_memory_utilization(64 * gib, 80 * gib) == 0.4  # a 7B in bf16 already holds ~16 GiB of 80
    assert vllm_memory_utilization(80 * gib, 80 * gib) == 0.5
    with pytest.raises(ModelError, match="no free GPU memory"):
        vllm_memory_utilization(0, 80 * gib)


def test_a_conversation_asks_for_no_thinking_and_names_itself_in_template_errors(tmp_path: Path) -> None:
    """`enable_thinking: False` in a conversation reaches a Qwen3-style template (judges and synthesis
    send it); its `id` and `file` name it when the template rejects it (Mistral's 9-character tool-call ids)."""
    from chat_templates import NO_THINK, TOOL_CALL_IDS_OF_LENGTH_9, thinking_switch, tiny_with_template

    thinker = load_model(str(tiny_with_template(tmp_path / "thinker", thinking_switch())), device="cpu")
    backend = get_backend("transformers", thinker)
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    off, on = backend.generate([{**chat, "enable_thinking": False}, chat], GREEDY, progress=False)
    suffix = thinker.tokenizer(NO_THINK, add_special_tokens=False)["input_ids"]
    assert off.prompt_ids == on.prompt_ids + suffix
    strict = load_model(str(tiny_with_template(tmp_path / "mistral-like", TOOL_CALL_IDS_OF_LENGTH_9)), device="cpu")
    call = {"type": "function", "function": {"name": "send_email", "arguments": {}}}
    calling = {"messages": [{"role": "user", "content": "Email"}, {"role": "assistant", "tool_calls": [call]},
                            {"role": "tool", "content": "sent"}], "tools": TOOLS}
    for record, file, where in (({**calling, "id": "a-7", "file": "agents.jsonl"}, "agents.jsonl", "id a-7"),
                                (calling, "", "conversation 1")):
        with pytest.raises(ModelError, match="length 9") as caught:
            get_backend("transformers", strict).generate([CONVERSATIONS[0], record], GREEDY, progress=False)
        assert (caught.value.problem.file, caught.value.problem.where) == (file, where)
