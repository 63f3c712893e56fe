"""Provenance of a trained adapter: policyalign.json (exactly which pack, base model, data, settings
and seeds made it) and adapter_config.json's base model, named so that the published files carry
no local paths and a Hub base is pinned at the commit it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .io import read_json, write_json

if TYPE_CHECKING:
    from .distill import DistillResult
    from .distill_settings import DistillConfig
    from .models import LoadedModel
    from .pack import Pack


def _filter_seed(run_dir: Path) -> int | None:
    """The seed `pa filter` sampled with, as run.json recorded it (None for runs without one)."""
    from .run import stage_results

    config = stage_results(run_dir, "filter").get("config")
    seed = config.get("seed") if isinstance(config, dict) else None
    return seed if isinstance(seed, int) else None


def _filter_rule(run_dir: Path) -> str | None:
    """The selection rule the filter stage applied (`FilterConfig.rule`: `keep 0.8`, `top-5`, `score>=0.7`, or
    `none` for --no-filter), as run.json recorded it (None for runs without one). The card said "selected by
    Policy-Sensitive Filtering" with no rule, for tiny's demo `keep 0.8` over the pack's 0.5 and for a
    --no-filter ablation alike."""
    from .run import stage_results

    rule = stage_results(run_dir, "filter").get("rule")
    return rule if isinstance(rule, str) and rule else None


def base_model_record(loaded: "LoadedModel") -> dict[str, Any]:
    """The base model as policyalign.json names it, with the Hub commit its weights came from.

    `revision` is what was asked for, usually nothing (the branch head at training time); the
    commit pins the weights the adapter was trained on, after the repository moves on. `license`
    is the base model's (from its README, when one is at hand offline): the card's default.
    """
    from .models import loaded_commit, model_license

    ref = loaded.ref
    commit = loaded_commit(loaded)
    found = model_license(ref, commit)
    public = ref.public()  # published with the adapter: no local paths
    return {"name": public.name, "id": public.location, "revision": ref.revision,
            "commit": commit, "kind": ref.kind, "license": found.pop("license", None), **found}


def name_base_model(adapter_dir: Path, base: Mapping[str, Any]) -> None:
    """adapter_config.json names the base model as policyalign.json (`base`) does. PEFT writes the path
    the base was loaded from: for `tiny` or a local directory an absolute local path, which would be
    published with the adapter (the user's home directory) and means nothing on another machine.
    A Hub base gets its commit as `revision` (PEFT leaves it null): `AutoPeftModelForCausalLM`
    loads the base at that revision, and otherwise loaded whatever `main` is now."""
    path = adapter_dir / "adapter_config.json"
    config = read_json(path)
    named = {"base_model_name_or_path": base["id"]}
    if base.get("kind") == "hub" and (base.get("commit") or base.get("revision")):
        named["revision"] = base.get("commit") or base.get("revision")
    if isinstance(config, dict) and any(config.get(key) != value for key, value in named.items()):
        write_json(path, {**config, **named})


def effective_batch(config: DistillConfig, processes: int) -> int:
    """The instructions each optimizer step trains on: `batch_size` and `gradient_accumulation_steps` are each
    process's, so under torchrun policyalign.json's config alone understated the batch by the process count."""
    return config.batch_size * config.gradient_accumulation_steps * processes


def write_provenance(adapter_dir: Path, pack: "Pack", loaded: "LoadedModel", config: DistillConfig,
                     result: DistillResult, run_dir: Path) -> dict[str, Any]:
    """policyalign.json: exactly which pack, model, data and settings made this adapter."""
    from . import __version__
    from .pack import parent_records
    from .run import versions

    synthesis = read_json(run_dir / "synthesis.json") if (run_dir / "synthesis.json").is_file() else {}
    scored = sum(1 for _ in (run_dir / "scored.jsonl").open()) if (run_dir / "scored.jsonl").is_file() else None
    # each pack it extends, with its version and digest; a pack without parents records none, so
    # its policyalign.json is what it was before parents were recorded
    parents = {"parents": parent_records(pack)} if pack.parents else {}
    data = {
        "policyalign_version": __version__,
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest, **parents, "title": pack.title,
                 "summary": pack.summary, "license": pack.license,
                 "categories": [{"id": c.id, "title": c.title, "action": c.action, "locked": c.locked}
                                for c in pack.categories]},
        "base_model": base_model_record(loaded),
        "config": {**asdict(config), "target_modules": list(config.target_modules)
                   if not isinstance(config.target_modules, str) else config.target_modules, "trl": versions()["trl"]},
        "data": {"synthesized": synthesis.get("instructions") if isinstance(synthesis, dict) else None, "scored": scored,
                 "selected": result.train_records, "heldout": result.heldout_records,
                 **({"selection": rule} if (rule := _filter_rule(run_dir)) else {})},
        "internalization": {"before": result.internalization_before, "after": result.internalization_after,
                            "drop": result.internalization_drop},
        "training": {"steps": result.steps, "processes": result.processes,
                     "effective_batch": effective_batch(config, result.processes),
                     "final_loss": result.history[-1]["loss"] if result.history else None},
        "seeds": {k: v for k, v in {
            "synthesis": synthesis.get("seed") if isinstance(synthesis, dict) else None,
            "filtering": _filter_seed(run_dir), "training": config.seed,
            "internalization_sampling": config.seed + 1 if result.heldout_records else None}.items() if v is not None},
    }
    write_json(adapter_dir / "policyalign.json", data)
    return data
