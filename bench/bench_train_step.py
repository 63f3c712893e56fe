"""Benchmark: training step time of our PolicySDFTTrainer vs stock trl SDFTTrainer, same config.

Both get the same model (same weights), the same instructions, the same LoRA (r, alpha,
targets), max_new_tokens, batch size, seed and trl `SDFTConfig` (`trainer.sdft_config`), and
both use the base model (adapter disabled) as the teacher. The only differences are the ones
`PolicySDFTTrainer` exists for: ours puts the policy in the system message, continues the
teacher forward from the policy-prefix KV cache, and decodes its rollouts with the LoRA
adapter merged, in eval mode, through `generation.decode` (`trainer.build_trainer`); stock
decodes with `model.generate` through the unmerged train-mode PEFT model, and gets the policy
through its `privileged_context` column with its default `teacher_prompt_template` (prompt,
blank line, policy in the user turn), prompts as chat message lists, and re-reads the policy
for every sample.

After `--warmup` steps it times `--steps` optimizer steps of each (callback from step begin to
step end, so rollout generation + student forward/backward + teacher forward + optimizer),
and splits out the rollout (`_generate`) and the teacher forward (the block run under
`_get_teacher_context_for_self_distillation`, which both trainers use for exactly that). It
prints the mean step time of each and the ratio ours/stock (target <= 0.7x), the same ratio
without the rollout, and both per completion token: the two trainers sample from different
random streams, so their completions (which stop at EOS) differ in length.

Each trainer runs `--repeats` times (default 3), alternating, and the medians are printed with
each run's ratio: on a shared machine the ratio of one pair of runs moved between 0.59x and 0.73x.

Run `python bench/bench_train_step.py` (or `python bench/run.py train_step`); on a GPU
`--shape qwen2.5-7b` uses a random-initialised Qwen2.5-7B-shaped model (bf16, gradient
checkpointing on, as `sdft_config` sets on CUDA).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_prefix_cache import POLICY, SHAPES, build_model, describe, records, sync  # noqa: E402
from common import DEVICE, DTYPE, count, distill_config, run  # noqa: E402

from policyalign.distill_settings import DistillConfig  # noqa: E402
from policyalign.models import cpu_threads  # noqa: E402

TARGET = 0.7


def step_timer(device: str) -> Any:
    """A callback timing each optimizer step (begin -> end) and skipping the end-of-run checkpoint."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self._begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            sync(device)
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            sync(device)
            self.steps.append(time.perf_counter() - self._begin)
            control.should_save = False  # a benchmark writes no checkpoints
            return control

    return StepTimer()


def instrument(trainer: Any, device: str) -> dict[str, list[float]]:
    """Time the rollout (`_generate`) and the teacher forward of every step, on this trainer instance."""
    record: dict[str, list[float]] = {"rollout": [], "teacher": [], "tokens": []}
    generate = trainer._generate
    teacher_context = trainer._get_teacher_context_for_self_distillation

    def timed_generate(prompt_ids):  # type: ignore[no-untyped-def]
        sync(device)
        start = time.perf_counter()
        out = generate(prompt_ids)
        sync(device)
        record["rollout"].append(time.perf_counter() - start)
        record["tokens"].append(sum(len(c) for c in out[1]))
        return out

    @contextmanager
    def timed_teacher():  # type: ignore[no-untyped-def]
        with teacher_context():
            sync(device)
            start = time.perf_counter()
            yield
            sync(device)
            record["teacher"].append(time.perf_counter() - start)

    trainer._generate = timed_generate
    trainer._get_teacher_context_for_self_distillation = timed_teacher
    return record


def ours(loaded: Any, recs: list[dict], config: DistillConfig, out: Path) -> Any:
    from policyalign.trainer import build_trainer

    return build_trainer(loaded, POLICY, recs, config, out)


def stock(loaded: Any, recs: list[dict], config: DistillConfig, out: Path) -> Any:
    """trl's SDFTTrainer as its docs use it: chat-message prompts, the policy as privileged_context."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.sdft import SDFTTrainer

    from policyalign.trainer import lora_config, sdft_config

    data = Dataset.from_list([{"prompt": r["messages"], "privileged_context": POLICY} for r in recs])
    args = sdft_config(config, out, device=loaded.device, dtype=loaded.dtype)
    trainer = SDFTTrainer(model=loaded.model, args=args, train_dataset=data,
                          processing_class=loaded.tokenizer, peft_config=lora_config(config))
    trainer.remove_callback(PrinterCallback)
    return trainer


def teacher_prompt_tokens(loaded: Any, recs: list[dict]) -> tuple[float, float]:
    """Mean teacher prompt length: ours (policy as system message) and stock (policy appended to the user turn)."""
    from policyalign.chat import encode_chat, teacher_messages

    tok = loaded.tokenizer
    mine = [len(encode_chat(tok, teacher_messages(POLICY, r["messages"]))) for r in recs]
    theirs = [len(encode_chat(tok, [{"role": "user", "content": f"{r['messages'][-1]['content']}\n\n{POLICY}"}]))
              for r in recs]
    return statistics.mean(mine), statistics.mean(theirs)


def lora_dropout_rate(model: Any) -> float:
    """The largest LoRA dropout rate in `model` as it trains: both trainers must run the same one."""
    import torch

    rates = [layers["default"].p for module in model.modules()
             if isinstance(layers := getattr(module, "lora_dropout", None), torch.nn.ModuleDict)
             and "default" in layers and isinstance(layers["default"], torch.nn.Dropout)]
    return float(max(rates, default=0.0))


def run_trainer(kind: str, args: argparse.Namespace, config: DistillConfig, recs: list[dict]) -> dict[str, Any]:
    """Build one trainer on a fresh copy of the model (same seed), train, return its timings."""
    import torch

    loaded = build_model(args.shape, device=args.device, dtype=args.dtype, trainable=True, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp, cpu_threads(loaded):
        trainer = (ours if kind == "ours" else stock)(loaded, recs, config, Path(tmp))
        timer = step_timer(loaded.device)
        trainer.add_callback(timer)
        record = instrument(trainer, loaded.device)
        if loaded.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        result = {"steps": timer.steps, **record, "where": describe(loaded), "device": loaded.device,
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if loaded.device.startswith("cuda") else None,
                  "teacher_tokens": teacher_prompt_tokens(loaded, recs), "lora_dropout": lora_dropout_rate(trainer.model)}
    del trainer, loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def summarise(result: dict[str, Any], warmup: int) -> dict[str, float]:
    steps = result["steps"][warmup:]
    n = len(steps)
    # Every step generates once (steps_per_generation = 1) and runs one teacher forward.
    rollout = result["rollout"][warmup:warmup + n]
    teacher = result["teacher"][warmup:warmup + n]
    tokens = result["tokens"][warmup:warmup + n]
    mean = statistics.mean
    return {"step": mean(steps), "rollout": mean(rollout), "teacher": mean(teacher),
            "rest": mean(steps) - mean(rollout) - mean(teacher), "tokens": mean(tokens),
            "sd": statistics.stdev(steps) if n > 1 else None, "n": n}


def spread(summary: dict[str, Any]) -> str:
    """The step times' standard deviation; one timed step has none (printing 0.000 s claimed a perfectly steady run)."""
    return "n/a (1 step)" if summary["sd"] is None else f"{summary['sd']:.3f} s"


def median_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the repeated runs (by the run with the median step time for sd and n)."""
    middle = sorted(summaries, key=lambda x: x["step"])[len(summaries) // 2]
    return {**middle, **{key: statistics.median(x[key] for x in summaries)
                         for key in ("step", "rollout", "teacher", "rest", "tokens")}, "runs": [x["step"] for x in summaries]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=["tiny", *SHAPES])
    parser.add_argument("--device", type=DEVICE, default=None,
                        help="cpu or cuda (default: cpu for tiny, else cuda if available)")
    parser.add_argument("--dtype", type=DTYPE, default=None)
    parser.add_argument("--steps", type=count(1), default=10, help="timed optimizer steps per trainer")
    parser.add_argument("--warmup", type=count(0), default=1)
    parser.add_argument("--batch-size", type=count(1), default=4)
    parser.add_argument("--max-new-tokens", type=count(1), default=128)
    parser.add_argument("--records", type=count(1), default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=count(1), default=3, help="runs of each trainer, alternating; medians are printed")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.max_new_tokens, args.records, args.repeats = 1, 1, 2, 4, 4, 1
    args.device = args.device or ("cpu" if args.shape == "tiny" else None)

    # LoRA dropout 0 for both (common.distill_config): stock switches it off, ours applies it.
    config = distill_config(args)
    recs = records(max(args.records, args.batch_size))
    # Alternate the trainers, so a change in machine load between runs hits both alike.
    runs = {"ours": [], "stock": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(run_trainer(kind, args, config, recs))
    results = {kind: r[0] for kind, r in runs.items()}
    s = {kind: median_summary([summarise(r, args.warmup) for r in rs]) for kind, rs in runs.items()}
    a, b = s["ours"], s["stock"]
    t_ours, t_stock = results["ours"]["teacher_tokens"]
    print(results["ours"]["where"])
    print(f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, LoRA r={config.lora_r} on "
          f"{','.join(config.target_modules)}, LoRA dropout ours {results['ours']['lora_dropout']} / stock "
          f"{results['stock']['lora_dropout']}; teacher prompts: ours {t_ours:.0f} tokens (policy as system, "
          f"prefix cached), stock {t_stock:.0f} (policy in user turn); mean of {a['n']} steps after {args.warmup} warm-up, "
          f"median of {args.repeats} alternating runs of each")
    print(f"  {'':<22} {'ours':>10} {'stock':>10} {'ours/stock':>11}")
    rows = [("step (s)", "step"), ("  rollout (s)", "rollout"), ("  teacher forward (s)", "teacher"),
            ("  student + optim (s)", "rest")]
    for label, key in rows:
        ratio = a[key] / b[key] if b[key] > 0 else float("nan")
        print(f"  {label:<22} {a[key]:10.3f} {b[key]:10.3f} {ratio:10.2f}x")
    no_roll = (a["step"] - a["rollout"]) / (b["step"] - b["rollout"])
    print(f"  {'step - rollout (s)':<22} {a['step'] - a['rollout']:10.3f} {b['step'] - b['rollout']:10.3f} {no_roll:10.2f}x")
    print(f"  {'completion tokens/step':<22} {a['tokens']:10.0f} {b['tokens']:10.0f}")
    per_token = {k: (1000 * v["rollout"] / v["tokens"], 1000 * v["step"] / v["tokens"]) for k, v in s.items()}
    for i, label in enumerate(("rollout ms/token", "step ms/token")):
        mine, theirs = per_token["ours"][i], per_token["stock"][i]
        print(f"  {label:<22} {mine:10.3f} {theirs:10.3f} {mine / theirs:10.2f}x")
    print(f"  {'teacher share of step':<22} {a['teacher'] / a['step']:10.1%} {b['teacher'] / b['step']:10.1%}")
    if results["ours"]["peak_gib"] is not None:
        print(f"  {'peak GPU memory (GiB)':<22} {results['ours']['peak_gib']:10.2f} {results['stock']['peak_gib']:10.2f}")
    print(f"  step time ours/stock: {a['step'] / b['step']:.2f}x (target <= {TARGET}x), per completion token "
          f"{per_token['ours'][1] / per_token['stock'][1]:.2f}x; "
          f"without the rollout: {no_roll:.2f}x; step sd ours {spread(a)}, stock {spread(b)}")
    print("  each run's ratio: " + ", ".join(f"{x / y:.2f}x" for x, y in zip(a["runs"], b["runs"])))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
