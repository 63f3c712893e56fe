"""Benchmark: memory held by the teacher `base` (adapter disabled, no copy) vs an EMA teacher and a separate copy.

`base` is what `trainer.build_trainer` does with `teacher="base"`: the teacher is the student
PEFT model with its adapter disabled, so `trainer.teacher_model is trainer.model` and no
weight is held twice. It is compared with:

* `ema`: the same trainer with `DistillConfig(teacher="ema")`. For a PEFT student trl keeps
  the EMA teacher as a second LoRA adapter named "teacher" on the same model (added when
  training begins), and its `PEFTAdapterEMACallback` holds the EMA shadow weights besides.
  The teacher's weights change every step, so the policy-prefix KV cache is rebuilt every
  step (with `base` it is built once per run); the prefix builds are counted.
* `copy`: the `base` trainer whose teacher is a separate frozen `copy.deepcopy` of the model
  (what trl does for a non-PEFT student);
* with the built-in tiny model, stock trl `SDFTTrainer` on a non-PEFT model, which loads its
  teacher again from the model's path.

For each it counts the unique tensor storages reachable from `trainer.model` and
`trainer.teacher_model` (parameters and buffers; a storage shared by both counts once), after
the steps so that the EMA adapter is there, and the bytes of the student adapter (its
trainable parameters). It runs `--warmup` + `--steps` training steps and prints the mean step
time and teacher forward time over the timed ones. On CUDA it also reports
`torch.cuda.memory_allocated` after setup and `torch.cuda.max_memory_allocated` over the steps
(each variant starts from an empty GPU: the previous one is freed first, and the starting
allocation is printed).

Run `python bench/bench_teacher_memory.py` (or `python bench/run.py teacher_memory`); on a GPU
`--shape qwen2.5-7b` uses a random-initialised Qwen2.5-7B-shaped model in bf16.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train_step import instrument, step_timer  # noqa: E402
from common import (  # noqa: E402
    GIB, MIB, POLICY, add_model_options, add_step_options, build_model, describe, distill_config, free_memory,
    last_loss, model_device, records, run, timed, uses_cuda)

from policyalign.distill_settings import DistillConfig  # noqa: E402
from policyalign.models import cpu_threads  # noqa: E402


def storages(*modules: Any) -> dict[tuple[str, int], int]:
    """(device, data pointer) -> bytes of every tensor storage reachable from `modules`."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            storage = tensor.untyped_storage()
            seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return seen


def nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def make_trainer(variant: str, loaded: Any, recs: list[dict], config: DistillConfig, out: Path) -> Any:
    from policyalign.trainer import build_trainer

    if variant == "stock-full":
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl.experimental.sdft import SDFTTrainer

        from policyalign.trainer import sdft_config

        data = Dataset.from_list([{"prompt": r["messages"], "privileged_context": POLICY} for r in recs])
        args = sdft_config(config, out, device=loaded.device, dtype=loaded.dtype)
        trainer = SDFTTrainer(model=loaded.model, args=args, train_dataset=data,
                              processing_class=loaded.tokenizer)  # no peft_config: full fine-tuning
        trainer.remove_callback(PrinterCallback)
        return trainer
    if variant == "ema":
        config = dataclasses.replace(config, teacher="ema")
    trainer = build_trainer(loaded, POLICY, recs, config, out)
    if variant == "copy":
        teacher = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model))
        teacher.requires_grad_(False)
        teacher.eval()
        trainer.teacher_model = teacher
    return trainer


def count_prefix_builds(trainer: Any, device: str) -> list[float]:
    """Seconds of each build of the trainer's policy-prefix KV cache (a list, appended to in place).

    `PrefixCache.layers` returns the same list until the cache is invalidated, so a call that
    returns a new list object built the cache."""
    builds: list[float] = []
    prefix = getattr(trainer, "prefix", None)
    if prefix is None:
        return builds
    layers, last = prefix.layers, [None]

    def counted(model: Any) -> Any:
        seconds, out = timed(lambda: layers(model), device)
        if out is not last[0]:
            builds.append(seconds)
            last[0] = out
        return out

    prefix.layers = counted
    return builds


def ema_shadow_bytes(trainer: Any) -> int:
    """Bytes of the EMA shadow weights that trl's PEFTAdapterEMACallback keeps outside the model."""
    return sum(nbytes(cb.shadow_weights.values()) for cb in trainer.callback_handler.callbacks
               if getattr(cb, "shadow_weights", None))


LABELS = {
    "base": "teacher base (ours: adapter disabled)",
    "ema": "teacher ema (ours: 'teacher' adapter)",
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
        setup_alloc = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        timer = step_timer(loaded.device)
        trainer.add_callback(timer)
        record = instrument(trainer, loaded.device)
        builds = count_prefix_builds(trainer, loaded.device)
        trainer.train()
        # Counted after the steps: trl adds the EMA "teacher" adapter when training begins.
        student, teacher = storages(trainer.model), storages(trainer.teacher_model)
        both = {**student, **teacher}
        steps, teacher_s = timer.steps[args.warmup:], record["teacher"][args.warmup:]
        result = {
            "where": describe(loaded),
            "same_object": trainer.teacher_model is trainer.model,
            "student_bytes": sum(student.values()),
            "teacher_bytes": sum(teacher.values()),
            "total_bytes": sum(both.values()),
            "teacher_only_bytes": sum(v for k, v in teacher.items() if k not in student),
            "adapter_bytes": nbytes(p for p in trainer.model.parameters() if p.requires_grad),
            "shadow_bytes": ema_shadow_bytes(trainer),
            "start_alloc": start_alloc, "setup_alloc": setup_alloc,
            "peak": torch.cuda.max_memory_allocated() if cuda else None,
            "steps": len(timer.steps), "step_s": statistics.mean(steps) if steps else float("nan"),
            "teacher_s": statistics.mean(teacher_s) if teacher_s else float("nan"),
            "tokens": statistics.mean(record["tokens"][args.warmup:]) if steps else float("nan"),
            "prefix_builds": len(builds) if getattr(trainer, "prefix", None) is not None else None,
            "prefix_build_s": statistics.mean(builds) if builds else float("nan"),
            "loss": last_loss(trainer),
        }
    del trainer, loaded
    free_memory()
    return result


def size(n: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (an adapter is KiB on tiny, MiB on 7B)."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    add_step_options(parser, steps=5, steps_help="timed training steps per variant, after the warm-up", warmup=1)
    args = parser.parse_args()
    if args.smoke:  # small sizes only: `--smoke --shape mini` is how the tests reach the random-init path
        args.steps, args.warmup, args.batch_size, args.max_new_tokens = 1, 1, 2, 4
    args.device = model_device(args)

    config = distill_config(args)
    recs = records(max(16, args.batch_size))
    variants = ["base", "ema", "copy"] + (["stock-full"] if args.shape == "tiny" else [])
    results = {v: measure(v, args, config, recs) for v in variants}
    base = results["base"]
    unit, scale = ("GiB", GIB) if base["total_bytes"] > GIB else ("MiB", MIB)
    print(base["where"])
    print(f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {args.warmup} warm-up + {args.steps} timed "
          f"training step(s) each; unique storages reachable from trainer.model + trainer.teacher_model ({unit}), "
          f"counted after the steps; step and teacher forward: mean of the timed steps")
    head = f"  {'variant':<40} {'teacher is model':>16} {'student':>9} {'teacher':>9} {'held':>9} {'teacher-only':>12}"
    cuda = base["peak"] is not None
    if cuda:
        head += f" {'GPU start':>10} {'after setup':>11} {'peak':>9}"
    print(head + f" {'step s':>7} {'teacher s':>9} {'prefix builds':>13}")
    for variant, r in results.items():
        line = (f"  {LABELS[variant]:<40} {str(r['same_object']):>16} {r['student_bytes'] / scale:9.2f} "
                f"{r['teacher_bytes'] / scale:9.2f} {r['total_bytes'] / scale:9.2f} {r['teacher_only_bytes'] / scale:12.2f}")
        if cuda:
            line += f" {r['start_alloc'] / GIB:10.2f} {r['setup_alloc'] / GIB:11.2f} {r['peak'] / GIB:9.2f}"
        builds = "-" if r["prefix_builds"] is None else f"{r['prefix_builds']} / {r['steps']} steps"
        print(line + f" {r['step_s']:7.3f} {r['teacher_s']:9.3f} {builds:>13}")
    copy_ = results["copy"]
    print(f"  held bytes base/copy: {base['total_bytes'] / copy_['total_bytes']:.2f}x; `base` teacher-only bytes: "
          f"{base['teacher_only_bytes']} (no second copy: {base['teacher_only_bytes'] == 0})")
    if cuda:
        print(f"  peak GPU memory base/copy: {base['peak'] / copy_['peak']:.2f}x "
              f"({base['peak'] / GIB:.2f} vs {copy_['peak'] / GIB:.2f} GiB, saves {(copy_['peak'] - base['peak']) / GIB:.2f} GiB)")

    ema, adapter = results["ema"], base["adapter_bytes"]
    extra = ema["total_bytes"] - base["total_bytes"]
    copy_extra = copy_["total_bytes"] - base["total_bytes"]
    print(f"  EMA teacher vs base (one LoRA adapter = {size(adapter)}, a model copy = {size(copy_extra)}):")
    print(f"    held ema/base: {ema['total_bytes'] / base['total_bytes']:.3f}x; the EMA teacher holds {size(extra)} more "
          f"= {extra / adapter:.2f} adapters ({extra / copy_extra:.3f}x a model copy)")
    print(f"    trl's EMA callback also holds shadow weights outside the model: {size(ema['shadow_bytes'])} "
          f"= {ema['shadow_bytes'] / adapter:.2f} adapters; in all {size(extra + ema['shadow_bytes'])} more than base")
    if cuda:
        print(f"    peak GPU memory ema/base: {ema['peak'] / base['peak']:.3f}x "
              f"({ema['peak'] / GIB:.2f} vs {base['peak'] / GIB:.2f} GiB, +{(ema['peak'] - base['peak']) / MIB:.0f} MiB)")
    per_token = (ema["step_s"] / ema["tokens"]) / (base["step_s"] / base["tokens"])
    print(f"    mean step ema/base: {ema['step_s'] / base['step_s']:.2f}x ({ema['step_s']:.3f} vs {base['step_s']:.3f} s, "
          f"{args.steps} timed step(s) after {args.warmup} warm-up); the students sampled {ema['tokens']:.0f} vs "
          f"{base['tokens']:.0f} completion tokens per step, so per token {per_token:.2f}x")
    print(f"    teacher forward ema/base: {ema['teacher_s'] / base['teacher_s']:.2f}x "
          f"({ema['teacher_s']:.3f} vs {base['teacher_s']:.3f} s per step)")
    print(f"    policy-prefix KV cache built {ema['prefix_builds']} time(s) in {ema['steps']} steps with ema vs "
          f"{base['prefix_builds']} with base: the EMA teacher changes every step, so its prefix cache is rebuilt every "
          f"step, {ema['prefix_build_s'] * 1e3:.1f} ms each (inside the teacher forward; "
          f"{ema['prefix_build_s'] / ema['step_s']:.1%} of the ema step)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
