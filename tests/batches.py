"""Counting (and interrupting) the real transformers backend's batches: how a test tells what a
resumed evaluation generated again, and stops one part way as Ctrl-C would."""

from __future__ import annotations

import pytest


class Batches:
    """Counts the items the real transformers backend generates, batch by batch, and raises
    KeyboardInterrupt (Ctrl-C) from inside generation before batch `stop_at`, if given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> None:
        from policyalign.generation import TransformersBackend

        self.items, self.batches, self.stop_at, original = 0, 0, stop_at, TransformersBackend._batch

        def batch(backend, prompts, seeds, params):  # type: ignore[no-untyped-def]
            if self.stop_at is not None and self.batches + 1 == self.stop_at:
                raise KeyboardInterrupt
            self.batches += 1
            self.items += len(prompts)
            return original(backend, prompts, seeds, params)

        monkeypatch.setattr(TransformersBackend, "_batch", batch)

    def resume(self) -> "Batches":
        """Count afresh, interrupting nothing."""
        self.items, self.batches, self.stop_at = 0, 0, None
        return self
