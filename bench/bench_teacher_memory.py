"""Benchmark: memory held by the teacher `base` (adapter disabled, no copy) vs a separate teacher copy.

`base` is what `distill.build_trainer` does with `teacher="base"`: the teacher is the student
PEFT model with its adapter disabled, so `trainer.teacher_model is trainer.model` and no
weight is held twice. The comparison is the same trainer (same model, LoRA, data, config)
whose teacher is a separate frozen `copy.deepcopy` of the model (what trl does for a non-PEFT
student or an EMA teacher); with the built-in tiny model there is a third row, stock trl
`SDFTTrainer` on a non-PEFT model, which loads its teacher again from the model's path.

For each it counts the unique tensor storages reachable from `trainer.model` and
`trainer.teacher_model` (parameters and buffers; a storage shared by both counts once) and
runs `--steps` training steps to show the teacher works. On CUDA it also reports
`torch.cuda.memory_allocated` after setup and `torch.cuda.max_memory_allocated` over the steps
(each variant starts from an empty GPU: the previous one is freed first, and the starting
allocation is printed).

Run `python bench/bench_teacher_memory.py` (or `python bench/run.py teacher_memory`); on a GPU
`--shape qwen2.5-7b` uses a random-initialised Qwen2.5-7B-shaped model in bf16.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train_step import step_timer  # noqa: E402
from common import (  # noqa: E402
    GIB, MIB, POLICY, add_model_options, add_step_options, build_model, describe, distill_config, free_memory,
    last_loss, model_device, records, uses_cuda)

from policyalign.distill import DistillConfig  # noqa: E402
from policyalign.models import cpu_threads  # noqa: E402


def storages(*modules: Any) -> dict[tuple[str, int], int]:
    """(device, data pointer) -> bytes of every tensor storage reachable from `modules`."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            storage = tensor.untyped_storage()
            seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return seen


def make_trainer(variant: str, loaded: Any, recs: list[dict], config: DistillConfig, out: Path) -> Any:
    from policyalign.distill import build_trainer

    if variant == "stock-full":
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl.experimental.sdft import SDFTTrainer

        from policyalign.distill import sdft_config

        data = Dataset.from_list([{"prompt": r["messages"], "privileged_context": POLICY} for r in recs])
        trainer = SDFTTrainer(model=loaded.model, args=sdft_config(config, out), train_dataset=data,
                              processing_class=loaded.tokenizer)  # no peft_config: full fine-tuning
        trainer.remove_callback(PrinterCallback)
        return trainer
    trainer = build_trainer(loaded, POLICY, recs, config, out)
    if variant == "copy":
        teacher = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model))
        teacher.requires_grad_(False)
        teacher.eval()
        trainer.teacher_model = teacher
    return trainer


LABELS = {
    "base": "teacher base (ours: adapter disabled)",
    "copy": "separate teacher (deepcopy)",
    "stock-full": "stock trl, non-PEFT (teacher reloaded)",
}


def measure(variant: str, args: argparse.Namespace, config: DistillConfig, recs: list[dict]) -> dict[str, Any]:
    import torch

    cuda = uses_cuda(args.device)
    if cuda:
        free_memory()
        torch.cuda.reset_peak_memory_stats()
    start_alloc = torch.cuda.memory_allocated() if cuda else 0
    loaded = build_model(args.shape, device=args.device, dtype=args.dtype, trainable=True, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-mem-{variant}-") as tmp, cpu_threads(loaded):
        trainer = make_trainer(variant, loaded, recs, config, Path(tmp))
        student, teacher = storages(trainer.model), storages(trainer.teacher_model)
        both = {**student, **teacher}
        setup_alloc = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        timer = step_timer(loaded.device)
        trainer.add_callback(timer)
        trainer.train()
        result = {
            "where": describe(loaded),
            "same_object": trainer.teacher_model is trainer.model,
            "student_bytes": sum(student.values()),
            "teacher_bytes": sum(teacher.values()),
            "total_bytes": sum(both.values()),
            "teacher_only_bytes": sum(v for k, v in teacher.items() if k not in student),
            "start_alloc": start_alloc, "setup_alloc": setup_alloc,
            "peak": torch.cuda.max_memory_allocated() if cuda else None,
            "step_s": sum(timer.steps) / max(1, len(timer.steps)), "loss": last_loss(trainer),
        }
    del trainer, loaded
    free_memory()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    add_step_options(parser, steps=1, steps_help="training steps per variant")
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.steps, args.batch_size, args.max_new_tokens = "tiny", 1, 2, 4
    args.device = model_device(args)

    config = distill_config(args)
    recs = records(max(16, args.batch_size))
    variants = ["base", "copy"] + (["stock-full"] if args.shape == "tiny" else [])
    results = {v: measure(v, args, config, recs) for v in variants}
    base = results["base"]
    unit, scale = ("GiB", GIB) if base["total_bytes"] > GIB else ("MiB", MIB)
    print(base["where"])
    print(f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {args.steps} training step(s) each; "
          f"unique storages reachable from trainer.model + trainer.teacher_model ({unit})")
    head = f"  {'variant':<40} {'teacher is model':>16} {'student':>9} {'teacher':>9} {'held':>9} {'teacher-only':>12}"
    cuda = base["peak"] is not None
    if cuda:
        head += f" {'GPU start':>10} {'after setup':>11} {'peak':>9}"
    print(head + f" {'step s':>7}")
    for variant, r in results.items():
        line = (f"  {LABELS[variant]:<40} {str(r['same_object']):>16} {r['student_bytes'] / scale:9.2f} "
                f"{r['teacher_bytes'] / scale:9.2f} {r['total_bytes'] / scale:9.2f} {r['teacher_only_bytes'] / scale:12.2f}")
        if cuda:
            line += f" {r['start_alloc'] / GIB:10.2f} {r['setup_alloc'] / GIB:11.2f} {r['peak'] / GIB:9.2f}"
        print(line + f" {r['step_s']:7.2f}")
    copy_ = results["copy"]
    print(f"  held bytes base/copy: {base['total_bytes'] / copy_['total_bytes']:.2f}x; `base` teacher-only bytes: "
          f"{base['teacher_only_bytes']} (no second copy: {base['teacher_only_bytes'] == 0})")
    if cuda:
        print(f"  peak GPU memory base/copy: {base['peak'] / copy_['peak']:.2f}x "
              f"({base['peak'] / GIB:.2f} vs {copy_['peak'] / GIB:.2f} GiB, saves {(copy_['peak'] - base['peak']) / GIB:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
