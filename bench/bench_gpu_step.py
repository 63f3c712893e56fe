"""Benchmark (GPU): PolicySDFTTrainer training steps on a random-initialised Qwen2.5-7B-shaped model.

bf16, LoRA r=16 on q,k,v,o (DistillConfig defaults), gradient checkpointing on (as
`trainer.sdft_config` sets on CUDA), batch 4, 128 completion tokens, the ~400-token policy of
common.py as system message with the prefix cache on, teacher `base`. The weights
are random (compute cost does not depend on them), the tokenizer is tiny's; a random model
rarely samples an end token, so nearly every rollout runs the full `--max-new-tokens`.

It times `--warmup` + `--steps` optimizer steps (step begin -> step end) and prints, per timed
step and as a mean: step time, rollout (`_generate`), teacher forward, the rest (student
forward/backward + optimizer), completion tokens per step, tokens/s over the whole step
(rollout + train) and over the rollout alone, and the peak GPU memory
(`torch.cuda.max_memory_allocated`, weights included).

Without CUDA it says so and exits (status 0) unless `--smoke`, which runs the same code on
the built-in tiny model on the CPU in a few seconds (for tests; its numbers mean nothing).
Run `python bench/bench_gpu_step.py` (or `python bench/run.py gpu_step`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train_step import instrument, step_timer  # noqa: E402
from common import (  # noqa: E402
    GIB, POLICY, add_model_options, add_step_options, build_model, count, describe, distill_config, last_loss, records, run)

from policyalign.models import cpu_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser, shape="qwen2.5-7b", device=False,
                      smoke_help="tiny model on any device, one step (code-path check)")
    add_step_options(parser, steps=3, steps_help="timed steps after the warm-up", warmup=1)
    parser.add_argument("--lora-r", type=count(1), default=16)
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if args.smoke:
        args.shape, args.steps, args.warmup, args.batch_size, args.max_new_tokens = "tiny", 1, 1, 2, 4
    elif not cuda:
        print("bench_gpu_step needs a CUDA GPU and none is available (torch.cuda.is_available() is False): "
              "nothing measured. Run it on a GPU machine, or with --smoke for a CPU check of the code path.")
        return 0
    device = "cuda" if cuda else "cpu"

    config = distill_config(args, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    from policyalign.trainer import build_trainer

    loaded = build_model(args.shape, device=device, trainable=True, seed=args.seed)
    weights = torch.cuda.memory_allocated() if cuda else 0
    with tempfile.TemporaryDirectory(prefix="bench-gpu-step-") as tmp, cpu_threads(loaded):
        trainer = build_trainer(loaded, POLICY, records(max(16, args.batch_size * (args.warmup + args.steps))),
                                config, Path(tmp))
        timer = step_timer(loaded.device)
        trainer.add_callback(timer)
        record = instrument(trainer, loaded.device)
        setup = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        where = describe(loaded)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        checkpointing = bool(trainer.args.gradient_checkpointing)
        prefix = len(trainer.prefix) if trainer.prefix is not None else 0
        loss = last_loss(trainer)

    print(where)
    print(f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, LoRA r={config.lora_r} on "
          f"{','.join(config.target_modules)} ({trainable:,} trainable), gradient checkpointing "
          f"{'on' if checkpointing else 'off'}, policy prefix {prefix} tokens (cached), teacher base")
    print(f"  {'step':<8} {'total s':>8} {'rollout s':>10} {'teacher s':>10} {'rest s':>8} {'tokens':>7} "
          f"{'tok/s':>8} {'rollout tok/s':>14}")
    rows = []
    for i, step in enumerate(timer.steps):
        roll, teach, toks = record["rollout"][i], record["teacher"][i], record["tokens"][i]
        rows.append((step, roll, teach, toks))
        tag = "warm-up" if i < args.warmup else str(i - args.warmup + 1)
        print(f"  {tag:<8} {step:8.3f} {roll:10.3f} {teach:10.3f} {step - roll - teach:8.3f} {toks:7d} "
              f"{toks / step:8.1f} {toks / roll:14.1f}")
    timed = rows[args.warmup:]
    step, roll, teach, toks = (statistics.mean(col) for col in zip(*timed))
    print(f"  {'mean':<8} {step:8.3f} {roll:10.3f} {teach:10.3f} {step - roll - teach:8.3f} {toks:7.0f} "
          f"{toks / step:8.1f} {toks / roll:14.1f}")
    print(f"  teacher forward share {teach / step:.1%}, rollout share {roll / step:.1%}; last loss {loss:.4f}")
    if cuda:
        print(f"  GPU memory: weights {weights / GIB:.2f} GiB, after setup {setup / GIB:.2f} GiB, "
              f"peak over the steps {peak / GIB:.2f} GiB (torch.cuda.max_memory_allocated)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
