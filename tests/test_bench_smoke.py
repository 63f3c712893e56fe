"""The teacher/trainer benchmarks run end to end at tiny size (`--smoke`); no timing is asserted."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(name: str, *args: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run bench/bench_NAME.py in this process (imports are already warm) and return its stdout."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"bench_{name}.py"), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name, expect", [
    ("prefix_cache", "cached/uncached"),
    ("train_step", "step time ours/stock"),
    ("teacher_memory", "no second copy: True"),
    ("gpu_step", "teacher forward share"),
])
def test_bench_runs_with_smoke(name: str, expect: str, capsys, monkeypatch) -> None:
    out = _run(name, "--smoke", capsys=capsys, monkeypatch=monkeypatch)
    assert expect in out


@pytest.mark.parametrize("name, expect", [("prefix_cache", "cached/uncached"), ("teacher_memory", "no second copy: True")])
def test_bench_runs_on_a_random_init_shape(name: str, expect: str, capsys, monkeypatch) -> None:
    """The GPU rows come from `--shape qwen2.5-7b`; that path (random-init Qwen2 config) had stopped
    importing after a rename, unseen because every smoke run took tiny. `mini` is the same path on CPU."""
    out = _run(name, "--smoke", "--shape", "mini", capsys=capsys, monkeypatch=monkeypatch)
    assert expect in out
    assert "random mini" in out  # teacher_memory's --smoke had replaced the shape with tiny


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_gpu_step_without_cuda_says_so(capsys, monkeypatch) -> None:
    out = _run("gpu_step", capsys=capsys, monkeypatch=monkeypatch)
    assert "needs a CUDA GPU" in out and "nothing measured" in out


def test_train_step_runs_both_trainers_without_lora_dropout(capsys, monkeypatch) -> None:
    """Stock trl switches LoRA dropout off and ours applies the configured rate, so only at 0 do both compute
    the same thing: the benchmark built DistillConfig with the default 0.05, timing ours with dropout on."""
    out = _run("train_step", "--smoke", capsys=capsys, monkeypatch=monkeypatch)
    assert "LoRA dropout ours 0.0 / stock 0.0" in out
    assert "step sd ours n/a (1 step), stock n/a (1 step)" in out  # --smoke times one step: it printed sd 0.000 s


def test_gpu_step_smoke_counts_its_trainable_parameters(capsys, monkeypatch) -> None:
    """tiny's LoRA has 21,504 trainable parameters, which the millions format printed as "0.0M trainable"."""
    out = _run("gpu_step", "--smoke", capsys=capsys, monkeypatch=monkeypatch)
    assert "(21,504 trainable)" in out


def test_prefix_cache_counts_the_rows_that_got_tools(capsys, monkeypatch) -> None:
    """--tool-rows past the batch size gives every row a tool; the header printed the option's value
    ("8 row(s) with tools" in a batch of 2) instead of the rows that have one."""
    out = _run("prefix_cache", "--smoke", "--tool-rows", "8", capsys=capsys, monkeypatch=monkeypatch)
    assert "(the core of 394: 2 row(s) with tools)" in out


def _work_ratio(out: str) -> float:
    line = next(line for line in out.splitlines() if "multiply-adds:" in line)
    return float(line.split("ratio ")[1].split()[0])


def test_prefix_cache_takes_a_pack_policy(capsys, monkeypatch) -> None:
    """--pack swaps in a pack's policy: a longer prefix leaves the cached path a smaller share of the work."""
    default = _run("prefix_cache", "--smoke", capsys=capsys, monkeypatch=monkeypatch)
    general = _run("prefix_cache", "--smoke", "--pack", str(BENCH.parent / "packs" / "general"),
                   capsys=capsys, monkeypatch=monkeypatch)
    assert "policy prefix 394 tokens" in default
    assert "policy prefix 394 tokens" not in general
    assert 0 < _work_ratio(general) < _work_ratio(default) < 1


def test_prefix_cache_with_a_bad_pack_is_a_usage_error(tmp_path: Path, capsys, monkeypatch) -> None:
    """`--pack /no/such/pack` (or a directory without pack.yaml) ended in a PackError traceback."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for bad in (tmp_path / "no-such-pack", tmp_path):
        monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_prefix_cache.py"), "--smoke", "--pack", str(bad)])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(BENCH / "bench_prefix_cache.py"), run_name="__main__")
        assert exit_info.value.code == 2
        assert f"error: --pack {bad}: 1 problem found" in capsys.readouterr().err


@pytest.mark.parametrize("name, option", [("prefix_cache", "--repeats"), ("prefix_cache", "--batch-size"),
                                          ("train_step", "--repeats"), ("generation", "--repeats")])
def test_a_zero_count_is_a_usage_error(name: str, option: str, capsys, monkeypatch) -> None:
    """`--repeats 0` or `--batch-size 0` ran to a traceback (no result to compare, `max()` of no completions)."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"bench_{name}.py"), option, "0"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("name, args, message", [
    ("prefix_cache", ["--dtype", "bogus"], "argument --dtype: unknown dtype 'bogus' (use \"bf16\""),
    ("prefix_cache", ["--device", "bogus"], "argument --device: unknown device 'bogus'"),
    ("teacher_memory", ["--dtype", "bogus"], "argument --dtype: unknown dtype 'bogus'"),
    ("train_step", ["--device", "bogus"], "argument --device: unknown device 'bogus'"),
    ("generation", ["--device", "bogus"], "argument --device: unknown device 'bogus'"),
    ("dedup", ["--sizes", "abc"], "argument --sizes: invalid int list value: 'abc'"),
    ("dedup", ["--sizes", "10,-5"], "argument --sizes: must be at least 1, got -5"),
    ("dedup", ["--sizes", "200,200"], "argument --sizes: each size must differ"),
    ("dedup", ["--threshold", "2"], "argument --threshold: near-duplicate threshold must be in (0, 1], got 2.0"),
])
def test_a_bad_option_is_a_one_line_usage_error(name: str, args: list[str], message: str, capsys, monkeypatch) -> None:
    """A bad --dtype/--device reached policyalign only when the model loaded and ended in a ModelError
    traceback; dedup's --sizes and --threshold ended in ValueError, ZeroDivisionError or InvalidInputError ones."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"bench_{name}.py"), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1]


def test_generation_prints_the_batch_it_ran(capsys, monkeypatch) -> None:
    """With fewer prompts than --batch-size the backend ran one batch of them all, printed as "size 16"."""
    out = _run("generation", "--n", "3", "--max-new-tokens", "2", "--repeats", "1", capsys=capsys, monkeypatch=monkeypatch)
    assert "batched (size   3)" in out


@pytest.mark.parametrize("name", ["prefix_cache", "generation"])
def test_a_bad_pa_dtype_is_a_one_line_error(name: str, capsys, monkeypatch) -> None:
    """PA_DTYPE (the dtype every model loads with) is read when the model loads, past the options' checks:
    a bad one ended the benchmark in a ModelError traceback."""
    monkeypatch.setenv("PA_DTYPE", "bogus")
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"bench_{name}.py"), "--smoke" if name != "generation" else "--n=1"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
    assert exit_info.value.code == 2  # invalid input
    assert capsys.readouterr().err == (f"bench_{name}.py: error: unknown PA_DTYPE=bogus "
                                       "(use \"bf16\", \"fp16\", \"fp32\" or \"auto\")\n")


def test_run_py_without_a_name_lists_the_benchmarks_and_succeeds() -> None:
    """`python bench/run.py` lists the benchmarks, as bench/README.md says it does, and exited 2 doing it, as a
    script or CI step failing; an unknown name is still a usage error."""
    listed = subprocess.run([sys.executable, str(BENCH / "run.py")], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "benchmarks: " in listed.stdout and "train_step" in listed.stdout, listed
    unknown = subprocess.run([sys.executable, str(BENCH / "run.py"), "nosuch"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown benchmark 'nosuch'" in unknown.stderr, unknown
