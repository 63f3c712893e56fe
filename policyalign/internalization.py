"""The internalization metric: how far the student (no policy in context) still is from the
teacher (the policy as its system message) on held-out instructions, measured before and after
training. Filtering scores instructions with the same divergence.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import LoadedModel


def internalization(loaded: "LoadedModel", policy: str, records: list[dict[str, Any]], *, adapter_on: bool,
                    max_new_tokens: int, top_k: int, seed: int, batch_size: int = 8) -> float | None:
    """Mean teacher-student reverse KL on held-out instructions, with the student's own responses.

    The teacher is always the base model with the policy in context; the student is the base
    model (`adapter_on=False`, before training) or the adapted one. This is the gap distillation
    exists to close.

    The student samples at temperature 1 and the divergence is between the models' own (untempered)
    distributions, whatever temperature training or filtering used: the metric describes the models,
    so runs trained at different temperatures are compared on one scale.
    """
    from .filtering import FilterConfig, check_finite, mean_score, sample_and_score, sampling_params
    from .models import base_weights
    from .scoring import PolicyScorer

    if not records:
        return None
    off = base_weights(loaded.model)
    student = nullcontext if adapter_on else off
    scorer = PolicyScorer(loaded, policy, top_k=top_k, batch_size=batch_size, teacher_context=off,
                          student_context=student)
    scorer.prompts(records, room=max_new_tokens)  # fail before sampling, as training and filtering do
    params = sampling_params(FilterConfig(max_new_tokens=max_new_tokens), seed)
    rows = sample_and_score(scorer, records, params, 1, batch_size=batch_size)
    check_finite(rows)  # a NaN mean went into policyalign.json (as non-standard JSON) and the card
    return mean_score(rows)
