"""Live training reports (`--report-to tensorboard`, `wandb`, ...): the loss, the learning rate and
the reverse KL of every logging step, sent while a run trains for hours rather than read from
`loss.png` once it has finished. These are transformers' reporting integrations, as trl's trainer
uses them; this module only names them, checks them before anything runs, and puts their files
in the run directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, did_you_mean

TENSORBOARD_DIR = "tensorboard"
# Integrations whose Python package is not called as they are (the rest install as their own name).
PACKAGES = {"comet_ml": "comet-ml", "azure_ml": "azureml-core", "flyte": "flytekit", "kubeflow": "kfp"}


def report_targets(names: Iterable[str] | str | None, *, flag: str = "--report-to",
                   file: str | None = None) -> tuple[str, ...]:
    """The integrations `names` asks for (comma-separated or repeated; `none` for none), each known
    to transformers and installed: a missing wandb would otherwise fail when training starts, after
    synthesis, filtering and the first evaluation have run."""
    given = [names] if isinstance(names, str) else list(names or [])
    wanted = [part.strip().lower() for name in given for part in str(name).split(",") if part.strip()]
    if not wanted or wanted == ["none"]:
        return ()  # before importing transformers (seconds), which a bad pack name should not wait for
    from transformers.integrations import integration_utils as integrations

    known = sorted(integrations.INTEGRATION_TO_CALLBACK)
    installed = set(integrations.get_available_reporting_integrations())
    if integrations.is_flytekit_available():
        installed.add("flyte")  # a callback transformers has, missing from its list of the installed
    for name in wanted:
        if name not in known:
            raise InvalidInputError(f"{flag} {name}: not a reporting integration", file=file,
                                    hint=did_you_mean(name, known + ["none"], "integrations"))
        if name not in installed:
            package = PACKAGES.get(name, name)
            raise InvalidInputError(f"{flag} {name}: the {name} package is not installed", file=file,
                                    hint=f"pip install {package}, or leave out {flag} {name}")
    return tuple(dict.fromkeys(wanted))


def attach_reports(trainer: Any, run_dir: Path) -> list[str]:
    """Point the trainer's integrations at this run: TensorBoard writes into RUN_DIR/tensorboard (by
    default it wrote under the checkpoints, which a fresh training deletes), and the run is named
    after its directory. Returns a line per integration saying where to look."""
    from transformers.integrations import TensorBoardCallback

    trainer.args.run_name = Path(run_dir).resolve().name
    where: list[str] = []
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(Path(run_dir) / TENSORBOARD_DIR)
            where.append(f"tensorboard --logdir {callback.logging_dir}")
    return where
