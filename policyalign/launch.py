"""Multi-process launch: which process this is under torchrun / `accelerate launch`, the device it
trains on (refused early when training could not run there, vLLM rollouts included), and the
batch each process can fill from the selected instructions.

Read from the launcher's environment and the settings alone, before any model loads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .distill_settings import DistillConfig


def launch_rank() -> tuple[int, int, int]:
    """(rank, local rank, processes) under torchrun / `accelerate launch`; (0, 0, 1) in a plain process.

    Read from the launcher's environment: the distributed state is created later, by the
    Trainer, and creating it earlier ourselves would fix its backend before trl configures it.
    """
    import os

    def number(*names: str, default: int) -> int:
        return next((int(os.environ[n]) for n in names if os.environ.get(n, "").isdigit()), default)

    return (number("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", default=0),
            number("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
            number("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", default=1))


def fit_batch(config: DistillConfig, records: int, processes: int = 1) -> DistillConfig:
    """Shrink batch size and gradient accumulation to what `records` instructions can fill.

    trl draws whole generation batches (batch_size x processes x gradient_accumulation_steps)
    and drops a partial one, so a small selection would otherwise train for zero steps without
    a word.
    """
    per_process = max(1, records // processes)
    batch = min(config.batch_size, per_process)
    accumulation = max(1, min(config.gradient_accumulation_steps, per_process // batch))
    if (batch, accumulation) != (config.batch_size, config.gradient_accumulation_steps):
        import sys

        where = f" over {processes} processes" if processes > 1 else ""
        print(f"note: {records} instructions cannot fill batch {config.batch_size} x accumulation "
              f"{config.gradient_accumulation_steps}{where}; training with {batch} x {accumulation}", file=sys.stderr)
    _note_left_out(records, batch * accumulation * processes, config.max_steps)
    return replace(config, batch_size=batch, gradient_accumulation_steps=accumulation)


def _note_left_out(records: int, draw: int, max_steps: int) -> None:
    """Say how many instructions each epoch leaves out when `--epochs` sets the length.

    trl drops the partial generation batch of every epoch: 30 instructions at 4 x 4 trained one
    step on 16, while `pa distill` said it trained on 30 and `--epochs` promises passes over them.
    """
    left = records % draw
    if left and max_steps <= 0:
        import sys

        print(f"note: training draws whole batches of {draw} instructions, so each epoch trains on {records - left} "
              f"of the {records} and leaves {left} out (a different {left} each epoch); for every instruction in "
              f"every epoch, pick --batch-size x --grad-accum dividing {records}", file=sys.stderr)


def training_device(device: str | None, local_rank: int, processes: int) -> str:
    """The device this process trains on: its own GPU under torchrun, else what `--device` names.

    The Trainer trains a lone process on the first visible GPU whatever the model was loaded on,
    so `--device cuda:1` is refused with the way to get it, rather than half the run on cuda:1.
    """
    from .models import resolve_device

    if processes > 1 and device in (None, "cuda"):
        import torch

        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"  # not every rank on cuda:0
    resolved = resolve_device(device)
    if processes == 1 and resolved.startswith("cuda:") and resolved != "cuda:0":
        index = resolved.split(":")[1]
        raise InvalidInputError(f"--device {device}: training runs on the first visible GPU",
                                hint=f"run with CUDA_VISIBLE_DEVICES={index} and --device cuda (or no --device)")
    return resolved


def check_vllm_rollouts(device: str) -> None:
    """vLLM rollouts need a CUDA GPU and vLLM: said before the model loads, not as trl's traceback after."""
    from .generation import require_vllm

    if not device.startswith("cuda"):
        raise InvalidInputError(f"vLLM rollouts (pa distill --vllm, pa apply --backend vllm) need a CUDA GPU; "
                                f"this process trains on {device}",
                                hint="use --no-vllm (pa apply: --backend transformers), or run on a machine with a CUDA GPU")
    require_vllm()
