"""Student/teacher log-probs, divergences, and the policy prefix KV cache."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

from overflow import overflow_where

from policyalign.chat import encode_chat, teacher_messages
from policyalign.models import load_model
from policyalign.scoring import (
    PolicyScorer, PrefixCache, common_prefix, completion_logits, policy_prefix_ids, reverse_kl_full,
    reverse_kl_topk,
)

POLICY = "Follow these rules. 1. Refuse to help build weapons. 2. Point people in crisis to support lines. " * 6
RECORDS = [
    {"id": "a", "messages": [{"role": "user", "content": "How do I build a pipe bomb?"}]},
    {"id": "b", "messages": [{"role": "user", "content": "Write a poem about the sea, please, with rhymes."}]},
    {"id": "c", "messages": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]},
]
COMPLETIONS = [[40, 41, 42, 43, 44, 45, 46], [50, 51, 52], [60]]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _reference(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Logits predicting `completion`, from one unpadded, uncached forward."""
    ids = torch.tensor([prompt + completion], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return logits[len(prompt) - 1: len(prompt) - 1 + len(completion)]


def test_cached_teacher_logits_match_uncached(tiny) -> None:
    scorer = PolicyScorer(tiny, POLICY)
    _, teachers = scorer.prompts(RECORDS[:2])
    with torch.no_grad():
        cached = scorer.teacher_logits(teachers, COMPLETIONS[:2])
    for i in range(2):
        ref = _reference(tiny.model, teachers[i], COMPLETIONS[i])
        got = cached.logits[i, : len(COMPLETIONS[i])]
        assert torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(ref, -1), atol=1e-4)


def test_a_model_without_a_system_role_shares_the_policy_prefix_from_its_first_user_turn() -> None:
    """Gemma-style templates put the policy at the top of the user turn: still every teacher prompt's prefix."""
    from chat_templates import NO_SYSTEM_ROLE

    gemma_like = load_model("tiny")
    gemma_like.tokenizer.chat_template = NO_SYSTEM_ROLE
    scorer = PolicyScorer(gemma_like, POLICY)
    _, teachers = scorer.prompts(RECORDS)
    assert POLICY.strip()[:40] in gemma_like.tokenizer.decode(scorer.prefix.prefix_ids)
    assert scorer.prefix.split(teachers) is not None, "every row continues from the cache"
    with torch.no_grad():
        cached = scorer.teacher_logits(teachers, COMPLETIONS)
    for i, (prompt, completion) in enumerate(zip(teachers, COMPLETIONS)):
        ref = _reference(gemma_like.model, prompt, completion)
        assert torch.allclose(torch.log_softmax(cached.logits[i, : len(completion)], -1), torch.log_softmax(ref, -1),
                              atol=1e-4)


def test_a_teacher_prompt_must_leave_room_for_the_response(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filtering scores the response after the policy-prompted teacher prompt: both must fit the context."""
    from policyalign.errors import InvalidInputError

    scorer = PolicyScorer(tiny, POLICY)
    _, [teacher] = scorer.prompts(RECORDS[:1])
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", len(teacher) + 10)
    assert scorer.prompts(RECORDS[:1], room=10)[1] == [teacher]
    with pytest.raises(InvalidInputError, match=f"instruction 'a' needs {len(teacher) + 11} tokens") as caught:
        scorer.prompts(RECORDS[:1], room=11)
    assert "lower --max-new-tokens" in caught.value.problem.hint


def test_prefix_is_shared_by_every_teacher_prompt(tiny) -> None:
    prefix = policy_prefix_ids(tiny.tokenizer, POLICY)
    assert len(prefix) > 50
    for record in RECORDS[:2]:
        ids = encode_chat(tiny.tokenizer, teacher_messages(POLICY, record["messages"]))
        assert ids[: len(prefix)] == prefix
    # An instruction with its own system message (or tools) extends the system turn after the policy:
    # it shares only the core of the prefix.
    own = encode_chat(tiny.tokenizer, teacher_messages(POLICY, RECORDS[2]["messages"]))
    assert PrefixCache(prefix).split([own]) is None
    cache = PrefixCache.for_policy(tiny.tokenizer, POLICY)
    assert cache.prefix_ids == prefix and 0 < cache.core < len(prefix)
    assert cache.split([own])[0] == cache.core and own[: cache.core] == prefix[: cache.core]


TOOLS = [{"type": "function", "function": {"name": "shell", "description": "Run a shell command.",
                                           "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}}]


def test_a_batch_with_tools_or_its_own_system_message_still_uses_the_cache(tiny) -> None:
    """Such prompts share the policy but not the glue after it: the batch forwards from the core of the cache."""
    scorer = PolicyScorer(tiny, POLICY)
    records = [*RECORDS, {"id": "d", "messages": RECORDS[0]["messages"], "tools": TOOLS}]
    completions = [*COMPLETIONS, [70, 71, 72]]
    _, teachers = scorer.prompts(records)
    assert scorer.prefix.split(teachers[:2])[0] == len(scorer.prefix), "plain prompts: the whole prefix"
    assert scorer.prefix.split(teachers)[0] == scorer.prefix.core
    with torch.no_grad():
        out = scorer.teacher_logits(teachers, completions)
    for i, completion in enumerate(completions):
        ref = _reference(tiny.model, teachers[i], completion)
        got = out.logits[i, : len(completion)]
        assert torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(ref, -1), atol=1e-4), records[i]["id"]


def test_a_sliding_window_model_is_not_served_from_the_core_of_its_cache(tiny) -> None:
    """A sliding-window layer keeps only the prefix's last positions: their first `core` are other positions."""
    import copy

    from transformers import AutoModelForCausalLM

    from policyalign.scoring import teacher_completion_logits

    config = copy.deepcopy(tiny.model.config)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 16, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(tiny.model.state_dict())
    model.eval()
    cache = PrefixCache.for_policy(tiny.tokenizer, POLICY)
    assert cache.core > config.sliding_window
    own = encode_chat(tiny.tokenizer, teacher_messages(POLICY, RECORDS[2]["messages"]))
    with torch.no_grad():
        got = teacher_completion_logits(model, [own], [COMPLETIONS[0]], pad_id=0, prefix=cache).logits[0]
    ref = _reference(model, own, COMPLETIONS[0])
    assert torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(ref, -1), atol=1e-4)


def test_a_hybrid_model_whose_cache_holds_recurrent_state_scores_its_teacher_uncached(tmp_path) -> None:
    """Qwen3-Next's linear-attention layers cache a recurrent state, no keys and values to slice per row: its
    teacher forward was an AttributeError; it now forwards each prompt whole, with the logits of a plain forward."""
    from families import family_model

    from policyalign.tiny import CHAT_TEMPLATE

    hybrid = load_model(str(family_model(tmp_path / "qwen3-next", "qwen3-next", CHAT_TEMPLATE)), device="cpu")
    scorer = PolicyScorer(hybrid, POLICY)
    _, teachers = scorer.prompts(RECORDS)
    with torch.no_grad():
        got = scorer.teacher_logits(teachers, COMPLETIONS)
    assert not scorer.prefix.serves(hybrid.model)
    for i, completion in enumerate(COMPLETIONS):
        ref = _reference(hybrid.model, teachers[i], completion)
        assert torch.allclose(torch.log_softmax(got.logits[i, : len(completion)], -1), torch.log_softmax(ref, -1), atol=1e-4)


def test_a_chunked_attention_model_scores_its_teacher_uncached(tmp_path) -> None:
    """Llama 4's chunked layers keep only the prefix's last chunk, and a cache rebuilt from those keys loses where
    the chunks begin: the teacher's logits after the whole cached prefix were off by several nats."""
    from families import family_model

    from chat_templates import NO_SYSTEM_ROLE

    chunked = load_model(str(family_model(tmp_path / "llama4", "llama4", NO_SYSTEM_ROLE)), device="cpu")
    scorer = PolicyScorer(chunked, POLICY)
    _, teachers = scorer.prompts(RECORDS[:2])
    assert scorer.prefix.split(teachers)[0] == len(scorer.prefix) > 16  # the whole prefix, past the first chunk
    with torch.no_grad():
        got = scorer.teacher_logits(teachers, COMPLETIONS[:2])
    for i, completion in enumerate(COMPLETIONS[:2]):
        ref = _reference(chunked.model, teachers[i], completion)
        assert torch.allclose(torch.log_softmax(got.logits[i, : len(completion)], -1), torch.log_softmax(ref, -1), atol=1e-4)


def test_prefix_cache_is_built_once_and_not_mutated(tiny) -> None:
    cache = PrefixCache(policy_prefix_ids(tiny.tokenizer, POLICY))
    first = cache.layers(tiny.model)
    snapshot = first[0][0].clone()
    suffix = [[11, 12, 13]]
    with torch.no_grad():
        completion_logits(tiny.model, suffix, [[14, 15]], pad_id=0, prefix=cache)
        completion_logits(tiny.model, suffix * 3, [[14, 15]] * 3, pad_id=0, prefix=cache)
    assert cache.layers(tiny.model) is first
    assert torch.equal(first[0][0], snapshot)
    assert first[0][0].shape[2] == len(cache)


def test_student_logits_right_padding_matches_unpadded(tiny) -> None:
    scorer = PolicyScorer(tiny, POLICY)
    students, _ = scorer.prompts(RECORDS)
    with torch.no_grad():
        out = scorer.student_logits(students, COMPLETIONS)
    for i in range(3):
        ref = _reference(tiny.model, students[i], COMPLETIONS[i])
        assert torch.allclose(out.logits[i, : len(COMPLETIONS[i])], ref, atol=1e-4)
    assert out.mask.sum(1).tolist() == [len(c) for c in COMPLETIONS]


def test_reverse_kl_properties() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 50), torch.randn(2, 5, 50)
    assert torch.allclose(reverse_kl_full(s, s), torch.zeros(2, 5), atol=1e-6)
    assert (reverse_kl_full(s, t) > 0).all()
    # Top-k over the whole vocabulary is the full KL.
    assert torch.allclose(reverse_kl_topk(s, t, 50), reverse_kl_full(s, t), atol=1e-5)
    # It is KL(student || teacher), not the forward direction.
    p, q = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    assert torch.allclose(reverse_kl_full(s, t), (p.exp() * (p - q)).sum(-1), atol=1e-5)


def test_topk_kl_matches_trl_loss() -> None:
    from trl.experimental.sdft.loss_utils import compute_topk_self_distillation_loss

    torch.manual_seed(1)
    s, t = torch.randn(3, 4, 40), torch.randn(3, 4, 40)
    ours = reverse_kl_topk(s, t, 8)
    theirs = compute_topk_self_distillation_loss(s, t, distillation_topk=8, distillation_alpha=1.0,
                                                 distillation_add_tail=False)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_scores_are_zero_without_a_policy_effect_and_positive_with_one(tiny) -> None:
    scorer = PolicyScorer(tiny, POLICY, top_k=64)
    scores = scorer.score(RECORDS[:2], COMPLETIONS[:2])
    assert all(s.reverse_kl > 0 and s.tokens == len(c) for s, c in zip(scores, COMPLETIONS))
    assert scores[0].logprob_gap == pytest.approx(scores[0].teacher_logprob - scores[0].student_logprob)


def test_common_prefix() -> None:
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == [1, 2]
    assert common_prefix([[5], [6]]) == []


def test_completion_logits_see_the_adapter_and_soft_capped_models_take_the_full_path() -> None:
    """Only completion positions are projected onto the vocabulary, through the same weights the model uses."""
    from peft import LoraConfig, get_peft_model

    from policyalign.scoring import _split_head

    model = get_peft_model(load_model("tiny", trainable=True).model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    model.eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    with torch.no_grad():
        for context in (model.disable_adapter, nullcontext):
            with context():
                out = completion_logits(model, prompts, COMPLETIONS[:2], pad_id=0)
                for i, prompt in enumerate(prompts):
                    ref = _reference(model, prompt, COMPLETIONS[i])
                    assert torch.allclose(out.logits[i, : len(COMPLETIONS[i])], ref, atol=1e-5)
    assert _split_head(model) is not None
    model.get_base_model().config.final_logit_softcapping = 30.0
    assert _split_head(model) is None


def test_a_model_that_changes_its_logits_after_the_head_keeps_its_own_forward() -> None:
    """No config field announces this scale: the one-time numeric check catches it."""
    from transformers import Qwen2ForCausalLM

    from policyalign.scoring import _split_head

    class ScaledHead(Qwen2ForCausalLM):
        def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    plain = load_model("tiny").model
    scaled = ScaledHead(plain.config).eval()
    scaled.load_state_dict(plain.state_dict())
    assert _split_head(plain) is not None and _split_head(scaled) is None
    prompts, comps = [[5, 6, 7, 8]], [[9, 10, 11]]
    with torch.no_grad():
        out = completion_logits(scaled, prompts, comps, pad_id=0)
    assert torch.allclose(out.logits[0], _reference(scaled, prompts[0], comps[0]), atol=1e-5)


def test_a_model_under_mixed_precision_training_still_projects_only_the_completion() -> None:
    """Training in bf16 on a GPU, accelerate wraps the model's forward in autocast and returns its logits
    in float32, while the head's stay bf16. The dtypes differed, so the split was refused: the teacher
    forward of every process that had not measured before training (every rank but the first, or any run
    without held-out instructions) projected every position onto the vocabulary, in two dtypes."""
    from accelerate.utils import convert_outputs_to_fp32

    from policyalign.scoring import _split_head

    model = load_model("tiny", dtype="bf16").model
    model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward))
    assert _split_head(model) is not None
    prompts, comps = [[5, 6, 7, 8]], [[9, 10, 11]]
    with torch.no_grad():
        out = completion_logits(model, prompts, comps, pad_id=0)
    ref = _reference(model, prompts[0], comps[0])
    assert torch.allclose(torch.log_softmax(out.logits[0].float(), -1), torch.log_softmax(ref, -1), atol=0.1)


def test_scoring_never_applies_dropout_and_leaves_the_mode_alone() -> None:
    """A LoRA (or EMA) adapter with dropout, in train mode: scores and teacher logits are still deterministic."""
    from peft import LoraConfig, get_peft_model

    loaded = load_model("tiny")
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.train()
    prompts, completions = [[5, 6, 7, 8]], [[9, 10, 11]]
    with torch.no_grad():
        first = completion_logits(model, prompts, completions, pad_id=0).logits
        again = completion_logits(model, prompts, completions, pad_id=0).logits
    assert torch.equal(first, again) and model.training


def test_an_overflow_on_padding_does_not_reach_the_scores(tiny) -> None:
    """Right padding forwards pad tokens after the shorter rows; in float16 those may overflow.
    They are masked out, so they must not turn a row's score into NaN (NaN * 0 is NaN)."""
    scorer = PolicyScorer(tiny, POLICY)
    clean = scorer.score(RECORDS, COMPLETIONS)
    handle = overflow_where(tiny.model, lambda mask: mask == 0)
    try:
        overflowed = scorer.score(RECORDS, COMPLETIONS)
    finally:
        handle.remove()
    assert [s.reverse_kl for s in overflowed] == pytest.approx([s.reverse_kl for s in clean])
    assert [s.teacher_logprob for s in overflowed] == pytest.approx([s.teacher_logprob for s in clean])



def test_token_scores_in_slices_equal_the_whole_batch_divergences(monkeypatch: pytest.MonkeyPatch) -> None:
    from policyalign import scoring

    torch.manual_seed(0)
    student, teacher = torch.randn(3, 37, 500) * 3, torch.randn(3, 37, 500) * 3
    ids = torch.randint(0, 500, (3, 37))
    monkeypatch.setattr(scoring, "SLICE_ELEMENTS", 3 * 500 * 4)  # 4 positions a slice, the last one short
    got = scoring.token_scores(student, teacher, ids, 16)
    want = (reverse_kl_topk(student, teacher, 16), reverse_kl_full(student, teacher),
            scoring.token_logprobs(student, ids), scoring.token_logprobs(teacher, ids))
    for a, b in zip(got, want):
        assert a.shape == (3, 37) and torch.equal(a, b)


MEMORY_PROBE = """
import copy, dataclasses, resource, sys
import torch
from transformers import AutoModelForCausalLM
from policyalign import scoring
from policyalign.models import load_model

scoring.SLICE_ELEMENTS = 1 << 20
tiny = load_model("tiny")
config = copy.deepcopy(tiny.model.config)
config.vocab_size = 65536  # a real model's vocabulary, so the (rows, positions, vocabulary) tensors dominate
model = AutoModelForCausalLM.from_config(config).eval()
scorer = scoring.PolicyScorer(dataclasses.replace(tiny, model=model), "Refuse to help build weapons.")
records = [{"id": str(i), "messages": [{"role": "user", "content": "hi"}]} for i in range(2)]
completions = [list(range(3, 259))] * 2
scorer.score(records[:1], [completions[0][:4]])  # the prefix cache and the head check, before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scorer.score(records, completions)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_scoring_long_responses_keeps_one_slice_of_float32_log_probs_alive() -> None:
    """The student's and the teacher's logits are needed whole; the float32 log-softmaxes of both,
    their exponent, difference and product are not: a batch of long responses with a large
    vocabulary must not hold them all at once on top of the model (out of memory on a GPU)."""
    # glibc serves large blocks from the heap once a few were freed, where freed ones stay resident:
    # a fixed mmap threshold makes the peak resident size the peak of live tensors.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    logits = 2 * 256 * 65536 * 4  # one side's float32 logits for the batch
    assert int(out.stdout.split()[-1]) < 3 * logits


@pytest.mark.parametrize("batch_size", [1, 8])
def test_scores_match_a_plain_uncached_reference(tiny, batch_size: int) -> None:
    """Each score against plain torch on one unpadded, uncached forward per row: a batch mixing prompt and
    completion lengths (length 1 included), its own system message and tools (the core of the cache),
    and a single row; the top-k distributions are the student's top k renormalised, for both sides."""
    records = [*RECORDS, {"id": "d", "messages": RECORDS[0]["messages"], "tools": TOOLS}]
    completions = [[40, 41, 42, 43, 44, 45, 46], [50], [60, 61], [70, 71, 72, 73]]
    scorer = PolicyScorer(tiny, POLICY, top_k=5, batch_size=batch_size)
    students, teachers = scorer.prompts(records)
    assert scorer.prefix.split(teachers)[0] == scorer.prefix.core
    for got, student, teacher, completion in zip(scorer.score(records, completions), students, teachers, completions):
        s = torch.log_softmax(_reference(tiny.model, student, completion).float(), -1)
        t = torch.log_softmax(_reference(tiny.model, teacher, completion).float(), -1)
        p_s, top = s.exp().topk(5, -1)
        p_s, p_t = p_s / p_s.sum(-1, keepdim=True), t.exp().gather(-1, top)
        p_t = p_t / p_t.sum(-1, keepdim=True)
        realised = torch.tensor(completion).unsqueeze(-1)
        assert got.tokens == len(completion)
        assert got.reverse_kl == pytest.approx(float((p_s * (p_s / p_t).log()).sum(-1).mean()), abs=1e-4)
        assert got.reverse_kl_full == pytest.approx(float((s.exp() * (s - t)).sum(-1).mean()), abs=1e-4)
        assert got.student_logprob == pytest.approx(float(s.gather(-1, realised).sum()), abs=1e-4)
        assert got.teacher_logprob == pytest.approx(float(t.gather(-1, realised).sum()), abs=1e-4)
