"""Batched generation from conversations: transformers (default, CPU or GPU) or vLLM (GPU).

Synthesis, on-policy sampling and evaluation all turn many conversations into completions;
they call `get_backend(name, loaded).generate(...)` and get `Generation`s back, whatever runs
underneath. Two properties matter to them:

* **Reproducibility independent of batching.** Every request gets its own seed derived from
  `SamplingParams.seed` and its position in the input list, and its own random stream. The
  same inputs and seed give the same samples whatever `batch_size` is or how requests were
  grouped (up to float noise from padding), so cached generations can be reused and compared.
* **Exact token ids.** `Generation.token_ids` are the completion ids up to and including the
  first EOS, with no padding; scoring computes log-probs over exactly these tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .chat import conversation, encode_chat
from .models import cpu_threads
from .progress import progress_bar
from .errors import InvalidInputError, ModelError

if TYPE_CHECKING:
    from .models import LoadedModel


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Greedy when `do_sample` is False or `temperature` is 0."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One completion. `finish_reason` is "stop" (EOS reached, last id) or "length"."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: str


class Backend(Protocol):
    name: str

    def generate(
        self, conversations: Sequence[dict[str, Any]], params: SamplingParams, *,
        batch_size: int = 16, progress: bool = True,
    ) -> list[Generation]: ...


def request_seed(seed: int, index: int) -> int:
    """The seed of request `index`: well mixed, so neighbouring requests are uncorrelated."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def eos_token_ids(loaded: LoadedModel) -> list[int]:
    """Every id that ends a turn: the generation config's EOS list plus the tokenizer's EOS."""
    ids: list[int] = []
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]):
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    if isinstance(loaded.tokenizer.eos_token_id, int) and loaded.tokenizer.eos_token_id not in ids:
        ids.append(loaded.tokenizer.eos_token_id)
    if not ids:
        raise ModelError(f"{loaded.ref} defines no EOS token", hint="use a chat model whose tokenizer has an EOS token")
    return ids


def _cut_at_eos(ids: list[int], eos: set[int]) -> tuple[list[int], str]:
    """Keep ids up to and including the first EOS; drop the padding generate() adds after it."""
    for position, token in enumerate(ids):
        if token in eos:
            return ids[: position + 1], "stop"
    return ids, "length"


def _encode_all(loaded: LoadedModel, conversations: Sequence[dict[str, Any]], params: SamplingParams) -> list[list[int]]:
    """Render and tokenize every conversation; fail before generating if one cannot fit."""
    from .models import check_fits

    prompts = []
    for index, record in enumerate(conversations):
        messages, tools = conversation(record)
        ids = encode_chat(loaded.tokenizer, messages, tools)
        check_fits(loaded, len(ids) + params.max_new_tokens, f"conversation {index} (prompt + max_new_tokens)")
        prompts.append(ids)
    return prompts


# --------------------------------------------------------------------------- transformers

class _SeededSampler:
    """A logits processor that samples each row with that row's own generator.

    transformers samples a whole batch from the global RNG, so a request's sample would depend
    on its batch neighbours. Here the sampler draws the token (temperature, top-p) per row and
    returns logits that allow only that token, so generate() running greedily picks it.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: Any) -> None:
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            probs = _top_p_filter(probs, self.top_p)
        choice = torch.stack([
            torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(self.generators)
        ])
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, choice, 0.0)


def _top_p_filter(probs: Any, top_p: float) -> Any:
    """Zero the tail beyond the smallest set of tokens whose mass reaches `top_p` (keeps >= 1)."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


class TransformersBackend:
    """`model.generate` over left-padded batches, longest prompts first."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def generate(
        self, conversations: Sequence[dict[str, Any]], params: SamplingParams, *,
        batch_size: int = 16, progress: bool = True,
    ) -> list[Generation]:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        prompts = _encode_all(self.loaded, conversations, params)
        # Longest first: similar lengths share a batch (less padding), and an out-of-memory
        # error shows up in the first batch rather than after an hour.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with cpu_threads(self.loaded), progress_bar(progress, len(prompts), f"generating ({self.loaded.ref.name})") as advance:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                seeds = [request_seed(params.seed, i) for i in chunk]
                for index, result in zip(chunk, self._batch([prompts[i] for i in chunk], seeds, params)):
                    results[index] = result
                advance(len(chunk))
        return [r for r in results if r is not None]

    def _batch(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Generation]:
        import torch

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        device = self.loaded.device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        eos = eos_token_ids(self.loaded)
        processors = None
        if not params.greedy:
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList([_SeededSampler(seeds, params.temperature, params.top_p, device)])
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                generation_config=self._config(params, eos), logits_processor=processors,
            )
        completions = output[:, width:].tolist()
        return [self._result(ids, prompt, set(eos)) for ids, prompt in zip(completions, prompts)]

    def _config(self, params: SamplingParams, eos: list[int]) -> Any:
        """Argmax decoding with nothing else: our sampler does the sampling, and the model's
        own generation defaults (repetition penalty, top-k, ...) must not leak in, or the
        vLLM and transformers backends would sample different distributions."""
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
            temperature=1.0, top_p=1.0, top_k=50, min_p=None, repetition_penalty=1.0,  # = global defaults: unused, unflagged
            no_repeat_ngram_size=0, min_new_tokens=0, eos_token_id=eos,
            pad_token_id=self.loaded.tokenizer.pad_token_id,
        )

    def _result(self, ids: list[int], prompt: list[int], eos: set[int]) -> Generation:
        token_ids, reason = _cut_at_eos(ids, eos)
        text = self.loaded.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Generation(text=text, token_ids=token_ids, prompt_ids=list(prompt), finish_reason=reason)


# --------------------------------------------------------------------------- vLLM


class VLLMBackend:
    """vLLM's offline `LLM.generate` on token-id prompts rendered by `chat.render_chat`.

    Prompts go in as token ids (not through `LLM.chat`) so both backends see exactly the same
    tokens; per-request `SamplingParams.seed` gives the same batch-independence as above.
    vLLM loads its own copy of the weights from `ref.location`: pass a `LoadedModel` from
    `load_model(name, weights=False)` so the GPU is not also holding a transformers copy.
    """

    name = "vllm"

    def __init__(self, loaded: LoadedModel, *, adapter: str | Path | None = None, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError:
            raise ModelError(
                "the vllm backend needs vLLM, which is not installed",
                hint="pip install 'policyalign[vllm]' on a machine with a CUDA GPU, or use --backend transformers",
            ) from None
        self.loaded = loaded
        self._vllm = vllm
        ref = loaded.ref
        dtype = str(loaded.dtype).removeprefix("torch.")
        self.llm = vllm.LLM(
            model=ref.location, revision=ref.revision, dtype=dtype,
            enable_lora=adapter is not None, **llm_kwargs,
        )
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate(
        self, conversations: Sequence[dict[str, Any]], params: SamplingParams, *,
        batch_size: int = 16, progress: bool = True,
    ) -> list[Generation]:
        # vLLM schedules its own batches (continuous batching); batch_size does not apply.
        prompts = _encode_all(self.loaded, conversations, params)
        eos = eos_token_ids(self.loaded)
        sampling = [
            self._vllm.SamplingParams(
                n=1, max_tokens=params.max_new_tokens,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                seed=request_seed(params.seed, index), stop_token_ids=eos, skip_special_tokens=True,
            )
            for index in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], sampling,
            use_tqdm=progress, lora_request=self.lora,
        )
        results = []
        for prompt, output in zip(prompts, outputs):
            completion = output.outputs[0]
            token_ids, reason = _cut_at_eos(list(completion.token_ids), set(eos))
            if completion.finish_reason == "stop":  # vLLM also stops at EOS ids of the model's own config
                reason = "stop"
            results.append(Generation(
                text=completion.text, token_ids=token_ids, prompt_ids=list(prompt),
                finish_reason=reason,
            ))
        return results


BACKENDS = ("transformers", "vllm")


def get_backend(name: str, loaded: LoadedModel, **options: Any) -> Backend:
    """The generation backend `name` for `loaded`; `options` go to the backend (vLLM: adapter, LLM kwargs)."""
    key = name.strip().lower()
    if key == "transformers":
        if options:
            raise InvalidInputError(f"the transformers backend takes no options, got {sorted(options)}")
        return TransformersBackend(loaded)
    if key == "vllm":
        return VLLMBackend(loaded, **options)
    raise InvalidInputError(f"unknown generation backend {name!r}", hint=f"use one of: {', '.join(BACKENDS)}")
