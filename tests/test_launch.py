"""Multi-process launch: batches each process can fill, real torchrun/accelerate runs, devices refused up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyalign.distill_settings import DistillConfig
from policyalign.launch import fit_batch


def test_small_selection_shrinks_the_batch_instead_of_training_zero_steps() -> None:
    config = DistillConfig(batch_size=4, gradient_accumulation_steps=4)
    assert (fit_batch(config, 30).batch_size, fit_batch(config, 30).gradient_accumulation_steps) == (4, 4)
    assert (fit_batch(config, 10).batch_size, fit_batch(config, 10).gradient_accumulation_steps) == (4, 2)
    assert (fit_batch(config, 3).batch_size, fit_batch(config, 3).gradient_accumulation_steps) == (3, 1)
    # Each of N processes draws its own batches: 10 instructions over 2 processes fill 4 x 1 each.
    assert (fit_batch(config, 10, 2).batch_size, fit_batch(config, 10, 2).gradient_accumulation_steps) == (4, 1)
    assert fit_batch(config, 3, 2).batch_size == 1


def test_an_epoch_that_leaves_instructions_out_says_how_many(capsys) -> None:
    """trl drops each epoch's partial batch: 30 instructions at 4 x 4 trained on 16 per epoch without a word."""
    fit_batch(DistillConfig(batch_size=4, gradient_accumulation_steps=4), 30)
    assert "each epoch trains on 16 of the 30 and leaves 14 out" in capsys.readouterr().err
    fit_batch(DistillConfig(batch_size=4, gradient_accumulation_steps=4), 32)
    fit_batch(DistillConfig(batch_size=4, gradient_accumulation_steps=4, max_steps=5), 30)  # steps, not epochs
    assert "leaves" not in capsys.readouterr().err


# The two launchers the README shows, each starting two real processes on the CPU (gloo), as they
# would start one per GPU. accelerate's flags are explicit so no user config file changes the run.
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def _launch(*args: str, cwd: Path, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """Run `args` in two processes under `launcher`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf")}
    return subprocess.run([sys.executable, *LAUNCHERS[launcher], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_different_instructions_into_one_synchronised_adapter(run_dir, tmp_path: Path) -> None:
    run, _ = run_dir
    probe = Path(__file__).with_name("ddp_probe.py")
    done = _launch(str(probe), str(run), str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [2, 2]
    assert ranks[0]["adapter"] == ranks[1]["adapter"], "gradients are all-reduced: one adapter"
    first, second = ({tuple(p) for p in r["prompts"]} for r in ranks)
    assert first and second and not first & second, "each rank rolls out its own shard of the instructions"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_pa_distill_under_a_launcher_reports_and_writes_once(run_dir, launcher: str) -> None:
    run, pack = run_dir
    done = _launch("-m", "policyalign", "distill", str(run), "--pack", str(pack.root), "--model", "tiny",
                   "--max-steps", "2", "--batch-size", "2", "--max-new-tokens", "8", cwd=run, launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1
    meta = json.loads((run / "adapter" / "policyalign.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["steps"] == 2
    # each process draws --batch-size x --grad-accum: the config alone named half the batch each step trained on
    assert meta["training"]["effective_batch"] == 2 * meta["config"]["gradient_accumulation_steps"] * 2
    assert json.loads((run / "run.json").read_text())["stages"]["distill"]["status"] == "done"


def test_vllm_rollouts_without_a_gpu_are_refused_before_the_model_loads(recorded_run) -> None:
    """`pa distill RUN --vllm` on a machine without a CUDA GPU (or without vLLM) ended in trl's bare
    ImportError traceback, raised after the model had loaded."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, _ = recorded_run
    result = CliRunner().invoke(app, ["distill", str(run), "--vllm", "--max-steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "vLLM rollouts (pa distill --vllm, pa apply --backend vllm) need a CUDA GPU" in result.output
    assert "--no-vllm" in result.output


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of the launcher's worker process of `rank` (read from its environment), if it has started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    for pid in children.read_text().split() if children.is_file() else []:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_stop_signal_to_one_rank_stops_every_rank_after_one_checkpoint(run_dir) -> None:
    """A stop signal during training saves a checkpoint once the step ends; under torchrun it may reach one rank
    alone (`kill` of one worker, a scheduler signalling some processes), and that rank saving (or stopping) alone
    would leave the other waiting forever in a collective. The ranks agree at each step's end: both save the one
    checkpoint, with each rank's RNG state, and stop. The stop message was printed once per rank; rank 0 says it."""
    import signal
    import time

    from policyalign.checkpoints import checkpoint_dir, last_complete_checkpoint

    run, pack = run_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(run / ".hf")}
    proc = subprocess.Popen([sys.executable, *LAUNCHERS["torchrun"], "-m", "policyalign", "distill", str(run),
                             "--pack", str(pack.root), "--model", "tiny", "--max-steps", "300", "--batch-size", "2",
                             "--max-new-tokens", "8"], cwd=run, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    record = checkpoint_dir(run) / "trained_with.json"  # written as training begins
    while proc.poll() is None and not record.is_file():
        time.sleep(0.05)
    time.sleep(2.0)  # the held-out measurement, and some steps
    worker = _worker_of_rank(proc.pid, 1)
    assert worker is not None and proc.poll() is None
    os.kill(worker, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    kept = last_complete_checkpoint(checkpoint_dir(run))
    assert kept is not None, err[-3000:]
    assert 0 < int(kept.name.split("-")[1]) < 300
    assert sorted(p.name for p in kept.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert err.count("stopped by SIGTERM: finished stages") == 1, err[-3000:]  # said once, by rank 0, as the note is
    assert json.loads((run / "run.json").read_text())["stages"]["distill"]["status"] == "interrupted"


# Indented for the body of `_CTRL_C_EARLY`'s find_spec: wait (up to 2 minutes) until every rank has got there.
_BOTH_RANKS_HERE = """\
            import pathlib, time
            pathlib.Path(f"ready-{os.environ['RANK']}").touch()
            deadline = time.monotonic() + 120
            while len(list(pathlib.Path().glob("ready-*"))) < int(os.environ["WORLD_SIZE"]) and time.monotonic() < deadline:
                time.sleep(0.01)
"""


def test_ctrl_c_before_the_command_runs_is_said_once_under_torchrun(tmp_path: Path) -> None:
    """Ctrl-C reaches every rank; one landing before the command ran (its modules loading: `cli.exit_interrupted`)
    was said by each, where a stop in the command is said by rank 0 alone."""
    from test_cli_help import _CTRL_C_EARLY

    # A terminal's Ctrl-C reaches both ranks at once. Each rank here stops itself as it imports `where`, so both wait
    # there for each other first: on a loaded machine rank 1 got there, stopped and exited first, and torchrun
    # ended rank 0, still loading, with SIGTERM before its own Ctrl-C, so nothing said "interrupted" (seen in CI).
    together = _CTRL_C_EARLY.replace("        if name == where:\n", "        if name == where:\n" + _BOTH_RANKS_HERE, 1)
    assert together != _CTRL_C_EARLY
    (tmp_path / "ctrl_c_early.py").write_text(together)
    proc = _launch("ctrl_c_early.py", "policyalign.cli.model_cmds", cwd=tmp_path)
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.strip() == "interrupted"] == ["interrupted"], proc.stderr


def _trained(run: Path) -> tuple[list[float], dict]:
    """(the loss of each step, the adapter's weights) of a run `pa distill` trained, checkpointing at its last step."""
    from safetensors.torch import load_file

    last = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h], load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_halving_the_batch_train_the_adapter_one_process_trains(run_dir, tmp_path_factory) -> None:
    """The same instructions per step, split over 2 processes (2 each) or drawn by 1 (4), give the same losses and
    adapter within float32 rounding. Each rank seeded its rollouts by (step, rank, row), so the 2-process run sampled
    other responses to the same instructions: another loss from the first step on, another adapter (0.04 apart on
    weights of 0.13, against 7e-6 now). LoRA dropout is off: its masks come from each rank's own generator."""
    import shutil

    run, pack = run_dir
    alone = tmp_path_factory.mktemp("one-process")
    shutil.copytree(run, alone, dirs_exist_ok=True)
    flags = ["--pack", str(pack.root), "--model", "tiny", "--max-steps", "2", "--save-steps", "2",
             "--max-new-tokens", "8", "--lora-dropout", "0", "--lr", "1e-2", "--grad-accum", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(alone / ".hf")}
    done = subprocess.run([sys.executable, "-m", "policyalign", "distill", str(alone), "--batch-size", "4", *flags],
                          cwd=alone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _launch("-m", "policyalign", "distill", str(run), "--batch-size", "2", *flags, cwd=run)
    assert done.returncode == 0, done.stderr[-3000:]
    (one_losses, one), (two_losses, two) = _trained(alone), _trained(run)
    assert len(one_losses) == 2 and two_losses == pytest.approx(one_losses, rel=1e-5, abs=1e-6)
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4


@pytest.mark.slow
def test_resume_under_torchrun_on_the_cpu_continues_the_checkpoint(run_dir) -> None:
    """`--resume` under torchrun on the CPU ended in torch.load's "don't know how to restore data location of
    torch.storage.UntypedStorage (tagged with cpu:0)": the Trainer maps a multi-process run's optimizer state onto
    `args.device`, there `cpu:RANK`. It continues the checkpoint now, as an uninterrupted run would."""
    run, pack = run_dir
    flags = ["-m", "policyalign", "distill", str(run), "--pack", str(pack.root), "--model", "tiny", "--batch-size", "2",
             "--max-new-tokens", "8", "--save-steps", "1", "--quiet"]
    assert _launch(*flags, "--max-steps", "1", cwd=run).returncode == 0
    done = _launch(*flags, "--max-steps", "2", "--resume", cwd=run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume: no complete checkpoint" not in done.stderr
    assert json.loads((run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((run / "adapter" / "policyalign.json").read_text())["training"]["steps"] == 2


@pytest.mark.slow
def test_a_checkpoint_is_resumed_on_as_many_processes_as_trained_it(run_dir) -> None:
    """A checkpoint trained on 2 processes (2 x 2 instructions a step) resumed by a plain `pa distill` (or `pa apply`)
    trained on at 2 a step, in another order, and policyalign.json said 1 process trained it all. Refused now, with
    the launch that continues it (`test_resume_under_torchrun_on_the_cpu_continues_the_checkpoint`)."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    run, pack = run_dir
    flags = ["distill", str(run), "--pack", str(pack.root), "--model", "tiny", "--batch-size", "2",
             "--max-new-tokens", "8", "--save-steps", "1", "--quiet"]
    assert _launch("-m", "policyalign", *flags, "--max-steps", "1", cwd=run).returncode == 0
    result = CliRunner().invoke(app, [*flags, "--max-steps", "2", "--resume"])
    assert result.exit_code == 1, result.output
    assert "--resume would continue checkpoint-1, trained on 2 processes, on 1 process" in result.output
    assert "torchrun --nproc_per_node 2 -m policyalign distill RUN_DIR --resume" in " ".join(result.output.split())
    assert not (run / "checkpoints" / "checkpoint-2").exists()
