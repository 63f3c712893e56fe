"""The adapter directory a training writes: the student's weights saved whole by directory rename,
with an adapter_config.json that is the same bytes for the same training, and the loss plot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .checkpoints import save_error
from .hub import swap_in
from .io import atomic_open, make_files_ordinary, read_json, write_json


def save_adapter(model: Any, target: Path, finish: Callable[[Path], Any] = lambda staged: None) -> None:
    """Save only the student adapter (not an EMA 'teacher' adapter), atomically by directory rename.

    `finish` writes the files that describe these weights (policyalign.json, loss.png) into the
    staged directory first: the adapter directory is replaced whole or not at all, never new
    weights beside the previous training's provenance. `hub.swap_in` moves it in, as a pull does.
    """
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            model.save_pretrained(str(tmp), selected_adapters=["default"])
        except Exception as exc:  # safetensors' own error on a full disk, not an OSError
            raise save_error(exc, target) from exc
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's placeholder card; ours is RUN_DIR/README.md
        stable_adapter_config(tmp)
        finish(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    make_files_ordinary(tmp)  # safetensors writes the weights owner-only
    _hand_over_legacy_aside(target)
    swap_in(tmp, target)


def _hand_over_legacy_aside(target: Path) -> None:
    """What a save killed under a pa from before `hub.swap_in` left: it moved the previous adapter aside as
    `.NAME.old`, which its next save deleted; saves now look for swap_in's `.previous-NAME` alone, so a run killed
    then and resumed now kept it for good (or, killed between its two moves, had no adapter, the only copy hidden
    there). It is handed to swap_in as `.previous-NAME`, which deletes it or puts it back (`hub._settle_previous`);
    where there is one already, that one is the later, and this one is deleted."""
    legacy, previous = target.parent / f".{target.name}.old", target.parent / f".previous-{target.name}"
    if not legacy.is_dir() or legacy.is_symlink():
        return
    if previous.exists() or previous.is_symlink():
        shutil.rmtree(legacy)
    else:
        os.replace(legacy, previous)


# adapter_config.json fields PEFT holds as sets and writes as lists in the set's order, which
# follows the process's string hashing (PYTHONHASHSEED): the same training wrote other bytes.
SET_VALUED_CONFIG = ("target_modules", "exclude_modules")


def stable_adapter_config(adapter_dir: Path) -> None:
    """Sort adapter_config.json's set-valued lists, so two identical trainings write the same bytes
    (and sha256, which the card publishes). PEFT reads them back into sets: the order means nothing
    to it."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        return
    changed = False
    for key in SET_VALUED_CONFIG:
        value = config.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value) and value != sorted(value):
            config[key], changed = sorted(value), True
    if changed:
        write_json(path, config)


def loss_label(alpha: float, top_k: int) -> str:
    """What the loss is, as configured: the axis said "reverse KL ..., top-k" also for `--kl-top-k 0` (the whole
    vocabulary) and for an `alpha` other than 1 (not the reverse KL)."""
    divergence = "reverse KL(student || teacher)" if alpha == 1 else f"distillation loss (alpha {alpha:g})"
    return f"{divergence}, {f'top-{top_k}' if top_k > 0 else 'full vocabulary'}"


def plot_loss(history: list[dict[str, Any]], path: Path, label: str) -> None:
    """loss.png beside the adapter: the card shows whether training converged, not just that it ran.
    `label`: the y axis (`loss_label`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3, color="#4c72b0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    ax.set_title("Distillation loss")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
