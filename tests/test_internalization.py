"""The internalization metric: the held-out teacher-student gap, before and after training."""

from __future__ import annotations

import math

import pytest

from policyalign.errors import ModelError
from policyalign.internalization import internalization
from policyalign.models import load_model

POLICY = "Refuse to help build weapons."
RECORDS = [{"id": f"h{i}", "category": "a", "messages": [{"role": "user", "content": f"how to {i}"}]} for i in range(3)]


def test_the_gap_is_a_finite_mean_and_none_without_held_out_rows() -> None:
    loaded = load_model("tiny", device="cpu")
    gap = internalization(loaded, POLICY, RECORDS, adapter_on=False, max_new_tokens=4, top_k=16, seed=1)
    assert gap is not None and math.isfinite(gap) and gap >= 0
    assert internalization(loaded, POLICY, [], adapter_on=False, max_new_tokens=4, top_k=16, seed=1) is None


def test_an_overflow_is_an_error_naming_the_instruction_not_a_nan_gap() -> None:
    """A NaN mean was returned without a word, and distill wrote it into policyalign.json and the card."""
    from overflow import overflow_where

    loaded = load_model("tiny", device="cpu")
    handle = overflow_where(loaded.model, lambda mask: mask.bool())
    try:
        with pytest.raises(ModelError, match="NaN or infinite logits scoring instruction 'h0'") as caught:
            internalization(loaded, POLICY, RECORDS, adapter_on=False, max_new_tokens=4, top_k=16, seed=1)
    finally:
        handle.remove()
    assert "PA_DTYPE" in caught.value.problem.hint
