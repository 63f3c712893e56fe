"""Adapter drift, measured on the weights an evaluation has just loaded (`drift_of_loaded`: no
second model load) or on a model loaded for it (`measure_drift`).

**Drift** is the mean per-token KL(base || adapted) of next-token distributions over greedy
base-model completions of a small neutral prompt set (`data/neutral_prompts.jsonl`): how much
the adapter changed behaviour where the policy should not matter.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

NEUTRAL_PROMPTS = Path(__file__).parent / "data" / "neutral_prompts.jsonl"


def load_neutral_prompts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The shipped neutral prompts (or another JSONL of {"prompt": ...})."""
    from .io import read_jsonl

    source = Path(path) if path else NEUTRAL_PROMPTS
    prompts = [row.get("prompt") for row in read_jsonl(source)]
    bad = [i for i, p in enumerate(prompts, 1) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise InvalidInputError("every neutral prompt needs a non-empty \"prompt\" string", file=str(source),
                                where=f"row {bad[0]}", hint='write one {"prompt": "..."} object per line')
    return prompts  # type: ignore[return-value]


def mean_kl(base_log_probs: Sequence[Any], adapted_log_probs: Sequence[Any]) -> tuple[float, int]:
    """Token-weighted mean of KL(base || adapted) = sum_v p_b (log p_b - log p_a); and the count."""
    total, tokens = 0.0, 0
    for base, adapted in zip(base_log_probs, adapted_log_probs):
        if base.shape[0] == 0:
            continue
        kl = (base.exp() * (base - adapted)).sum(dim=-1).clamp_min(0.0)
        total += float(kl.sum())
        tokens += int(base.shape[0])
    return (total / tokens if tokens else 0.0), tokens


def _row_log_probs(logits: Any, completions: Sequence[Sequence[int]]) -> list[Any]:
    """One [T_i, V] fp32 log-distribution per row, cut to that row's completion length."""
    import torch

    return [torch.log_softmax(logits[row, : len(c)].float(), dim=-1) for row, c in enumerate(completions)]


@dataclass(frozen=True)
class DriftResult:
    """Drift of an adapted model from its base on neutral prompts."""

    kl: float
    prompts: int
    tokens: int
    max_new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drift_of_loaded(loaded: Any, *, prompts: Sequence[str] | None = None, max_new_tokens: int = 32,
                    batch_size: int = 8) -> DriftResult:
    """Drift of a LoadedModel: greedy completions by the base (adapter off), then the full
    next-token distributions of base and adapted at every completion position. One copy of the
    weights serves both sides, so measuring drift costs no second model load."""
    import torch

    from .generation import get_backend, greedy_params
    from .models import base_weights
    from .scoring import completion_logits

    prompts = list(prompts) if prompts is not None else load_neutral_prompts()
    model = loaded.model
    model.eval()
    as_base = base_weights(model)
    conversations = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
    backend = get_backend("transformers", loaded)
    with as_base():
        gens = backend.generate(conversations, greedy_params(max_new_tokens), batch_size=batch_size, progress=False)
    sequences = [(list(g.prompt_ids), list(g.token_ids)) for g in gens]
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):  # batch by batch: [T, V] tensors stay small
        batch = sequences[start : start + batch_size]
        prompt_ids, completions = [p for p, _ in batch], [c for _, c in batch]
        with torch.no_grad():
            with as_base():
                base = completion_logits(model, prompt_ids, completions, pad_id=pad_id)
            adapted = completion_logits(model, prompt_ids, completions, pad_id=pad_id)
        kl, count = mean_kl(_row_log_probs(base.logits, completions), _row_log_probs(adapted.logits, completions))
        total, tokens = total + kl * count, tokens + count
    return DriftResult(kl=total / tokens if tokens else 0.0, prompts=len(prompts), tokens=tokens,
                       max_new_tokens=max_new_tokens)


def measure_drift(model_name: str, adapter: str | os.PathLike[str] | None = None, *, device: str | None = None,
                  prompts: Sequence[str] | None = None, max_new_tokens: int = 32, batch_size: int = 8) -> DriftResult:
    """Load `model_name` (with `adapter`, if any) and measure its drift from the base; without an
    adapter the base is compared with itself, which is 0 by construction (a sanity baseline)."""
    from .models import load_model

    loaded = load_model(model_name, device=device, adapter=str(adapter) if adapter else None)
    return drift_of_loaded(loaded, prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
