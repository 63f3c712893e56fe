"""Checkpoints: only a complete one is resumed from, and one the disk refuses is an error naming it."""

from __future__ import annotations

from pathlib import Path

from policyalign.checkpoints import last_complete_checkpoint


def _checkpoint(folder: Path, state: str = '{"global_step": 1}') -> Path:
    """A checkpoint as the Trainer leaves it: adapter weights, an optimizer state, trainer_state.json last."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"lora_A": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(state)
    return folder


def test_a_checkpoint_killed_while_writing_its_state_is_not_resumed_from(tmp_path: Path) -> None:
    for step, state in ((2, '{"global_step": 2}'), (3, '{"global_st')):  # checkpoint-3 cut short mid-write
        _checkpoint(tmp_path / f"checkpoint-{step}", state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("")
    assert last_complete_checkpoint(tmp_path) is None


def test_a_checkpoint_the_full_disk_refuses_is_an_error_naming_it(recorded_run) -> None:
    """torch.save on a full disk stopped training with `RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos 152576 vs 152468` and a traceback, naming neither the checkpoint nor the disk."""
    from fulldisk import run_python

    from policyalign.checkpoints import resume_point

    run, _ = recorded_run
    result = run_python("-m", "policyalign", "distill", str(run), "--max-steps", "1", "--save-steps", "1",
                        "--max-new-tokens", "4", "--batch-size", "2")
    assert result.returncode == 1, result.stderr
    assert f"error: {run / 'checkpoints' / 'checkpoint-1'}: writing checkpoint-1 failed (" in result.stderr
    assert "is the disk full?" in result.stderr and "Traceback" not in result.stderr
    assert resume_point(run) is None, "the half-written checkpoint is not taken for a complete one"


def test_a_checkpoint_whose_weights_or_optimizer_a_crash_cut_short_is_not_resumed_from(tmp_path: Path) -> None:
    """The Trainer neither fsyncs nor renames a checkpoint's files: after a machine crash trainer_state.json
    can be whole beside weights cut short, and `pa apply` then failed with a SafetensorError traceback at
    every re-run instead of going on from the checkpoint before."""
    for step in (2, 3, 4):
        _checkpoint(tmp_path / f"checkpoint-{step}", f'{{"global_step": {step}}}')
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    for step, name in ((4, "adapter_model.safetensors"), (3, "optimizer.pt")):
        path = tmp_path / f"checkpoint-{step}" / name
        path.write_bytes(path.read_bytes()[:-10])
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_a_fresh_training_gets_a_new_id_and_a_continued_one_keeps_it(tmp_path: Path) -> None:
    """The id `pa distill`'s stop message tells an earlier training's checkpoints by (not their mtime, which
    clock skew and copies made with cp -p got wrong). A record from before the id, or one cut short, has none."""
    import json

    from policyalign.checkpoints import checkpoint_owner, training_id

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    point = _checkpoint(checkpoints / "checkpoint-1")
    record = checkpoints / "trained_with.json"
    assert checkpoint_owner(tmp_path) == (point, None)  # no record at all
    record.write_text(json.dumps({"resume_key": "k"}))  # written by a pa from before the id
    assert checkpoint_owner(tmp_path) == (point, None)
    assert training_id(checkpoints, continuing=True) != training_id(checkpoints, continuing=True)
    record.write_text(json.dumps({"resume_key": "k", "training": "abc"}))
    assert checkpoint_owner(tmp_path) == (point, "abc")
    assert training_id(checkpoints, continuing=True) == "abc"
    assert training_id(checkpoints, continuing=False) not in ("abc", training_id(checkpoints, continuing=False))
    record.write_text('{"resume_key": "k", "trai')
    assert checkpoint_owner(tmp_path) == (point, None)
    assert checkpoint_owner(tmp_path / "nothing") is None


# `pa distill ARGS` (run like the `pa` console script) sending itself SIGTERM as torch starts importing.
_STOPPED_WHILE_TORCH_IMPORTS = """
import os, signal, sys
class StopAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch.nn":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
sys.meta_path.insert(0, StopAtTorch())
sys.argv = ["pa", "distill", *sys.argv[1:]]
from policyalign.cli import main
main()
"""


def test_a_distill_stopped_while_torch_imports_says_what_is_kept(recorded_run) -> None:  # type: ignore[no-untyped-def]
    """The stop message asks whether the run's checkpoint is whole; safetensors' `safe_open(framework="pt")`
    imported torch for that, which the stop had cut off mid-import: `RuntimeError: generic_type: cannot initialize
    type ...` and a traceback, exit 1, in place of the message and exit 143. The header is read without torch."""
    import subprocess
    import sys

    run, _ = recorded_run
    (run / "checkpoints").mkdir()
    _checkpoint(run / "checkpoints" / "checkpoint-2")
    proc = subprocess.run([sys.executable, "-c", _STOPPED_WHILE_TORCH_IMPORTS, str(run), "--max-steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "the checkpoints in the run directory are an earlier training's" in proc.stderr


def test_a_safetensors_file_is_whole_only_as_long_as_its_header_says(tmp_path: Path) -> None:
    """Read without torch (see above), the check still refuses a file cut short, grown, or with no header."""
    weights = _checkpoint(tmp_path / "checkpoint-1") / "adapter_model.safetensors"
    data = weights.read_bytes()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    for broken in (data[:-1], data + b"\0", data[:8], b"", b"\xff" * 16):
        weights.write_bytes(broken)
        assert last_complete_checkpoint(tmp_path) is None, broken[:16]
