"""Batched generation from conversations: transformers (default, CPU or GPU) or vLLM (GPU).

Synthesis, on-policy sampling and evaluation all turn many conversations into completions;
they call `get_backend(name, loaded).generate(...)` and get `Generation`s back, whatever runs
underneath. Two properties matter to them:

* **Reproducibility independent of batching.** Every request gets its own seed (derived from
  `SamplingParams.seed` and its position in the input list, unless the caller passes `seeds`),
  and its own random stream. The
  same inputs and seed give the same samples whatever `batch_size` is or how requests were
  grouped (up to float noise from padding), so cached generations can be reused and compared.
* **Exact token ids.** `Generation.token_ids` are the completion ids up to and including the
  first EOS, with no padding; scoring computes log-probs over exactly these tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .chat import conversation, encode_chat, record_place
from .models import OVERFLOW_HINT, cpu_threads
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


# Told each batch as it finishes: (indices into the conversations, their generations). A caller
# that journals them (evaluation's responses.partial.jsonl) loses at most one batch to a crash.
OnBatch = Callable[[list[int], list[Generation]], None]


class Backend(Protocol):
    name: str

    def generate(
        self, conversations: Sequence[dict[str, Any]], params: SamplingParams, *,
        batch_size: int = 16, progress: bool = True, seeds: Sequence[int] | None = None,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]: ...


def request_seed(seed: int, index: int) -> int:
    """The seed of request `index`: well mixed, so neighbouring requests are uncorrelated."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def request_seeds(params: SamplingParams, count: int, seeds: Sequence[int] | None) -> list[int]:
    """Each request's seed: the caller's `seeds` (one per request), else `request_seed(params.seed, index)`.

    A caller whose requests have identities of their own (synthesis: a cache key per request)
    passes seeds derived from them, so a request samples the same whichever call it lands in.
    """
    if seeds is None:
        return [request_seed(params.seed, index) for index in range(count)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} conversations")
    return list(seeds)


def greedy_params(max_new_tokens: int = 256) -> SamplingParams:
    """The default evaluation sampling: greedy, so reruns give the same responses."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, do_sample=False, seed=0)


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
    """Render and tokenize every conversation; fail before generating if one cannot fit.

    A record's optional `id` and `file` name it when its template rejects it; its optional
    `enable_thinking` (False for judge and synthesis prompts) goes to the chat template.
    """
    from .models import check_fits

    prompts = []
    for index, record in enumerate(conversations):
        messages, tools = conversation(record)
        file, where = record_place(record)
        where = where or f"conversation {index}"
        ids = encode_chat(loaded.tokenizer, messages, tools, enable_thinking=record.get("enable_thinking"),
                          file=file, where=where)
        check_fits(loaded, len(ids) + params.max_new_tokens, "prompt + max_new_tokens", file=file, where=where)
        prompts.append(ids)
    return prompts


# --------------------------------------------------------------------------- transformers

class RowSampler:
    """Draws each row's next token with that row's own random stream.

    A batch-wide draw from the global RNG would make a request's sample depend on its batch
    neighbours; with one generator per request, a request's t-th token always uses its t-th
    uniform draw, whatever else shares its batch. The draws are taken ahead, a chunk per row,
    so a decoding step samples every row in a few batched ops: no per-row call and no wait
    for the device (on a GPU, one small launch per row per token used to add up).
    """

    CHUNK = 64  # uniforms drawn ahead per row at a time

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: Any) -> None:
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.device = device
        self.temperature = temperature
        self.top_p = top_p
        self._uniforms: Any = None  # (rows, steps drawn so far), float64
        self._nonfinite: Any = None  # a 0-d bool tensor: any non-finite logits seen so far

    def __call__(self, logits: Any, step: int, live: Any = None) -> Any:
        """Every row's token at decoding step `step`, from `logits` (rows, vocabulary).

        Inverse-CDF sampling with the row's `step`-th uniform. The running sum is in float64:
        in float32, over a 150k vocabulary, tokens of probability ~1e-8 fall below the sum's
        resolution. Non-finite logits are recorded, not checked here (checking is a device
        sync): `check()` raises for them. Only rows in `live` (a bool mask; default all) count:
        a finished row's draw is discarded, and its forward on padding may overflow (fp16)
        without harming the rows still decoding.
        """
        import torch

        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            probs = _top_p_filter(probs, self.top_p)
        cdf = probs.double().cumsum(dim=-1)
        total = cdf[:, -1]
        bad = ~(torch.isfinite(total) & (total > 0))
        bad = (bad if live is None else bad & live).any()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        # Strictly below the total, so the first cdf entry above the draw is a token with mass.
        draw = torch.minimum(self._uniform(step) * total, torch.nextafter(total, torch.zeros_like(total)))
        token = torch.searchsorted(cdf, draw[:, None], right=True).squeeze(1)
        return token.clamp(max=logits.size(-1) - 1)  # NaN rows stay valid ids until check() raises

    def _uniform(self, step: int) -> Any:
        import torch

        while self._uniforms is None or step >= self._uniforms.size(1):
            chunk = torch.stack([torch.rand(self.CHUNK, generator=g, device=self.device, dtype=torch.float64)
                                 for g in self.generators])
            self._uniforms = chunk if self._uniforms is None else torch.cat([self._uniforms, chunk], dim=1)
        return self._uniforms[:, step]

    def check(self) -> None:
        """Raise if any logits sampled so far were NaN or infinite."""
        if self._nonfinite is not None and bool(self._nonfinite):
            raise ModelError("the model produced NaN or infinite logits while sampling",
                             hint=OVERFLOW_HINT)


def _top_p_filter(probs: Any, top_p: float) -> Any:
    """Zero the tail beyond the smallest set of tokens whose mass reaches `top_p` (keeps >= 1)."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def decode(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
           pad_id: int, sampler: RowSampler | None = None) -> list[list[int]]:
    """Completions of left-padded `prompts`, each cut after its first EOS; greedy without a `sampler`.

    A plain KV-cached loop instead of `model.generate`: for the small models and small batches
    we train on, each decoding step is bound by per-call host overhead, and generate()'s
    logits processors, stopping criteria and input preparation cost as much as the model's
    own forward (tiny with a merged LoRA adapter, batch 4 x 128 tokens: 0.43 s with generate,
    0.32 s here).
    Rows that reached EOS stop drawing, so a row's samples do not depend on its neighbours.
    A model that keeps nothing in the cache gets the whole sequence every step instead.
    Call it under `torch.inference_mode()` with the model in eval mode.
    """
    import torch
    from transformers import DynamicCache

    if not prompts or max_new_tokens < 1:
        return [[] for _ in prompts]
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids, mask, positions = _left_padded(prompts, pad_id, width, max_new_tokens, device)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    live = torch.ones(len(prompts), dtype=torch.bool, device=device)
    steps: list[Any] = []
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    recompute = False  # set when the model keeps no keys/values (e.g. state-space models)
    prompt_ids, prompt_positions = ids, positions
    for step in range(max_new_tokens):
        out = model(input_ids=ids, attention_mask=mask[:, :width + step], position_ids=positions,
                    past_key_values=None if recompute else cache, use_cache=not recompute, **extra)
        recompute = recompute or getattr(out, "past_key_values", None) is not cache
        token = _next_tokens(out.logits[:, -1], live, sampler, pad_id, step)
        steps.append(token)
        live &= ~torch.isin(token, eos)
        if not bool(live.any()):
            break
        ids, positions = token[:, None], prompt_positions[:, -1:] + len(steps)
        if recompute:  # the whole sequence again, since nothing of it was kept
            ids = torch.cat([prompt_ids, torch.stack(steps, dim=1)], dim=1)
            positions = torch.cat([prompt_positions, prompt_positions[:, -1:] + torch.arange(
                1, len(steps) + 1, device=device)], dim=1)
    if sampler is not None:
        sampler.check()
    eos_set = set(eos_ids)
    return [_cut_at_eos(row, eos_set)[0] for row in torch.stack(steps, dim=1).tolist()]


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int, width: int, max_new_tokens: int,
                 device: Any) -> tuple[Any, Any, Any]:
    """(ids, attention mask, position ids) of the left-padded prompts on `device`.

    Positions count real tokens only, so a padded row sees the positions it would unpadded. The
    mask has room for every step's column up front: the loop passes growing views, never copies.
    """
    import torch

    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0).to(device)
    mask = torch.cat([mask, torch.ones((len(prompts), max_new_tokens), dtype=torch.long)], dim=1).to(device)
    return ids.to(device), mask, positions


def _next_tokens(logits: Any, live: Any, sampler: RowSampler | None, pad_id: int, step: int) -> Any:
    """Argmax, or each row's own draw; finished rows get padding (their draws are discarded)."""
    import torch

    token = logits.argmax(dim=-1) if sampler is None else sampler(logits, step, live)
    return torch.where(live, token, pad_id)


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the (base) model's forward accepts `logits_to_keep` (PEFT wrappers take **kwargs)."""
    import inspect

    from .models import unwrapped

    return "logits_to_keep" in inspect.signature(unwrapped(model).forward).parameters


class TransformersBackend:
    """`decode` over left-padded batches, longest prompts first."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def generate(
        self, conversations: Sequence[dict[str, Any]], params: SamplingParams, *,
        batch_size: int = 16, progress: bool = True, seeds: Sequence[int] | None = None,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        prompts = _encode_all(self.loaded, conversations, params)
        per_request = request_seeds(params, len(prompts), seeds)
        # Longest first: similar lengths share a batch (less padding), and an out-of-memory
        # error shows up in the first batch rather than after an hour.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with cpu_threads(self.loaded), progress_bar(progress, len(prompts), f"generating ({self.loaded.ref.name})") as advance:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = self._batch([prompts[i] for i in chunk], [per_request[i] for i in chunk], params)
                for index, result in zip(chunk, batch):
                    results[index] = result
                if on_batch is not None:
                    on_batch(chunk, batch)
                advance(len(chunk))
        return [r for r in results if r is not None]

    def _batch(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Generation]:
        import torch

        sampler = None
        if not params.greedy:
            sampler = RowSampler(seeds, params.temperature, params.top_p, self.loaded.device)
        eos = eos_token_ids(self.loaded)
        with torch.inference_mode():
            completions = decode(self.loaded.model, prompts, max_new_tokens=params.max_new_tokens, eos_ids=eos,
                                 pad_id=self.loaded.tokenizer.pad_token_id, sampler=sampler)
        return [self._result(ids, prompt, set(eos)) for ids, prompt in zip(completions, prompts)]

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
    `load_model(name, weights=False)` so the GPU is not also holding a transformers copy. Where
    one must stay (filtering scores with it), vLLM is given half of the memory still free.
    """

    name = "vllm"

    def __init__(self, loaded: LoadedModel, *, adapter: str | Path | None = None, **llm_kwargs: Any) -> None:
        vllm = require_vllm()
        self.loaded = loaded
        self._vllm = vllm
        ref = loaded.ref
        dtype = str(loaded.dtype).removeprefix("torch.")
        if loaded.model is not None and str(loaded.device).startswith("cuda"):
            llm_kwargs.setdefault("gpu_memory_utilization", _vllm_share_beside(loaded.device))
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
        batch_size: int = 16, progress: bool = True, seeds: Sequence[int] | None = None,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        # vLLM schedules its own batches (continuous batching); batch_size does not apply, and
        # `on_batch` hears of every generation at once, at the end.
        prompts = _encode_all(self.loaded, conversations, params)
        per_request = request_seeds(params, len(prompts), seeds)
        eos = eos_token_ids(self.loaded)
        sampling = [
            self._vllm.SamplingParams(
                n=1, max_tokens=params.max_new_tokens,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                seed=seed, stop_token_ids=eos, skip_special_tokens=True,
            )
            for seed in per_request
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
        if on_batch is not None:
            on_batch(list(range(len(results))), results)
        return results


# Of the GPU memory still free beside a resident transformers copy, the share vLLM may take.
VLLM_SHARE_OF_FREE = 0.5


def vllm_memory_utilization(free_bytes: int, total_bytes: int) -> float:
    """vLLM's `gpu_memory_utilization` (a fraction of the whole GPU) for half of what is free now.

    vLLM's default (0.9 of the whole GPU) assumes it is alone: beside the transformers model that
    `pa filter` keeps for scoring it refuses to start. Half of the free memory leaves the other half
    for the scorer's activations, which run between vLLM's generations.
    """
    if total_bytes <= 0 or free_bytes <= 0:
        raise ModelError("no free GPU memory for vLLM beside the loaded model",
                         hint="use --backend transformers, or a GPU with room for a second copy of the weights")
    return round(VLLM_SHARE_OF_FREE * free_bytes / total_bytes, 4)


def _vllm_share_beside(device: str) -> float:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return vllm_memory_utilization(free, total)


BACKENDS = ("transformers", "vllm")


def require_vllm() -> Any:
    """The vllm module, or a ModelError saying how to get it (the trainer's rollouts otherwise end in
    a bare ImportError traceback from inside trl, after the model has loaded)."""
    try:
        import vllm
    except ImportError:
        raise ModelError(
            "vLLM is not installed (needed by --backend vllm and pa distill --vllm)",
            hint="pip install 'policyalign[vllm]' on a machine with a CUDA GPU, or use --backend transformers "
                 "(pa distill: --no-vllm)",
        ) from None
    return vllm


def known_backend(name: str) -> str | None:
    """`name` spelled as the code compares it (`vLLM` -> `vllm`), or None when it names no backend here
    (a ready backend of another kind, which synthesis keys by its own name)."""
    key = name.strip().lower()
    return key if key in BACKENDS else None


def backend_name(name: str) -> str:
    """`known_backend(name)`, or an error naming the choices: `pa apply --backend vLLM` used vLLM for
    synthesis and filtering but, as `"vLLM" != "vllm"`, not for the trainer's rollouts."""
    key = known_backend(name)
    if key is None:
        raise InvalidInputError(f"unknown generation backend {name!r}", hint=f"use one of: {', '.join(BACKENDS)}")
    return key


def get_backend(name: str, loaded: LoadedModel, **options: Any) -> Backend:
    """The generation backend `name` for `loaded`; `options` go to the backend (vLLM: adapter, LLM kwargs)."""
    key = backend_name(name)
    if key == "transformers":
        if options:
            raise InvalidInputError(f"the transformers backend takes no options, got {sorted(options)}")
        return TransformersBackend(loaded)
    return VLLMBackend(loaded, **options)
