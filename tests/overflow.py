"""A stand-in for a float16 overflow inside a real model, for the scoring and filtering tests."""

from __future__ import annotations

from typing import Any, Callable


def overflow_where(model: Any, rows_and_positions: Callable[[Any], Any]) -> Any:
    """Make the decoder's hidden states NaN where `rows_and_positions(attention_mask)` says (a bool
    mask over the forwarded tokens), in the scoring forwards only: those are the ones that keep no
    cache (sampling and the prefix cache keep theirs, and are left alone). Returns the hook handle."""
    from policyalign.models import unwrapped

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if kwargs.get("use_cache") is not False or kwargs.get("attention_mask") is None:
            return output
        hidden = output.last_hidden_state
        hidden[rows_and_positions(kwargs["attention_mask"][:, -hidden.shape[1]:])] = float("nan")
        return output

    return unwrapped(model).get_decoder().register_forward_hook(hook, with_kwargs=True)
