"""Training checkpoints: where a run keeps them, which one is complete enough to `--resume` from,
the record of the settings they were trained with, and the error a checkpoint (or adapter) the
disk refuses becomes.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

from .errors import RunError


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last)."""
    if not directory.is_dir():
        return None
    found = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if _state_written(path / "trainer_state.json") and _files_whole(path):
            return path
    return None


def _files_whole(checkpoint: Path) -> bool:
    """Its adapter weights, and the optimizer, scheduler and RNG states beside them, end where their formats
    say they end. The Trainer writes them before trainer_state.json but neither fsyncs nor renames them: after
    a machine crash (not a killed process) the state can be on disk with the weights cut short, and resuming
    from it was a SafetensorError traceback at every re-run, never the checkpoint before or a fresh start."""
    weights = sorted(checkpoint.glob("adapter_model.*"))
    states = [*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]
    return bool(weights) and all(_whole(path) for path in (*weights, *states))


def _whole(path: Path) -> bool:
    """A safetensors file its header covers exactly, or a torch.save archive with its closing record."""
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    return zipfile.is_zipfile(path) if path.suffix in (".pt", ".pth", ".bin") else True


def _safetensors_whole(path: Path) -> bool:
    """Whether the file is as long as its header says, read without safetensors' torch loader: the stop message
    of a `pa distill` stopped while torch imported asks this (`cli._checkpoint_kept`), and `safe_open(...,
    framework="pt")` imported the half-imported torch again, a RuntimeError traceback in place of the message."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size)) if 0 < size <= HEADER_CAP else None
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
        return 8 + size + int(end) == path.stat().st_size
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False


# safetensors' own limit on a header's length (100 MB): a longer one is no header.
HEADER_CAP = 100_000_000


def save_error(exc: Exception, folder: Path) -> RunError:
    """What to do when writing a checkpoint or the adapter into `folder` failed, most likely on a full
    disk: an incomplete checkpoint (its trainer_state.json is written last) is skipped by `--resume`,
    and the adapter is written to a temporary directory, renamed into place only when whole."""
    return RunError(f"writing {folder.name} failed ({type(exc).__name__}: {exc}); is the disk full?",
                    file=str(folder),
                    hint="make room on that disk (or checkpoint less often with a larger --save-steps), then run "
                         "`pa apply` again, or `pa distill RUN_DIR --resume`: training continues from the last complete "
                         "checkpoint")


def _state_written(path: Path) -> bool:
    """The Trainer writes trainer_state.json in place, not atomically: a kill mid-write leaves it cut short."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


# Beside the checkpoints: the stage settings they were trained with (see stages.checkpoint_record).
CHECKPOINT_RECORD = "trained_with.json"
# The field of CHECKPOINT_RECORD naming the training that wrote the checkpoints beside it (`training_id`).
TRAINING = "training"


def training_id(checkpoints: Path, continuing: bool) -> str:
    """The id to record for the training about to write into `checkpoints`: the recorded one when it
    `continuing`ly trains on from them (a resumed training is the same training), else a new one.

    Who wrote a checkpoint was told from its modification time against the command's start, which clock
    skew, a run directory copied with its times (cp -p, rsync -a) or a coarse file system got wrong."""
    if continuing:
        recorded = read_record(checkpoints / CHECKPOINT_RECORD).get(TRAINING)
        if isinstance(recorded, str) and recorded:
            return recorded
    return uuid.uuid4().hex


def checkpoint_owner(run_dir: Path) -> tuple[Path, str | None] | None:
    """The run's resume point and the id of the training that wrote it (None when its record holds none:
    checkpoints written before the id was recorded, or by a `distill_run` given no record); None without one."""
    point = resume_point(run_dir)
    if point is None:
        return None
    recorded = read_record(point.parent / CHECKPOINT_RECORD).get(TRAINING)
    return point, recorded if isinstance(recorded, str) and recorded else None


def read_record(path: Path) -> dict[str, Any]:
    """CHECKPOINT_RECORD's fields, or none where it is missing or unreadable (cut short by a kill)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoint_dir(run_dir: Path) -> Path:
    """Where `--resume` finds its checkpoints: beside the adapter, not inside it.

    The adapter directory is replaced by a rename when training ends; checkpoints inside it
    would have to move across with it, and a kill between the moves would lose them.
    """
    return Path(run_dir) / "checkpoints"


def trained_processes(checkpoint: Path) -> int:
    """How many processes trained `checkpoint`: the Trainer saves one RNG state per process
    (`rng_state_RANK.pth`) under torchrun or `accelerate launch`, and one `rng_state.pth` alone."""
    return len(list(checkpoint.glob("rng_state_*.pth"))) or 1


def resume_point(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint, also where runs before 0.1.0's release kept them (adapter/checkpoints).

    Read in place rather than moved, so every rank of a multi-process run finds the same one;
    new checkpoints go to `checkpoints`, and the old ones leave with the old adapter directory.
    """
    run_dir = Path(run_dir)
    return last_complete_checkpoint(checkpoint_dir(run_dir)) or last_complete_checkpoint(run_dir / "adapter" / "checkpoints")
