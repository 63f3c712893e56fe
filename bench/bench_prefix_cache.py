"""Benchmark: teacher forward from the policy-prefix KV cache vs re-reading the whole teacher prompt.

Same model, same batch of teacher prompts (a ~400-token policy as system message plus a short
instruction), same completions. Uncached: `scoring.completion_logits` on the full teacher
prompts (what stock trl does every step). Cached: `PolicyScorer.teacher_logits`, which
continues every row from the prefix cache (built once per teacher version; its one-time cost
is printed separately). It prints the median wall time of each, the ratio cached/uncached
(target <= 0.3x) and the largest absolute logit difference between the two over real
completion tokens (fp32: must be ~1e-4 or less; bf16 differs by rounding).

It also prints the multiply-adds each path does (`multiply_adds`) and their ratio: what the
time ratio would be if a multiply-add cost the same on both paths. The cached path skips the
prefix's tokens, but it still forwards every suffix token against every prefix key, and both
paths project the same completion positions onto the vocabulary, so this ratio rises with the
completion length. `--pack packs/general` measures with that pack's policy instead of the
~400-token one.

Run `python bench/bench_prefix_cache.py` (or `python bench/run.py prefix_cache`); on a GPU,
`--shape qwen2.5-7b --device cuda` uses a random-initialised model with Qwen2.5-7B's
architecture (compute cost does not depend on the weights) and the tiny tokenizer.

The policy, instructions and models live in `common.py`; this file re-exports `POLICY`,
`SHAPES`, `build_model`, `describe`, `records` and `sync`, which other benchmarks import from here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402,F401  (POLICY, SHAPES, describe, records, sync: re-exported for other benchmarks)
    POLICY, SHAPES, add_model_options, build_model, count, describe, dtype_name, model_device, records, run, sync, timed)

from policyalign.models import cpu_threads  # noqa: E402

TARGET = 0.3
TOOLS = [{"type": "function", "function": {"name": "send_email", "description": "Send an email.",
                                           "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}]


def completions(n: int, length: int, tokenizer: Any, seed: int = 0) -> list[list[int]]:
    """Random completion ids of varied length (length, length-1, ...) from the ordinary vocabulary."""
    import random

    rng = random.Random(seed)
    hi = min(len(tokenizer), 2000) - 1
    return [[rng.randint(10, hi) for _ in range(max(1, length - (i % 4)))] for i in range(n)]


def multiply_adds(config: Any, rows: int, queries: int, keys: int, head_positions: int) -> float:
    """Multiply-adds of one forward of `rows` rows of `queries` tokens, each attending `keys` keys.

    Counted as the kernels run them: with right-padded rows the attention mask is explicit, so
    SDPA computes every query-key pair (no causal skipping), on both paths alike. Norms,
    rotary embeddings and biases are left out (a few percent, proportional to tokens).
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    linear = layers * (d * (2 * q_dim + 2 * kv_dim) + 3 * d * config.intermediate_size)
    attention = layers * 2 * q_dim * keys
    return rows * queries * (linear + attention) + head_positions * d * config.vocab_size


def pack_policy(parser: argparse.ArgumentParser, path: str) -> str:
    """The policy of the pack at `path`, or an argparse usage error (exit 2) saying what is wrong with it:
    a missing or invalid --pack ended in a PackError traceback, after the model had been built."""
    from policyalign.errors import PolicyAlignError
    from policyalign.pack import load_pack

    try:
        return load_pack(path).policy
    except PolicyAlignError as exc:
        parser.error(f"--pack {path}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--batch-size", type=count(1), default=8)
    parser.add_argument("--completion-tokens", type=count(1), default=128)
    parser.add_argument("--repeats", type=count(1), default=10)
    parser.add_argument("--pack", default=None, help="use this pack's policy instead of the ~400-token one")
    parser.add_argument("--tool-rows", type=count(0), default=0,
                        help="give this many rows a tool (as agent-tools instructions have): the batch then "
                             "continues from the part of the prefix that ends with the policy")
    args = parser.parse_args()
    policy = pack_policy(parser, args.pack) if args.pack else POLICY
    if args.smoke:
        args.batch_size, args.completion_tokens, args.repeats = 2, 8, 1
    device = model_device(args)

    import torch

    from policyalign.scoring import PolicyScorer, completion_logits

    loaded = build_model(args.shape, device=device, dtype=args.dtype)
    scorer = PolicyScorer(loaded, policy, batch_size=args.batch_size)
    rows = [{**r, "tools": TOOLS} if i < args.tool_rows else r for i, r in enumerate(records(args.batch_size))]
    _, teachers = scorer.prompts(rows)
    comps = completions(args.batch_size, args.completion_tokens, loaded.tokenizer)
    model = loaded.model

    def uncached():  # type: ignore[no-untyped-def]
        return completion_logits(model, teachers, comps, pad_id=scorer.pad_id)

    def cached():  # type: ignore[no-untyped-def]
        return scorer.teacher_logits(teachers, comps)

    with torch.no_grad(), cpu_threads(loaded):
        # The one-time cost, paid once per teacher version.
        build_s, _ = timed(lambda: scorer.prefix.layers(model), loaded.device)
        uncached(), cached()  # warm-up (kernels, allocator)
        # Interleave so drift in machine load hits both equally.
        u_times, c_times, u_out, c_out = [], [], None, None
        for _ in range(args.repeats):
            t, u_out = timed(uncached, loaded.device)
            u_times.append(t)
            t, c_out = timed(cached, loaded.device)
            c_times.append(t)
        where = describe(loaded)
    mask = u_out.mask.bool()
    diff = (c_out.logits.float() - u_out.logits.float()).abs()[mask].max().item()
    lp_diff = (torch.log_softmax(c_out.logits.float(), -1) - torch.log_softmax(u_out.logits.float(), -1)).abs()[mask].max().item()
    u_med, c_med = statistics.median(u_times), statistics.median(c_times)
    prefix_len = scorer.prefix.split(teachers)[0]
    prompt_tokens = sum(len(t) for t in teachers)
    comp_tokens = sum(len(c) for c in comps)
    ratio = c_med / u_med
    t_max = max(len(c) for c in comps)
    full_len = max(len(t) for t in teachers) + t_max
    suffix_len = full_len - prefix_len
    config = loaded.model.config.get_text_config()
    u_work = multiply_adds(config, args.batch_size, full_len, full_len, args.batch_size * t_max)
    c_work = multiply_adds(config, args.batch_size, suffix_len, full_len, args.batch_size * t_max)
    print(where)
    # The rows that got a tool, not --tool-rows: the batch may be smaller (--smoke makes it 2).
    with_tools = sum("tools" in r for r in rows)
    shared = f" (the core of {len(scorer.prefix)}: {with_tools} row(s) with tools)" if with_tools else ""
    print(f"batch {args.batch_size}: policy prefix {prefix_len} tokens{shared}, teacher prompts {prompt_tokens / args.batch_size:.0f} "
          f"tokens each, completions {comp_tokens} tokens; median of {len(u_times)} runs each")
    print(f"  {'path':<34} {'median':>10} {'best':>10}  tokens forwarded")
    print(f"  {'uncached (completion_logits, full)':<34} {u_med * 1e3:8.1f}ms {min(u_times) * 1e3:8.1f}ms  {prompt_tokens + comp_tokens}")
    print(f"  {'cached (PolicyScorer.teacher_logits)':<34} {c_med * 1e3:8.1f}ms {min(c_times) * 1e3:8.1f}ms  "
          f"{prompt_tokens - prefix_len * args.batch_size + comp_tokens}")
    print(f"  prefix cache build (once per teacher version): {build_s * 1e3:.1f} ms")
    print(f"  multiply-adds: uncached {u_work / 1e9:.2f} G, cached {c_work / 1e9:.2f} G, "
          f"ratio {c_work / u_work:.2f} (the time ratio if every multiply-add cost the same)")
    print(f"  cached/uncached: {ratio:.2f}x (target <= {TARGET}x), speedup {1 / ratio:.1f}x")
    print(f"  max |logit diff| over completion tokens: {diff:.2e} (log-prob {lp_diff:.2e}), "
          f"{dtype_name(loaded.dtype)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
