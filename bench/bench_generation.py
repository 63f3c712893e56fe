"""Benchmark: batched vs one-at-a-time greedy generation on the built-in tiny model.

Same prompts, same number of new tokens, greedy decoding, same backend; the only difference
is `batch_size`. It checks that both produce identical token ids, then prints both wall
times (best of `--repeats`) and the speedup ratio. Target: >= 5x at batch size 16.

Run `python bench/bench_generation.py` (or `python bench/run.py generation`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import DEVICE, best_of, count, run  # noqa: E402

from policyalign.generation import SamplingParams, get_backend  # noqa: E402
from policyalign.models import load_model  # noqa: E402
from policyalign.tiny import DATA_DIR  # noqa: E402

TARGET = 5.0


def prompts(n: int) -> list[dict]:
    """`n` user prompts of varied length, cut from the tiny corpus (so padding is exercised)."""
    lines = [ln.strip() for ln in (DATA_DIR / "corpus.txt").read_text(encoding="utf-8").splitlines() if len(ln) > 30]
    return [{"messages": [{"role": "user", "content": " ".join(lines[i : i + 1 + i % 3])}]} for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=count(1), default=32, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=count(1), default=32)
    parser.add_argument("--batch-size", type=count(1), default=16)
    parser.add_argument("--repeats", type=count(1), default=3)
    parser.add_argument("--device", type=DEVICE, default="cpu")
    args = parser.parse_args()

    loaded = load_model("tiny", device=args.device)
    backend = get_backend("transformers", loaded)
    convs = prompts(args.n)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, do_sample=False)
    backend.generate(convs[:2], params, batch_size=2, progress=False)  # warm-up

    batched_s, _, batched = best_of(
        lambda: backend.generate(convs, params, batch_size=args.batch_size, progress=False), args.repeats)
    single_s, _, single = best_of(
        lambda: [backend.generate([c], params, progress=False)[0] for c in convs], args.repeats)

    same = sum(b.token_ids == s.token_ids for b, s in zip(batched, single))
    tokens = sum(len(g.token_ids) for g in batched)
    ratio = single_s / batched_s
    print(f"tiny on {loaded.device}: {args.n} prompts x {args.max_new_tokens} new tokens, greedy ({tokens} tokens)")
    print(f"  one at a time      : {single_s:7.3f} s  ({tokens / single_s:8.1f} tok/s)")
    # The batch the backend ran, not the option: `--n 8` ran one batch of 8 that this said was of 16.
    batch = min(args.batch_size, args.n)
    print(f"  batched (size {batch:>3}) : {batched_s:7.3f} s  ({tokens / batched_s:8.1f} tok/s)")
    print(f"  speedup            : {ratio:.1f}x (target >= {TARGET:.0f}x)  identical token ids: {same}/{args.n}")
    # fp32 must match exactly; in bf16 padding changes rounding, so a few greedy paths diverge.
    return 0 if same == args.n or str(loaded.dtype) != "torch.float32" else 1


if __name__ == "__main__":
    sys.exit(run(main))
