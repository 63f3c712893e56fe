"""Public benchmarks (`pa eval --benchmark xstest|strongreject`) as eval sets.

They load through `datasets`, with the dataset id, revision and licence eval.json and the card
record, and are **eval-only**: only `pa eval --benchmark` loads them (synthesis seeds come from
the pack alone), since training on (or generating from) a test set would make its numbers
meaningless.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import HubError, HubUnavailableError, InvalidInputError, PolicyAlignError

if TYPE_CHECKING:
    from .pack_eval import EvalItem, EvalSet

@dataclass(frozen=True)
class BenchmarkSpec:
    """A public benchmark: where it lives, its licence, and how a row becomes an eval item."""

    name: str
    dataset: str
    split: str
    license: str
    kind: str
    url: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "xstest": BenchmarkSpec("xstest", "walledai/XSTest", "train", "CC-BY-4.0", "over-refusal",
                            "https://arxiv.org/abs/2308.01263"),
    "strongreject": BenchmarkSpec("strongreject", "walledai/StrongREJECT", "train", "MIT", "safety",
                                  "https://arxiv.org/abs/2402.10260"),
}
def _benchmark_item(spec: BenchmarkSpec, index: int, row: Mapping[str, Any]) -> "EvalItem":
    from .pack_eval import EvalItem

    prompt = str(row.get("prompt") or row.get("forbidden_prompt") or "")
    if spec.name == "xstest":
        expect = "refuse" if str(row.get("label", "")).lower() == "unsafe" else "comply"
        category = str(row.get("type") or "xstest")
    else:
        expect, category = "refuse", str(row.get("category") or "strongreject")
    return EvalItem(id=f"{spec.name}-{index:04d}", category=category,
                    messages=({"role": "user", "content": prompt},), tools=(), expect=expect, forbidden_tools=())


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark as an eval set, plus where it came from (for eval.json and the card)."""

    eval_set: "EvalSet"
    meta: dict[str, Any]


def load_benchmark(name: str, *, revision: str = "main") -> Benchmark:
    """Load a public benchmark through `datasets`, recording dataset id, revision and licence.
    Clear errors when `datasets` is missing or the Hub cannot be reached (no silent skipping)."""
    key = name.strip().lower()
    if key not in BENCHMARKS:
        close = difflib.get_close_matches(key, list(BENCHMARKS), n=1)
        raise InvalidInputError(f"--benchmark: unknown benchmark {name!r}",
                                hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[key]
    try:
        import datasets
    except ImportError:
        raise PolicyAlignError("--benchmark needs the 'datasets' package",
                               hint="pip install 'policyalign[datasets]'") from None
    try:
        data = datasets.load_dataset(spec.dataset, split=spec.split, revision=revision)
    except Exception as exc:  # datasets raises many types for network/auth/missing-repo problems
        raise _benchmark_error(exc, spec.dataset, revision) from None
    from .pack_eval import EvalSet

    items = tuple(_benchmark_item(spec, i, row) for i, row in enumerate(data, start=1))
    meta = {"name": spec.name, "dataset": spec.dataset, "split": spec.split, "revision": revision,
            "resolved_revision": _resolved_revision(spec.dataset, revision), "license": spec.license,
            "url": spec.url, "items_in_set": len(items)}  # `evaluate` adds the `items` it evaluated (after --limit)
    return Benchmark(EvalSet(name=f"bench:{spec.name}", kind=spec.kind, file=spec.dataset, items=items), meta)


def _benchmark_error(exc: Exception, dataset: str, revision: str) -> HubError:
    """What `datasets` failing to load a benchmark is: a HubUnavailableError (exit 3, worth retrying) for an outage,
    a HubError (exit 1) for anything else. An outage exited 1, as a missing dataset does, so CI could not retry it.

    datasets raises a builtin ConnectionError "Couldn't reach 'X' on the Hub (CAUSE)" both for an outage and in
    offline mode (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), and drops its cause (`raise e1 from None`): CAUSE is
    OfflineModeIsEnabled for the setting (or its own message, "offline mode is enabled"), which no retry changes. Anything else is read as the Hub's own
    errors are (`hub.outage_kind`: a connection error, a timeout, HTTP 5xx or 429)."""
    from .hub import RETRY_HINT, outage_kind

    message = f"could not load benchmark {dataset!r} (revision {revision!r}): {exc}"
    offline = any(mark in str(exc).lower() for mark in ("offlinemodeisenabled", "offline mode is enabled"))
    if offline:
        # The hint said "set HF_DATASETS_OFFLINE=1" to someone whose offline setting was what refused the download.
        return HubError(f"could not load benchmark {dataset!r} (revision {revision!r}): {_offline_setting()} keeps "
                        f"it from the Hub, and the datasets cache holds no copy ({exc})",
                        hint="run it once with HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset where the Hub can be "
                             "reached: datasets caches the benchmark (under HF_HOME), and offline runs read that copy")
    if outage_kind(exc) is not None:
        return HubUnavailableError(message, hint=f"check the network connection or HF_ENDPOINT; {RETRY_HINT}")
    return HubError(message, hint="check network access to the Hugging Face Hub, or pre-populate the datasets cache "
                                  "and set HF_DATASETS_OFFLINE=1")


def _offline_setting() -> str:
    """The offline variables set in the environment, as `HF_HUB_OFFLINE=1`, for the message that names the cause."""
    truthy = {"1", "ON", "YES", "TRUE"}
    names = [f"{var}={os.environ[var]}" for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
             if os.environ.get(var, "").strip().upper() in truthy]
    return " and ".join(names) or "offline mode"


def _resolved_revision(dataset: str, revision: str) -> str | None:
    """The commit sha behind `revision`, when the Hub answers (None offline: recorded as unknown)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, revision=revision).sha
    except Exception:
        return None
