"""run.py on its own: stage records and keys, skipping finished stages, the run lock, and what a crash,
a full disk or a second process leaves of run.json. The stages here are small functions; the
component under test, the bookkeeping around them, is the real one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from policyalign.errors import InvalidInputError, PolicyAlignError, RunError
from policyalign.run import (LOCK_FILE, MANIFEST, fingerprint, load_run_pack, read_manifest, record_inputs, rekey_stage,
                             run_active, run_inputs, run_lock, same_model, stage, stage_done, stage_results,
                             unbumped_change, write_manifest)

ROOT = Path(__file__).parent.parent


def _run_stage(run_dir: Path, key: str, work: Callable[[dict[str, Any]], None] = lambda results: None) -> bool:
    """A stage as `pa apply` runs one: skipped (False) when it finished under `key`, else run and recorded."""
    if stage_done(run_dir, "fake", key):
        return False
    with stage(run_dir, "fake", key) as results:
        work(results)
    return True


def _child(code: str, *args: str | Path, **kwargs: Any) -> "subprocess.CompletedProcess[str]":
    """`python -c code args` in another process, importing this checkout's policyalign."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, **kwargs)


def _entry(run_dir: Path) -> dict[str, Any]:
    return read_manifest(run_dir)["stages"]["fake"]


# --------------------------------------------------------------------------- skipping and re-running


def test_a_finished_stage_is_skipped_while_its_key_is_unchanged_and_runs_again_when_it_changes(tmp_path: Path) -> None:
    ran = [_run_stage(tmp_path, key, lambda results: results.update(n=1)) for key in ("k1", "k1", "k2", "k2", "k1")]
    assert ran == [True, False, True, False, True]
    entry = _entry(tmp_path)
    assert entry["status"] == "done" and entry["key"] == "k1" and entry["seconds"] >= 0
    assert stage_results(tmp_path, "fake") == {"n": 1}


@pytest.mark.parametrize(("error", "status"), [(ValueError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_a_stage_that_raises_is_not_done_under_any_key_and_runs_again(tmp_path: Path, error: type[BaseException],
                                                                      status: str) -> None:
    """The re-run of a finished stage under a new key starts by replacing its record: when it fails, the
    old key must not still read as done (its outputs may be half rewritten)."""
    def crash(results: dict[str, Any]) -> None:
        results["half"] = True
        raise error("midway")

    _run_stage(tmp_path, "old")
    with pytest.raises(error):
        _run_stage(tmp_path, "new", crash)
    entry = _entry(tmp_path)
    assert (entry["status"], entry["error"], entry["key"]) == (status, error.__name__, "new")
    assert not stage_done(tmp_path, "fake", "new") and not stage_done(tmp_path, "fake", "old")
    assert stage_results(tmp_path, "fake") == {}, "a failed stage's partial results are not its results"
    assert _run_stage(tmp_path, "new") and stage_done(tmp_path, "fake", "new")


def test_a_process_killed_inside_a_stage_leaves_it_running_unlocked_and_the_next_run_redoes_it(tmp_path: Path) -> None:
    killed = _child("import os, signal, sys\nfrom policyalign.run import stage\n"
                    "with stage(sys.argv[1], 'fake', 'k'):\n    os.kill(os.getpid(), signal.SIGKILL)\n", tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _entry(tmp_path)["status"] == "running" and not stage_done(tmp_path, "fake", "k")
    assert not run_active(tmp_path), "the kernel released the dead process's lock"
    assert _run_stage(tmp_path, "k") and stage_done(tmp_path, "fake", "k")


def test_ctrl_c_just_after_the_running_record_is_written_records_the_stage_interrupted(tmp_path: Path) -> None:
    """A Ctrl-C or SIGTERM sent as run.json shows the stage running (a watcher's, a test's) could land after
    the record was written and before the stage's try: it left the stage "running" for good, exit 130."""
    code = ("import os, signal, sys\nfrom policyalign import run\nwrite = run.write_manifest\n"
            "def write_then_ctrl_c(run_dir, manifest):\n    write(run_dir, manifest)\n"
            "    if manifest['stages']['fake']['status'] == 'running':\n        os.kill(os.getpid(), signal.SIGINT)\n"
            "run.write_manifest = write_then_ctrl_c\n"
            "try:\n    with run.stage(sys.argv[1], 'fake', 'k'):\n        pass\nexcept KeyboardInterrupt:\n    print('stopped')\n")
    child = _child(code, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert child.stdout == "stopped\n", child.stderr
    assert (_entry(tmp_path)["status"], _entry(tmp_path)["error"]) == ("interrupted", "KeyboardInterrupt")


def test_a_stage_stopped_before_its_running_record_is_written_leaves_the_last_record(tmp_path: Path) -> None:
    """A stop before the new "running" record reached the disk marks nothing: the record there is the last run's."""
    _run_stage(tmp_path, "k")
    code = ("import sys\nfrom policyalign import run\n"
            "def interrupted(run_dir, manifest):\n    raise KeyboardInterrupt\n"
            "run.write_manifest = interrupted\n"
            "try:\n    with run.stage(sys.argv[1], 'fake', 'k2'):\n        pass\nexcept KeyboardInterrupt:\n    print('stopped')\n")
    child = _child(code, tmp_path)
    assert child.stdout == "stopped\n", child.stderr
    assert stage_done(tmp_path, "fake", "k")


def test_a_record_cut_short_by_a_full_disk_leaves_run_json_whole_and_the_stage_failed(tmp_path: Path) -> None:
    """The done record is the last write of a stage and the largest (its results): a disk filling up
    while it was written must leave the previous run.json, every other stage's record in it intact,
    and no temporary beside it, not a half-written file that a resume cannot read. The stage failed:
    it was left "running", which `pa runs` reads as interrupted (Ctrl-C), with no error recorded."""
    from fulldisk import LIMIT, run_python

    _run_stage(tmp_path, "k")
    manifest = read_manifest(tmp_path)
    manifest["stages"]["earlier"] = {"status": "done", "key": "e"}
    write_manifest(tmp_path, manifest)
    code = ("import sys\nfrom policyalign.errors import RunError\nfrom policyalign.run import stage\n"
            "try:\n    with stage(sys.argv[1], 'fake', 'k2') as results:\n        results['log'] = 'x' * int(sys.argv[2])\n"
            "except RunError as exc:\n    print(exc)\n")
    full = run_python("-c", code, str(tmp_path), str(2 * LIMIT))
    assert full.returncode == 0 and MANIFEST in full.stdout, full.stderr
    assert stage_done(tmp_path, "earlier", "e") and not stage_done(tmp_path, "fake", "k2")
    assert (_entry(tmp_path)["status"], _entry(tmp_path)["error"]) == ("failed", "RunError")
    assert not stage_done(tmp_path, "fake", "k"), "the re-run under k2 had started"
    assert not list(tmp_path.glob(".*.tmp"))
    assert _run_stage(tmp_path, "k2") and stage_done(tmp_path, "fake", "k2")


def test_a_torn_run_json_is_an_error_naming_it_never_a_finished_stage(tmp_path: Path) -> None:
    _run_stage(tmp_path, "k")
    path = tmp_path / MANIFEST
    text = path.read_text()
    path.write_text(text[:text.index('"done"') + 3])
    with pytest.raises(PolicyAlignError) as caught:
        stage_done(tmp_path, "fake", "k")
    assert caught.value.problem.file == str(path)


def test_a_run_json_that_is_no_object_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("[]\n")
    with pytest.raises(RunError, match="run.json is not a JSON object") as caught:
        stage_done(tmp_path, "fake", "k")
    assert "delete it" in caught.value.problem.hint


@pytest.mark.parametrize("edit, where", [
    (lambda m: m.update(stages="oops"), "/stages"),
    (lambda m: m["stages"].update(fake="done"), "/stages/fake"),
    (lambda m: m["stages"]["fake"].update(results=[1]), "/stages/fake/results"),
    (lambda m: m.update(inputs={"pack": "general"}), "/inputs/pack"),
])
def test_a_run_json_whose_parts_are_no_objects_is_refused_naming_the_part(tmp_path: Path, edit: Callable[[dict], Any],
                                                                           where: str) -> None:
    """A hand-edited part was an AttributeError traceback, from `pa runs` too."""
    _run_stage(tmp_path, "k")
    manifest = read_manifest(tmp_path)
    edit(manifest)
    write_manifest(tmp_path, manifest)
    with pytest.raises(RunError, match="is not a JSON object") as caught:
        stage_done(tmp_path, "fake", "k")
    assert (caught.value.problem.file, caught.value.problem.where) == (str(tmp_path / MANIFEST), where)


def test_a_run_json_whose_model_is_no_name_is_refused_naming_it(tmp_path: Path) -> None:
    """`"model": 5` was an AttributeError traceback from `pa apply` (`same_model`) and a TypeError from the
    stage commands, while `pa runs` listed the run as complete with model 5."""
    _run_stage(tmp_path, "k")
    manifest = read_manifest(tmp_path)
    manifest["inputs"]["model"] = 5
    write_manifest(tmp_path, manifest)
    with pytest.raises(RunError, match="inputs/model is not a string") as caught:
        stage_done(tmp_path, "fake", "k")
    assert (caught.value.problem.file, caught.value.problem.where) == (str(tmp_path / MANIFEST), "/inputs/model")


# --------------------------------------------------------------------------- keys


def test_a_key_function_is_asked_when_the_stage_starts_and_again_only_when_it_is_done(tmp_path: Path) -> None:
    """Only a finished stage is recorded under what it loaded; a failed one keeps the key it started
    with (no key is asked of work that was never done)."""
    asked: list[str] = []

    def key() -> str:
        asked.append(f"k{len(asked)}")
        return asked[-1]

    with pytest.raises(ValueError), stage(tmp_path, "fake", key):
        raise ValueError("midway")
    assert asked == ["k0"] and _entry(tmp_path)["key"] == "k0"
    with stage(tmp_path, "fake", key):
        assert _entry(tmp_path)["key"] == "k1"
    assert asked == ["k0", "k1", "k2"] and stage_done(tmp_path, "fake", "k2")


def test_rekeying_a_running_stage_keeps_its_new_keys_whether_it_finishes_or_is_interrupted(tmp_path: Path) -> None:
    """What the filter stage relies on to resume its partial scores: keys recorded again once the model
    is loaded are the ones an interrupted run leaves, and a finished one keeps beside its key."""
    keys = {"key": "before load", "score_key": "scores before load"}
    for outcome in ("interrupted", "done"):
        keys.update(key="before load", score_key="scores before load")
        try:
            with stage(tmp_path, "fake", lambda: keys["key"], score_key=keys["score_key"]):
                assert (_entry(tmp_path)["key"], _entry(tmp_path)["score_key"]) == ("before load", "scores before load")
                keys.update(key="after load", score_key="scores after load")
                rekey_stage(tmp_path, "fake", **keys)
                if outcome == "interrupted":
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        entry = _entry(tmp_path)
        assert (entry["status"], entry["key"], entry["score_key"]) == (outcome, "after load", "scores after load")


def test_a_fingerprint_ignores_the_order_of_keys_and_sees_every_value() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1, "b": [1, 2]}) != fingerprint({"a": 1, "b": [2, 1]})
    assert fingerprint({"path": Path("x")}) == fingerprint({"path": "x"})


def test_a_run_starts_only_in_a_new_or_empty_directory_or_a_run(tmp_path: Path) -> None:
    """`pa apply --out ""` ran in the current directory and wrote its model card over the README.md there."""
    from policyalign.run import check_run_directory

    check_run_directory(tmp_path / "new")  # not there yet: created
    (tmp_path / ".pa.lock").touch()
    (tmp_path / ".run.json.x.tmp").touch()
    check_run_directory(tmp_path)  # only hidden files: a run's own lock and a killed write's temporary
    (tmp_path / "README.md").write_text("a project")
    with pytest.raises(RunError, match=r"no run.json\) and holds other files \(README.md\)") as caught:
        check_run_directory(tmp_path)
    assert caught.value.problem.file == str(tmp_path)
    _run_stage(tmp_path, "k")  # a run directory: its own files are expected
    check_run_directory(tmp_path)
    (tmp_path / "README.md").unlink()
    (tmp_path / MANIFEST).unlink()  # as read_manifest's hint says, to start the run afresh
    (tmp_path / "instructions.jsonl").touch()
    (tmp_path / "eval").mkdir()
    check_run_directory(tmp_path)


@pytest.mark.parametrize(("recorded", "given", "same"), [
    ("tiny", " TINY ", True),
    ("tiny", "acme/tiny", False),
    ("Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct", True),  # an alias and its repository
    ("acme/model", "acme/model@" + "1" * 40, True),  # the commit a run of acme/model loaded, pinned
    ("acme/model@main", "acme/model@v2", True),
    ("acme/model", "acme/other", False),
    ("acme/model", "not a model!", False),  # unresolvable: told apart, not an error
])
def test_same_model_is_one_model_however_named(recorded: str, given: str, same: bool) -> None:
    assert same_model(recorded, given) is same and same_model(given, recorded) is same


# --------------------------------------------------------------------------- the run lock


def test_a_stage_command_clears_the_temporaries_a_killed_write_left_but_not_those_of_its_own_process(
        tmp_path: Path, fixture_packs: Path) -> None:
    """`pa synthesize`, `pa filter` and `pa distill` re-run after one was killed mid-write left its hidden
    `generations/.KEY.json.RAND.tmp` behind for good: only `pa apply` cleared them."""
    from policyalign.io import atomic_open
    from policyalign.registry import Registry
    from policyalign.stages import run_synthesize

    run = tmp_path / "run"
    run.mkdir()
    killed = _child("import os, signal, sys\nfrom pathlib import Path\nfrom policyalign.io import atomic_open\n"
                    "from policyalign.run import stage\n(Path(sys.argv[1]) / 'generations').mkdir()\n"
                    "with stage(sys.argv[1], 'fake', 'k'), atomic_open(Path(sys.argv[1]) / 'generations' / 'a.json') as f:\n"
                    "    f.write('{'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n", run)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((run / "generations").glob(".a.json.*.tmp"))) == 1
    with stage(run, "fake", "k"):  # `pa filter`, `pa distill`, `pa eval` on the run
        assert not list(run.rglob(".*.tmp"))
        with atomic_open(run / "b.json") as f:  # this process's own write, in flight
            f.write("{")
            f.flush()
            with stage(run, "other", "k"):  # a stage inside `pa apply`: the directory is already clear
                assert list(run.glob(".b.json.*.tmp"))
    (run / "generations" / ".c.json.x1y2.tmp").write_text("{")
    run_synthesize(run, Registry([fixture_packs]).load("root-pack"), "tiny", n=1, max_new_tokens=8,
                   batch_size=4, progress=False)
    assert not list(run.rglob(".*.tmp"))
    (tmp_path / "notes.txt").write_text("x\n")  # a folder that is no run's: its hidden files are not the run's
    (tmp_path / ".draft.md.x1y2.tmp").write_text("mine")
    with stage(tmp_path, "fake", "k"):
        pass
    assert (tmp_path / ".draft.md.x1y2.tmp").is_file()


def test_a_second_process_is_refused_the_run_directory_until_the_first_is_gone(tmp_path: Path, hold_run) -> None:  # type: ignore[no-untyped-def]
    with hold_run(tmp_path) as pid:
        assert run_active(tmp_path)
        with pytest.raises(RunError, match=rf"another pa process \(pid {pid}\) is working in this run directory") as caught:
            with stage(tmp_path, "fake", "k"):
                pass
        assert caught.value.problem.file == str(tmp_path.resolve() / LOCK_FILE)
        assert "pa runs" in caught.value.problem.hint
        assert not (tmp_path / MANIFEST).exists(), "refused before its first write"
    assert not run_active(tmp_path)
    assert _run_stage(tmp_path, "k")


def test_the_lock_is_reentrant_and_held_until_the_outermost_holder_lets_go(tmp_path: Path) -> None:
    """A stage inside `pa apply` takes the lock `pa apply` holds: leaving the stage must not hand the
    directory to another process while `pa apply` goes on in it."""
    attempt = ("import sys\nfrom policyalign.errors import RunError\nfrom policyalign.run import run_lock\n"
               "try:\n    with run_lock(sys.argv[1]):\n        print('held')\nexcept RunError as exc:\n    print(exc)\n")
    (tmp_path / "sub").mkdir()
    with run_lock(tmp_path):
        with run_lock(tmp_path / "sub" / ".."):  # the same directory, however spelt
            assert run_active(tmp_path)
        refused = _child(attempt, tmp_path)
        assert f"another pa process (pid {os.getpid()})" in refused.stdout, refused.stdout + refused.stderr
    assert not run_active(tmp_path)
    assert _child(attempt, tmp_path).stdout.strip() == "held"


def test_a_removed_lock_is_gone_after_its_holder_and_never_held_by_two(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`remove=True` (a lock in the user's folder, `pa pull --to`) deletes the file on release. A process
    that opened it while the holder worked, then locked it once released, held a deleted file: a third
    locking the new file at that path would work beside it, so it must lock the file there now."""
    import fcntl
    import threading

    from policyalign import run as run_module

    monkeypatch.setattr(run_module, "LOCK_PATIENCE_S", 30)  # the holder below lets go well within it
    path = tmp_path / ".x.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)

    def let_go() -> None:  # as a `remove=True` holder does: delete the file, then release it
        threading.Event().wait(0.2)
        path.unlink()
        os.close(holder)

    threading.Thread(target=let_go).start()
    with run_lock(tmp_path, name=".x.lock", remove=True):
        other = os.open(path, os.O_RDWR | os.O_CREAT)  # what a third process opens at that path now
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert not path.exists()


# --------------------------------------------------------------------------- inputs


def test_run_inputs_name_the_command_that_starts_a_run(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist") as missing:
        run_inputs(tmp_path / "nowhere")
    assert "pa apply PACK" in missing.value.problem.hint
    # a file, and a directory without run.json, were "does not exist" and "DIR/run.json: this run does not record..."
    (tmp_path / "notes.txt").write_text("x\n")
    with pytest.raises(InvalidInputError, match="notes.txt is a file, not a run directory"):
        run_inputs(tmp_path / "notes.txt")
    with pytest.raises(RunError, match="is not a run directory \\(no run.json\\)") as not_a_run:
        run_inputs(tmp_path)
    assert not_a_run.value.problem.file == str(tmp_path) and "pa apply PACK" in not_a_run.value.problem.hint
    _run_stage(tmp_path, "k")
    with pytest.raises(RunError, match="does not record its pack and model") as unrecorded:
        run_inputs(tmp_path)
    assert "--pack and --model" in unrecorded.value.problem.hint


@pytest.mark.parametrize("command", [["runs"], ["filter"], ["distill"], ["distill", "--resume"],
                                     ["push", "--repo-id", "org/name"]], ids=" ".join)
def test_every_run_directory_command_gives_a_path_that_is_not_there_exit_2(command: list[str], tmp_path: Path) -> None:
    """`pa runs /missing` exited 2 (invalid input) and `pa filter`, `pa distill` and `pa push` 1 (a failure) for
    the same mistyped path: a script could not tell "fix the command" from "the run failed". All say 2 now, as
    README.md's exit codes do for an input that is not there; a file given as the run directory too."""
    from typer.testing import CliRunner

    from policyalign.cli import app

    (tmp_path / "notes.txt").write_text("x\n")
    for given in (tmp_path / "nowhere", tmp_path / "notes.txt"):
        args = [command[0], str(given), *command[1:]]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and str(given) in result.stderr, (args, result.exit_code, result.output)


def test_a_run_refuses_its_pack_once_edited_but_takes_a_pack_it_is_given(tmp_path: Path, fixture_packs: Path) -> None:
    """Stage commands load the pack from the path run.json records: edited since, it would score or train
    on another policy than the run's other stages and record it under the run's digest."""
    from policyalign.registry import Registry

    pack = Registry([fixture_packs]).load("root-pack")
    run = tmp_path / "run"
    record_inputs(run, pack, "tiny")
    assert load_run_pack(run).digest == pack.digest
    policy = fixture_packs / "root-pack" / "policy.md"
    policy.write_text(policy.read_text() + "\nOne more rule.\n")
    with pytest.raises(RunError, match="changed since this run started") as caught:
        load_run_pack(run)
    assert caught.value.problem.file == str(run / MANIFEST)
    assert load_run_pack(run, str(fixture_packs / "root-pack")).digest != pack.digest


def test_a_local_model_is_recorded_by_its_path_so_the_run_works_from_any_directory(
        tmp_path: Path, fixture_packs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pa synthesize PACK --model ./m` recorded `./m`: `pa filter RUN` run from elsewhere then said
    "model directory not found: m", and the same directory typed as `/abs/m` was refused as another model."""
    from policyalign.registry import Registry

    model = tmp_path / "work" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    pack, run = Registry([fixture_packs]).load("root-pack"), tmp_path / "run"
    monkeypatch.chdir(tmp_path / "work")
    record_inputs(run, pack, "./m")
    assert _run_stage(run, "k")  # a run with a finished stage refuses another model
    assert run_inputs(run)["model"] == str(model)
    record_inputs(run, pack, str(model))  # the same directory, typed another way: the same run
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert same_model(run_inputs(run)["model"], "../work/m")
    assert not same_model(run_inputs(run)["model"], "./m")  # here, ./m is no model at all
    with pytest.raises(RunError, match="holds a run of pack"):
        record_inputs(run, pack, "tiny")


def test_a_finished_run_of_a_pack_changed_under_the_same_version_is_named_before_it_is_replaced(
        tmp_path: Path, fixture_packs: Path) -> None:
    """The run directory is named after the version: a pack edited without a bump, or a child whose
    `root-pack@^1` now resolves to another root-pack, retrained in place without a word, replacing the
    adapter and card of the content the run was made from (and already published under that version)."""
    from policyalign.registry import Registry

    child = Registry([fixture_packs]).load("child-pack")
    run = tmp_path / "run"
    record_inputs(run, child, "tiny")
    assert unbumped_change(read_manifest(run), child) is None  # nothing finished yet: nothing to lose
    _run_stage(run, "k")
    assert unbumped_change(read_manifest(run), child) is None  # the same content

    _bump(fixture_packs / "root-pack", "1.1.0")
    note = unbumped_change(read_manifest(run), Registry([fixture_packs]).load("child-pack"))
    assert note is not None and "child-pack@1.0.0 is not the child-pack@1.0.0 this run was made from" in note
    assert "a pack it extends changed: root-pack 1.0.0 -> 1.1.0" in note and "`pa bump PACK_DIR patch" in note

    policy = fixture_packs / "child-pack" / "policy.md"
    record_inputs(run, Registry([fixture_packs]).load("child-pack"), "tiny")
    policy.write_text(policy.read_text() + "\nOne more rule.\n")
    note = unbumped_change(read_manifest(run), Registry([fixture_packs]).load("child-pack"))
    assert note is not None and "its files changed" in note
    _bump(fixture_packs / "child-pack", "1.0.1")
    assert unbumped_change(read_manifest(run), Registry([fixture_packs]).load("child-pack")) is None  # bumped


def _bump(pack_dir: Path, version: str) -> None:
    """Release the pack as `version` (from 1.0.0), with the CHANGELOG.md entry validation asks for."""
    manifest, changelog = pack_dir / "pack.yaml", pack_dir / "CHANGELOG.md"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", f"version: {version}"))
    changelog.write_text(changelog.read_text().replace("## 1.0.0", f"## {version}\n\n- Bumped.\n\n## 1.0.0"))


def test_a_runs_model_directory_moved_elsewhere_is_still_its_model(tmp_path: Path, fixture_packs: Path) -> None:
    """run.json named a local model by its absolute path: after `mv models/m models/m2`, `pa apply --model
    models/m2 --out RUN` (and every stage command) was refused as another model's run. Its files, recorded
    beside the path, say it is the run's; another directory's files say it is not."""
    import shutil

    from policyalign import tiny
    from policyalign.registry import Registry

    model = tmp_path / "m"
    shutil.copytree(tiny.tiny_model_path(), model)
    pack, run = Registry([fixture_packs]).load("root-pack"), tmp_path / "run"
    record_inputs(run, pack, str(model))
    assert _run_stage(run, "k")
    model.rename(tmp_path / "m2")
    record_inputs(run, pack, str(tmp_path / "m2"))
    assert run_inputs(run)["model"] == str(tmp_path / "m2"), "the stage commands load it from its new place"
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "m2", other)
    (other / "generation_config.json").write_text("{}")
    with pytest.raises(RunError, match="holds a run of pack"):
        record_inputs(run, pack, str(other))


def test_a_run_is_not_refused_for_the_moment_pa_runs_asks_whether_it_is_running(tmp_path: Path) -> None:
    """`run_active` (`pa runs`) takes a shared lock for a moment; a `pa apply` starting in that moment was
    refused as if another process worked there, naming the pid of the run that held the directory last."""
    import fcntl
    import threading

    with run_lock(tmp_path):
        pass
    probe = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as `run_active` holds it while it asks
    released = threading.Timer(0.05, os.close, [probe])
    released.start()
    try:
        with run_lock(tmp_path):
            assert run_active(tmp_path)
    finally:
        released.join()
