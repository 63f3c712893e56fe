"""Student and teacher log-probs over the same completion, their divergence, and the prefix cache.

The student sees an instruction's messages; the teacher sees the same messages after the
policy as system message. Both score the *same* completion tokens, so their per-token
distributions can be compared position by position: the reverse KL(student || teacher) is
what Policy-Sensitive Filtering ranks by and what distillation minimises.

Every teacher prompt starts with the same tokens (the chat template's system turn holding
the policy). `PrefixCache` encodes that prefix once per teacher version and every batch
continues from it (suffixes right-padded, position ids continued), instead of re-reading a
policy of hundreds of tokens for every sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .chat import encode_chat, student_messages, teacher_messages
from .errors import InvalidInputError

if TYPE_CHECKING:
    import torch

    from .models import LoadedModel

TeacherContext = Callable[[], AbstractContextManager[Any]]


# --------------------------------------------------------------------------- divergences


def _log_probs(logits: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


def _kl(s: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor":
    """KL(student || teacher) from log-probs over the last dimension."""
    return (s.exp() * (s - t)).sum(-1)


def _kl_topk(s: "torch.Tensor", t: "torch.Tensor", k: int) -> "torch.Tensor":
    """KL(student || teacher) from log-probs, on the student's top-k support, both renormalised there."""
    import torch

    k = min(k, s.size(-1)) if k > 0 else s.size(-1)
    s_top, idx = torch.topk(s, k, dim=-1)
    t_top = torch.gather(t, -1, idx)
    s_top = s_top - torch.logsumexp(s_top, dim=-1, keepdim=True)
    t_top = t_top - torch.logsumexp(t_top, dim=-1, keepdim=True)
    return _kl(s_top, t_top)


def reverse_kl_full(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor") -> "torch.Tensor":
    """Per-position KL(student || teacher) over the full vocabulary: (..., V) -> (...)."""
    return _kl(_log_probs(student_logits), _log_probs(teacher_logits))


def reverse_kl_topk(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor", k: int) -> "torch.Tensor":
    """Per-position KL(student || teacher) on the student's top-k support, both renormalised there.

    This is the paper's objective (k = 256) and the same quantity trl's top-k loss computes with
    alpha = 1; `k` larger than the vocabulary means the full vocabulary.
    """
    return _kl_topk(_log_probs(student_logits), _log_probs(teacher_logits), k)


def token_logprobs(logits: "torch.Tensor", ids: "torch.Tensor") -> "torch.Tensor":
    """Log-prob of each realised token: (B, T, V), (B, T) -> (B, T)."""
    return _log_probs(logits).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


# Logits per slice in `token_scores`: 64 MiB for each float32 temporary.
SLICE_ELEMENTS = 1 << 24


def token_scores(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor", ids: "torch.Tensor",
                 k: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(top-k reverse KL, full reverse KL, student log-prob, teacher log-prob) of each position: (B, T).

    Computed over slices of positions of at most SLICE_ELEMENTS logits. Every quantity needs
    the float32 log-softmax of both sides; over a whole batch each is a (B, T, V) tensor (1.2 GB
    for 8 responses of 256 tokens with a 152k vocabulary), and computing the four one after the
    other kept about five of them alive at once, on top of the model. Each slice's log-softmaxes
    are also computed once and shared by the four, instead of six times over.
    """
    import torch

    rows, positions, vocab = student_logits.shape
    step = max(1, SLICE_ELEMENTS // max(1, rows * vocab))
    parts = []
    for start in range(0, positions, step):
        s = _log_probs(student_logits[:, start:start + step])
        t = _log_probs(teacher_logits[:, start:start + step])
        index = ids[:, start:start + step].unsqueeze(-1)
        parts.append((_kl_topk(s, t, k), _kl(s, t), s.gather(-1, index).squeeze(-1), t.gather(-1, index).squeeze(-1)))
        del s, t
    kl_top, kl_full, lp_s, lp_t = (torch.cat(columns, dim=1) for columns in zip(*parts))
    return kl_top, kl_full, lp_s, lp_t


# --------------------------------------------------------------------------- prefix cache


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run a forward in eval mode: no dropout, and no gradient checkpointing, which drops caches."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The ids every one of `sequences` starts with: how the policy's prefix is found from rendered prompts
    (`policy_prefix_ids`) without knowing any chat template's layout."""
    first = list(sequences[0])
    length = len(first)
    for seq in sequences[1:]:
        length = min(length, len(seq))
        for i in range(length):
            if seq[i] != first[i]:
                length = i
                break
    return first[:length]


def policy_prefix_ids(tokenizer: Any, policy: str) -> list[int]:
    """The token ids every teacher prompt of this policy starts with.

    Found by rendering two unrelated conversations and keeping their common prefix, so it is
    exactly what the chat template produces (system turn plus whatever glue follows) on any model.
    """
    probes = [[{"role": "user", "content": "alpha"}], [{"role": "user", "content": "Zebra 42?"}]]
    rendered = [encode_chat(tokenizer, teacher_messages(policy, p)) for p in probes]
    return common_prefix(rendered)


# A tool and a system message of the instruction's own: each continues the teacher's system turn
# after the policy, so prompts with them share only the policy part of the prefix.
_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe", "description": "A probe.",
                                                  "parameters": {"type": "object", "properties": {}}}}]
_PROBE_TURNS = [{"role": "system", "content": "Extra."}, {"role": "user", "content": "alpha"}]


def policy_core_length(tokenizer: Any, policy: str, prefix: Sequence[int]) -> int:
    """How many leading ids of `prefix` teacher prompts share even with tools or their own system message."""
    from .errors import ModelError

    variants = [encode_chat(tokenizer, teacher_messages(policy, _PROBE_TURNS))]
    try:
        variants.append(encode_chat(tokenizer, teacher_messages(policy, _PROBE_TURNS[1:]), _PROBE_TOOLS))
    except ModelError:  # a template without tools: no prompt will carry any
        pass
    return len(common_prefix([list(prefix), *variants]))


class PrefixCache:
    """The teacher's key/value cache over the policy prefix, built once per teacher version.

    Call `invalidate()` when the teacher's weights change (an EMA teacher after each sync);
    a frozen `base` teacher keeps one cache for the whole run.

    Prompts with tools or their own system message continue the system turn after the policy,
    so they share only the first `core` ids. Keys and values at a position depend only on the
    tokens up to it, so the first `core` positions of the one cache serve those prompts too.
    """

    def __init__(self, prefix_ids: list[int], core: int | None = None) -> None:
        self.prefix_ids = list(prefix_ids)
        self.core = len(self.prefix_ids) if core is None else core
        self._layers: list[tuple[Any, Any]] | None = None
        self._serves: bool | None = None  # a property of the architecture, kept across invalidate()

    @classmethod
    def for_policy(cls, tokenizer: Any, policy: str) -> "PrefixCache":
        prefix = policy_prefix_ids(tokenizer, policy)
        return cls(prefix, core=policy_core_length(tokenizer, policy, prefix))

    def __len__(self) -> int:
        return len(self.prefix_ids)

    def invalidate(self) -> None:
        self._layers = None

    def layers(self, model: Any) -> list[tuple[Any, Any]]:
        import torch

        if self._layers is None:
            from transformers import DynamicCache

            device = next(model.parameters()).device
            ids = torch.tensor([self.prefix_ids], device=device)
            cache = DynamicCache(config=model.config)
            with torch.no_grad(), eval_mode(model):
                model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
            kept = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
            self._serves = not _chunked_attention(model) and all(
                isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) for k, v in kept)
            self._layers = [(k.detach(), v.detach()) for k, v in kept] if self._serves else []
        return self._layers

    def serves(self, model: Any) -> bool:
        """Whether `model`'s cache is keys and values in every layer, which `expanded` slices and repeats per row.
        A recurrent layer's state (Mamba, the linear attention of Qwen3-Next's hybrid layers) is neither: such a
        model's teacher forwards each prompt whole, as with `--no-prefix-cache` (iterating its cache for keys was
        an AttributeError from the first teacher forward). So does a model with chunked attention (Llama 4):
        a cache rebuilt from its chunked layers' kept keys loses where the chunks begin, and the logits after it
        were other logits."""
        if self._serves is None:
            self.layers(model)
        return bool(self._serves)

    def expanded(self, model: Any, batch: int, length: int | None = None) -> Any:
        """A fresh DynamicCache of the first `length` positions for `batch` rows; the stored prefix is never mutated."""
        from transformers import DynamicCache

        n = len(self) if length is None else length
        data = [(k[:, :, :n].expand(batch, -1, -1, -1), v[:, :, :n].expand(batch, -1, -1, -1))
                for k, v in self.layers(model)]
        return DynamicCache(ddp_cache_data=data, config=model.config)

    def holds_every_position(self, model: Any) -> bool:
        """Whether every layer kept the whole prefix: a sliding-window layer keeps only its last window,
        so its first `core` positions are not there to slice (the whole prefix still continues)."""
        return all(k.shape[2] == len(self.prefix_ids) for k, _ in self.layers(model))

    def split(self, prompts: Sequence[Sequence[int]]) -> tuple[int, list[list[int]]] | None:
        """(cached length, suffixes) for a batch of teacher prompts, or None when one lacks even the core.

        The whole prefix when every prompt starts with it, else the core when every prompt
        starts with that: one batch forwards from one cached length.
        """
        for n in dict.fromkeys((len(self.prefix_ids), self.core)):
            head = self.prefix_ids[:n]
            if n and all(len(p) > n and list(p[:n]) == head for p in prompts):
                return n, [list(p[n:]) for p in prompts]
        return None


def _chunked_attention(model: Any) -> bool:
    """Whether some layer of `model` attends within fixed chunks of positions (Llama 4's `chunked_attention`)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return "chunked_attention" in (getattr(config, "layer_types", None) or ())


# --------------------------------------------------------------------------- forward passes


@dataclass
class CompletionLogits:
    """Logits predicting each completion token: `logits[i, t]` predicts `ids[i, t]`."""

    logits: "torch.Tensor"  # (B, T, V)
    ids: "torch.Tensor"  # (B, T) completion ids, right-padded
    mask: "torch.Tensor"  # (B, T) 1 on real completion tokens


def completion_logits(
    model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
    pad_id: int, prefix: PrefixCache | None = None, prefix_length: int | None = None,
) -> CompletionLogits:
    """Forward [prompt_i, completion_i] rows (right-padded) and gather the completion logits.

    With `prefix`, each prompt must be the suffix *after* its first `prefix_length` ids (default:
    the whole prefix; `PrefixCache.split` gives both): rows continue from the cached keys/values
    with position ids starting there. Right padding keeps every
    row's real tokens at the same positions they would have unpadded, which is what makes the
    cached and uncached paths agree.
    """
    import torch

    device = next(model.parameters()).device
    batch = len(prompts)
    t_max = max(1, max(len(c) for c in completions))
    starts = [len(p) for p in prompts]
    if min(starts) < 1:
        raise ValueError("every prompt needs at least one token to predict the first completion token")
    length = max(s + t_max for s in starts)
    ids, mask, comp, comp_mask = _right_padded(prompts, completions, pad_id, length, t_max)
    ids, mask = ids.to(device), mask.to(device)
    keep = length - (min(starts) - 1)
    kwargs = _forward_inputs(model, ids, mask, prefix, prefix_length)
    rows = torch.arange(batch, device=device).unsqueeze(1)
    # The position predicting each completion token (padding rows clamp to the last position).
    index = torch.tensor([[s - 1 + t for t in range(t_max)] for s in starts], device=device).clamp(max=length - 1)
    head = _split_head(model)
    with eval_mode(model):  # scoring and the teacher never see dropout (a LoRA or EMA adapter may have it)
        if head is not None:  # the vocabulary projection only where a completion token is predicted
            decoder, lm_head = head
            gathered = lm_head(decoder(**kwargs).last_hidden_state[rows, index])
        else:
            logits = model(**kwargs, logits_to_keep=keep).logits  # (B, keep, V): positions length-keep ..
            gathered = logits[rows, index - (length - keep)]  # 2.3x faster than gather on CPU
    return CompletionLogits(gathered, comp.to(device), comp_mask.to(device))


def _right_padded(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, length: int,
                  t_max: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(ids, mask) of the [prompt, completion] rows, (ids, mask) of the completions alone, all right-padded
    on the CPU: right padding keeps each row's real tokens at the positions they have unpadded."""
    import torch

    batch = len(prompts)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    comp = torch.full((batch, t_max), pad_id, dtype=torch.long)
    comp_mask = torch.zeros((batch, t_max), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        row = list(p) + list(c)
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        comp[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        comp_mask[i, : len(c)] = 1
    return ids, mask, comp, comp_mask


def _forward_inputs(model: Any, ids: "torch.Tensor", mask: "torch.Tensor", prefix: PrefixCache | None,
                    prefix_length: int | None) -> dict[str, Any]:
    """The forward's keyword arguments: with a non-empty `prefix`, the rows continue from its cached keys/values
    (its mask columns prepended, positions counted on from it), so the prefix is not read again."""
    import torch

    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": False}
    if prefix is None or not len(prefix):
        kwargs["attention_mask"] = mask
        return kwargs
    batch, length = ids.shape
    device = ids.device
    p_len = len(prefix) if prefix_length is None else prefix_length
    kwargs["past_key_values"] = prefix.expanded(model, batch, p_len)
    kwargs["attention_mask"] = torch.cat([torch.ones((batch, p_len), dtype=torch.long, device=device), mask], 1)
    kwargs["position_ids"] = torch.arange(p_len, p_len + length, device=device).unsqueeze(0).expand(batch, -1)
    return kwargs


def teacher_completion_logits(model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                              pad_id: int, prefix: PrefixCache | None) -> CompletionLogits:
    """Teacher logits over the completions: from the prefix cache when the batch shares it, else in full."""
    # `serves` first: a model the cache cannot serve (recurrent or chunked layers) skips `split`'s compare of every prompt
    split = prefix.split(prompts) if prefix is not None and prefix.serves(model) else None
    if split is None:
        return completion_logits(model, prompts, completions, pad_id=pad_id)
    length, suffixes = split
    if length < len(prefix) and not prefix.holds_every_position(model):
        return completion_logits(model, prompts, completions, pad_id=pad_id)
    return completion_logits(model, suffixes, completions, pad_id=pad_id, prefix=prefix, prefix_length=length)


_HEAD_VERDICTS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
# Config fields with which a model changes its logits after the LM head (soft caps, scales, slices).
_POST_HEAD_FIELDS = ("final_logit_softcapping", "logits_soft_cap", "logit_scale", "logits_scaling",
                     "lm_head_multiplier", "output_multiplier", "unpadded_vocab_size")


def _split_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when the logits are exactly lm_head(decoder hidden states), else None.

    Projecting only the completion positions onto the vocabulary, instead of every kept
    position and then gathering, saves the (batch, positions, vocabulary) tensor: 0.7 GB in
    fp32 for 8 rows of 147 positions with a 152k vocabulary. Some models change their logits
    after the head (Gemma 2/3n soft caps, Granite and Falcon-H1 scales, vocabulary slices), so
    a model takes this path only if its config declares none of that and, checked once per
    model on a short input, the split computation reproduces its own logits.
    """
    import torch

    from .models import unwrapped

    base = unwrapped(model)
    config = getattr(base, "config", None)
    if not hasattr(base, "get_decoder") or config is None:
        return None
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    if any(getattr(c, name, None) not in (None, 1, 1.0) for c in configs for name in _POST_HEAD_FIELDS):
        return None
    decoder, lm_head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or decoder is base or not isinstance(lm_head, torch.nn.Linear):
        return None
    if base not in _HEAD_VERDICTS:
        _HEAD_VERDICTS[base] = _head_reproduces_logits(model, decoder, lm_head)
    return (decoder, lm_head) if _HEAD_VERDICTS[base] else None


def _head_reproduces_logits(model: Any, decoder: Any, lm_head: Any) -> bool:
    """Whether lm_head(decoder(x)) equals the model's own logits (shape, values) on a short input.

    Not their dtype: every consumer upcasts the logits, and under mixed-precision training accelerate
    returns the model's in float32 while the head's stay in the weights' bf16.
    """
    import torch

    device = next(model.parameters()).device
    ids = torch.arange(3, 11, device=device).unsqueeze(0)
    try:
        with torch.no_grad(), eval_mode(model):
            full = model(input_ids=ids, use_cache=False).logits
            split = lm_head(decoder(input_ids=ids, use_cache=False).last_hidden_state)
    except Exception:  # noqa: BLE001 - any surprise means: use the model's own forward
        return False
    if full.shape != split.shape:
        return False
    tolerance = 1e-4 if full.dtype == split.dtype == torch.float32 else 2e-2
    return bool((full.float() - split.float()).abs().max() <= tolerance * max(1.0, float(full.abs().max())))


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class TokenScores:
    """Per-sample policy sensitivity of one completion."""

    reverse_kl: float  # mean per-token KL(student || teacher) on the student's top-k support
    reverse_kl_full: float  # the same over the full vocabulary
    student_logprob: float  # sequence log-prob under the student
    teacher_logprob: float  # sequence log-prob under the teacher
    tokens: int

    @property
    def logprob_gap(self) -> float:
        """Teacher minus student sequence log-prob: negative when the policy makes the answer less likely."""
        return self.teacher_logprob - self.student_logprob


class PolicyScorer:
    """Scores (conversation, completion) pairs under the student and the policy-prompted teacher.

    `teacher_context` switches the model to the teacher's weights (e.g. PEFT adapter disabled);
    `student_context` to the student's. With one plain model both are no-ops: the only difference
    is then the policy in context, which is exactly the filtering setting.
    """

    def __init__(self, loaded: "LoadedModel", policy: str, *, top_k: int = 256, batch_size: int = 8,
                 use_prefix_cache: bool = True, teacher_context: TeacherContext = nullcontext,
                 student_context: TeacherContext = nullcontext) -> None:
        self.loaded, self.policy, self.top_k, self.batch_size = loaded, policy, top_k, batch_size
        self.teacher_context, self.student_context = teacher_context, student_context
        tokenizer = loaded.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prefix = PrefixCache.for_policy(tokenizer, policy) if use_prefix_cache else None

    def prompts(self, records: Sequence[dict[str, Any]], *, room: int = 0,
                file: str = "") -> tuple[list[list[int]], list[list[int]]]:
        """Student and full teacher prompt ids for records with `messages` (and optional `tools`).

        Each teacher prompt must leave `room` tokens of context for the response it scores:
        call with `room=max_new_tokens` before sampling, so a long policy fails up front rather
        than after generation, or with positions past the context scored silently. A chat
        template that rejects a record names it: its id, in `file` (the JSONL the records are from).
        """
        from .models import max_context

        tok = self.loaded.tokenizer
        limit = max_context(self.loaded)
        students, teachers = [], []
        for index, record in enumerate(records):
            tools = record.get("tools") or None
            where = f"id {record.get('id', index)}"
            students.append(encode_chat(tok, student_messages(record["messages"]), tools, file=file, where=where))
            teacher = encode_chat(tok, teacher_messages(self.policy, record["messages"]), tools, file=file, where=where)
            if len(teacher) + room > limit:
                raise InvalidInputError(
                    f"the policy plus instruction {record.get('id', index)!r} needs {len(teacher) + room} tokens "
                    f"({len(teacher)} of teacher prompt + {room} of response) but {self.loaded.ref} fits at most {limit}",
                    hint="shorten the policy, lower --max-new-tokens, or use a longer-context model")
            teachers.append(teacher)
        return students, teachers

    def teacher_logits(self, teacher_prompts: Sequence[Sequence[int]],
                       completions: Sequence[Sequence[int]]) -> CompletionLogits:
        """Teacher logits over the completions, from the prefix cache when every prompt shares it."""
        model = self.loaded.model
        with self.teacher_context():
            return teacher_completion_logits(model, teacher_prompts, completions, pad_id=self.pad_id,
                                             prefix=self.prefix)

    def student_logits(self, student_prompts: Sequence[Sequence[int]],
                       completions: Sequence[Sequence[int]]) -> CompletionLogits:
        with self.student_context():
            return completion_logits(self.loaded.model, student_prompts, completions, pad_id=self.pad_id)

    def score(self, records: Sequence[dict[str, Any]], completions: Sequence[Sequence[int]]) -> list[TokenScores]:
        """Policy sensitivity of each completion, computed in batches without gradients."""
        import torch

        from .models import cpu_threads

        students, teachers = self.prompts(records)
        scores: list[TokenScores] = []
        with torch.no_grad(), cpu_threads(self.loaded):
            for start in range(0, len(records), self.batch_size):
                stop = start + self.batch_size
                scores += self._score_batch(students[start:stop], teachers[start:stop], completions[start:stop])
        return scores

    def _score_batch(self, students: list[list[int]], teachers: list[list[int]],
                     completions: Sequence[Sequence[int]]) -> list[TokenScores]:
        import torch

        safe = [list(c) if len(c) else [self.pad_id] for c in completions]
        s = self.student_logits(students, safe)
        t = self.teacher_logits(teachers, safe)
        real = s.mask.bool()
        for i, c in enumerate(completions):
            if not len(c):
                real[i] = False

        def masked(values: "torch.Tensor") -> "torch.Tensor":
            # Not `values * mask`: a padding position's forward may overflow (fp16), and NaN * 0 is NaN.
            return torch.where(real, values, 0.0)

        kl_top, kl_full, lp_s, lp_t = (masked(x) for x in token_scores(s.logits, t.logits, s.ids, self.top_k))
        n = real.sum(-1)
        denom = n.clamp(min=1)
        return [
            TokenScores(float(kl_top[i].sum() / denom[i]), float(kl_full[i].sum() / denom[i]),
                        float(lp_s[i].sum()), float(lp_t[i].sum()), int(n[i]))
            for i in range(len(completions))
        ]
