"""The run directory and its `run.json` manifest: what went in, what came out, which stages ran.

Every stage reads the previous stage's files from one directory and writes its own
atomically. The manifest records the inputs (pack digest, model, options) and, per stage,
a fingerprint of what the stage depended on, so a re-run can skip finished stages whose
inputs are unchanged and redo the rest.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import InvalidInputError, PolicyAlignError, RunError
from .io import naming_disk_errors, read_json, write_json

if TYPE_CHECKING:
    from .pack import Pack

MANIFEST = "run.json"
VERSIONED = ("policyalign", "torch", "transformers", "trl", "peft", "huggingface-hub")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def fingerprint(data: Any) -> str:
    """A stable hash of JSON-able data (sorted keys), for change detection."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {"inputs": {}, "stages": {}}
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunError("run.json is not a JSON object", file=str(path), hint="delete it to start the run afresh")
    data.setdefault("inputs", {})
    data.setdefault("stages", {})
    _check_manifest_shape(data, path)
    return data


def _check_manifest_shape(data: dict[str, Any], path: Path) -> None:
    """The objects every reader of run.json indexes into: a hand-edited `"stages": "x"` (or a stage, its
    results or the pack record, that is no object) was an AttributeError traceback from `pa apply`, and
    from `pa runs`, which then listed no run at all. So was a model that is no name (`"model": 5`)."""
    places = [("/inputs", data["inputs"]), ("/stages", data["stages"])]
    if isinstance(data["inputs"], dict) and "pack" in data["inputs"]:
        places.append(("/inputs/pack", data["inputs"]["pack"]))
    if isinstance(data["stages"], dict):
        places += [(f"/stages/{name}", entry) for name, entry in data["stages"].items()]
        places += [(f"/stages/{name}/results", entry["results"]) for name, entry in data["stages"].items()
                   if isinstance(entry, dict) and "results" in entry]
    for where, value in places:
        if not isinstance(value, dict):
            raise RunError(f"run.json's {where.lstrip('/')} is not a JSON object", file=str(path), where=where,
                           hint="restore it, or delete run.json to start the run afresh")
    model = data["inputs"].get("model") if isinstance(data["inputs"], dict) else None
    if model is not None and not isinstance(model, str):  # `same_model` and the stage commands take it as a name
        raise RunError("run.json's inputs/model is not a string (a model name or directory)", file=str(path),
                       where="/inputs/model", hint="restore it, or delete run.json to start the run afresh")


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(Path(run_dir) / MANIFEST, manifest)


def pack_record(pack: "Pack") -> dict[str, Any]:
    """The pack a run used; `ancestors` holds the version each pack it extends resolved to (`general@^1`
    resolves to whatever is installed), so a later change of parent can be named."""
    from .pack import parent_records

    return {"name": pack.name, "version": pack.version, "digest": pack.digest, "path": str(pack.root.resolve()),
            "title": pack.title, "ancestors": {p.pop("name"): p for p in parent_records(pack)}}


def unbumped_change(manifest: dict[str, Any], pack: "Pack") -> str | None:
    """Why a run with finished stages is about to be redone under the very same pack version, or None.

    The run directory is named after the version (runs/NAME-VERSION-MODEL), so a pack edited without
    a version bump (or whose `general@^1` now resolves to another general) retrains in place: the
    adapter and card of the content the run was made from are replaced, and both carry one version."""
    recorded = manifest["inputs"].get("pack") or {}
    if not manifest["stages"] or (recorded.get("name"), recorded.get("version")) != (pack.name, pack.version):
        return None
    if recorded.get("digest") in (None, pack.digest):
        return None
    then = recorded.get("ancestors")
    moved = _changed_ancestors(then, pack) if isinstance(then, dict) else []
    where = (f"a pack it extends changed: {', '.join(moved)}" if moved
             else "its files changed" if isinstance(then, dict) else "its files or a pack it extends changed")
    return (f"{pack.ref} is not the {pack.ref} this run was made from (digest {str(recorded['digest'])[:12]} -> "
            f"{pack.digest[:12]}: {where}); its stages re-run and replace this run's adapter and card under the "
            "same version. To keep both, bump the pack's version (`pa bump PACK_DIR patch --note ...`) or pass --out")


def _changed_ancestors(recorded: dict[str, Any], pack: "Pack") -> list[str]:
    """`general 1.0.0 -> 1.1.0` for each ancestor whose version or content differs from the recorded one."""
    changed = []
    for ancestor in pack.ancestry()[:-1]:
        then = recorded.get(ancestor.name)
        then = then if isinstance(then, dict) else {}
        if then.get("digest") == ancestor.digest:
            continue
        was = then.get("version", "absent")
        changed.append(f"{ancestor.name} {was} -> {ancestor.version}" +
                       (" (same version, other content)" if was == ancestor.version else ""))
    return changed


def record_inputs(run_dir: Path, pack: "Pack", model: str, **extra: Any) -> dict[str, Any]:
    """Write (or update) the run's inputs: pack identity, model and library versions."""
    from .models import recorded_name, recorded_weights

    manifest = read_manifest(run_dir)
    check_same_run(run_dir, manifest, pack.name, model)
    manifest["inputs"].pop("model_files", None)
    manifest["inputs"].update({"pack": pack_record(pack), "model": recorded_name(model), **recorded_weights(model), **extra})
    manifest["versions"] = versions()
    manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_manifest(run_dir, manifest)
    return manifest


# What a run writes into its directory (docs/ARCHITECTURE.md, "Run directory").
RUN_FILES = frozenset({MANIFEST, "instructions.jsonl", "synthesis.json", "generations", "scored.jsonl",
                       "scored.partial.jsonl", "selected.jsonl", "heldout.jsonl", "filter_hist.png", "adapter",
                       "checkpoints", "tensorboard", "eval", "README.md"})


def check_run_directory(run_dir: Path) -> None:
    """Refuse to start a run in a directory that holds files but no run: its stages write README.md,
    eval/, adapter/ and more over whatever has those names. `--out ""` (an unset variable) is the current
    directory, and a run there replaced a project's README.md with the model card. Hidden files (the
    run's own lock, a killed write's temporary, a .gitkeep) do not count, nor a run's own files with its
    run.json deleted to start it afresh (a README.md alone is no run's)."""
    if others := _other_files(Path(run_dir)):
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunError(f"not a run directory (no {MANIFEST}) and holds other files ({shown}), which the run's "
                       "files would be written among and over", file=str(run_dir),
                       hint="give --out a new or empty directory, or the directory of an existing run")


def _other_files(run_dir: Path) -> list[str]:
    """The files in `run_dir` that are no run's (`check_run_directory`): none where it holds run.json or is not there."""
    if (run_dir / MANIFEST).is_file() or not run_dir.is_dir():
        return []
    names = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
    if names <= RUN_FILES and names - {"README.md"}:
        return []
    return sorted(names - RUN_FILES) or sorted(names)


def check_same_run(run_dir: Path, manifest: dict[str, Any], pack_name: str, model: str, *,
                   hint: str = "choose another --out for this run (or delete that directory to reuse it)") -> None:
    """Refuse to start another pack's or model's run in a directory holding one: its stages would re-run
    and replace the finished instructions, adapter and card. Options, the pack's version or its
    edits may change: that is re-running the same experiment, and resuming is keyed for it."""
    recorded = manifest["inputs"]
    old_pack, old_model = (recorded.get("pack") or {}).get("name"), recorded.get("model")
    if not manifest["stages"] or (old_pack in (None, pack_name) and (
            old_model is None or same_model(old_model, model, recorded.get("model_files")))):
        return
    raise RunError(f"{run_dir} holds a run of pack {old_pack!r} with model {old_model!r}, not {pack_name!r} with {model!r}",
                   file=str(Path(run_dir) / MANIFEST), hint=hint)


def same_model(recorded: str, given: str, recorded_files: str | None = None) -> bool:
    """One model, however named: a Hub repository by an alias or at another revision (`org/name@<commit>`
    pinning the commit the run's `org/name` loaded) is the same experiment re-run, as another version
    of the pack is; the stage keys, which hold the commit, say what must run again. A local directory
    is one by its path, or, moved elsewhere, by its files (`recorded_files`, run.json's `model_files`:
    `models.local_files_key` of the run's directory)."""
    from .models import TINY, local_files_key, resolve_model

    if recorded == given:
        return True
    if TINY in (recorded.strip().lower(), given.strip().lower()):  # not built just to be told apart
        return recorded.strip().lower() == given.strip().lower()
    try:
        new = resolve_model(given)
    except PolicyAlignError:
        return False
    if recorded_files and new.kind == "local" and local_files_key(new.location) == recorded_files:
        return True
    try:
        old = resolve_model(recorded)
    except PolicyAlignError:
        return False
    return old.kind == new.kind and old.kind in ("hub", "local") and old.location == new.location


def run_inputs(run_dir: Path) -> dict[str, Any]:
    """The recorded inputs of an existing run, or an error saying how to start one.

    A path that is not there, or a file, is invalid input (exit 2), as `pa runs` and any input file that is
    not there: it was a RunError (exit 1) from `pa filter` and `pa distill` only. A directory that holds no
    run, or a run that does not record its inputs, is a RunError."""
    run_dir = Path(run_dir)
    start = "start a run with `pa apply PACK --model M --out DIR` or `pa synthesize PACK --model M --out DIR`"
    if not run_dir.is_dir():
        # A file (`pa filter runs/x/run.json`) was told "run directory ... does not exist", though it is right there.
        what = f"{run_dir} is a file, not a run directory" if run_dir.exists() else f"run directory {run_dir} does not exist"
        hint = f"pass its directory, {run_dir.parent}" if run_dir.name == MANIFEST else start
        raise InvalidInputError(what, file=str(run_dir), hint=hint)
    if not (run_dir / MANIFEST).is_file():
        # was "DIR/run.json: this run does not record its pack and model", naming a file that is not there
        raise RunError(f"{run_dir} is not a run directory (no {MANIFEST})", file=str(run_dir),
                       hint=f"pass the directory `pa apply` or `pa synthesize` wrote, or {start}")
    inputs = read_manifest(run_dir)["inputs"]
    if "pack" not in inputs or "model" not in inputs:
        raise RunError("this run does not record its pack and model", file=str(run_dir / MANIFEST),
                       hint="pass --pack and --model, or start with `pa synthesize PACK --model M --out DIR`")
    return inputs


def require(run_dir: Path, name: str, producer: str) -> Path:
    """Path of a stage input, or a RunError naming the command that produces it."""
    path = Path(run_dir) / name
    if not path.exists():
        raise RunError(f"{path} is missing", file=str(path), hint=f"run `{producer}` first")
    return path


def load_run_pack(run_dir: Path, override: "str | Pack | None" = None,
                  packs_path: list[Path] | None = None) -> "Pack":
    """The pack of a run: `override` if given (a spec, or the Pack itself), else the recorded path, whose
    digest must still be the run's. `packs_path` is searched first, as `pa apply --packs-path` did."""
    from .pack import Pack
    from .registry import Registry

    if isinstance(override, Pack):  # pa apply: the very pack it resolved, parents and all
        return override
    inputs = read_manifest(run_dir)["inputs"]
    if override is None and "pack" not in inputs:
        run_inputs(run_dir)
    spec = override or inputs["pack"]["path"]
    pack = Registry.default(packs_path=packs_path).load(spec)
    recorded = inputs.get("pack", {}).get("digest")
    if override is None and recorded and recorded != pack.digest:
        raise RunError(f"pack {pack.ref} changed since this run started (digest {pack.digest[:12]}, run has {recorded[:12]})",
                       file=str(Path(run_dir) / MANIFEST),
                       hint="give the --packs-path the run used, start a new run directory, or re-run `pa apply` "
                            "to redo the stages")
    return pack


def stage_results(run_dir: Path, name: str) -> dict[str, Any]:
    """What stage `name` recorded as its results ({} when it has not finished)."""
    results = read_manifest(run_dir)["stages"].get(name, {}).get("results")
    return results if isinstance(results, dict) else {}


def stage_done(run_dir: Path, stage: str, key: str) -> bool:
    """True when `stage` finished with the same input fingerprint `key`."""
    entry = read_manifest(run_dir)["stages"].get(stage, {})
    return entry.get("status") == "done" and entry.get("key") == key


# Held (flock) by the process working in a run directory; the kernel releases it when that process
# ends, however it ends, so a killed run never leaves the directory locked.
LOCK_FILE = ".pa.lock"
_held: dict[Path, int] = {}  # lock file (in its resolved directory) -> how deeply this process holds it


RUN_DIR_BUSY = ("run directory", "wait for it to finish (`pa runs` lists it as running), "
                                  "or work in another run directory (--out)")
EVAL_DIR_BUSY = ("evaluation folder", "wait for the evaluation writing it to finish (a `pa eval`, or a "
                                      "`pa apply` eval stage), or evaluate into another folder (--out)")
JUDGE_OUT_BUSY = ("`pa judge` output", "wait for the `pa judge` writing it to finish, or judge into another file (--out)")


@contextmanager
def run_lock(run_dir: Path, busy: tuple[str, str] = RUN_DIR_BUSY, name: str = LOCK_FILE, *,
             remove: bool = False) -> Iterator[None]:
    """Hold `run_dir` for this process (re-entrant), or raise a RunError naming the process holding it.

    Two `pa apply` (or stage commands) in one directory each deleted the other's half-written
    files, removed its checkpoints and wrote run.json over its record, and could leave an adapter
    trained on one selection recorded under the other's key. `busy` is (what the directory is, how
    to get past it) for that error: an evaluation folder is no run `pa runs` lists. `name` is the lock
    file's: one output among others in a folder (`pa judge --out`) is held by a lock of its own.
    `remove` deletes the lock file on release, for a lock in a folder of the user's (`pa pull --to`),
    where one was left beside every target pulled into it.
    """
    path = Path(run_dir).resolve() / name
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd, writable = _locked(path, busy, remove)
    try:
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            if remove and writable:  # while still held: a process that opened it meanwhile finds it gone (`_locked`)
                with suppress(OSError):  # left behind, it is only litter: no reason to fail the work done
                    path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def run_held(run_dir: Path) -> Iterator[None]:
    """`run_lock` on a run directory, whose first hold (not a re-entry: a stage inside `pa apply`) clears
    its stale temporaries: `pa synthesize`, `pa filter` and `pa distill` left a killed write's
    `.NAME.*.tmp` behind for good, only `pa apply` cleared them. Only here, under the run's lock, and
    only in a directory that holds a run's files alone (`check_run_directory`): a folder that is no
    run (a `pa pull --to` target, a `pa judge --out` or `pa eval --out` folder, a project's `--out .`)
    holds hidden files that are not the run's."""
    first = Path(run_dir).resolve() / LOCK_FILE not in _held
    with run_lock(run_dir):
        if first and not _other_files(Path(run_dir)):
            remove_stale_temporaries(Path(run_dir))
        yield


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written `.NAME.*.tmp` files a killed run left behind (never renamed into place)."""
    for path in run_dir.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _locked(path: Path, busy: tuple[str, str], removable: bool) -> tuple[int, bool]:
    """(fd, writable) of the lock file at `path`, exclusively locked, or a RunError naming its holder.
    Where holders remove it on release (`removable`), the file locked must still be the one at `path`:
    one locked after its holder removed it is no lock, as a third process creates and locks a new one."""
    while True:
        with naming_disk_errors(path):
            try:
                fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
            except PermissionError:  # another user's lock file in a shared run directory: flock needs no write access
                fd, writable = os.open(path, os.O_RDONLY), False
        if not _take_lock(fd):
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"another pa process (pid {owner}) is working in this {busy[0]}", file=str(path),
                           hint=busy[1])
        if not removable or _same_file(fd, path):
            return fd, writable
        os.close(fd)  # its holder removed it while this process waited: lock the one at `path` now


def _same_file(fd: int, path: Path) -> bool:
    """Whether `fd` is the file now at `path`."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino)


def run_active(run_dir: Path) -> bool:
    """Whether a process (this one or another) holds `run_dir`'s lock now: its running stage is running,
    not interrupted."""
    where = Path(run_dir).resolve()
    if where / LOCK_FILE in _held:
        return True
    try:
        fd = os.open(where / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


# How long taking the lock waits out a holder before refusing: `run_active` (`pa runs`) holds a shared lock
# for a moment to ask whether a run is running, and a `pa apply` starting in that moment was refused,
# naming the pid of the process that held the directory last, long gone. A working holder holds it for minutes.
LOCK_PATIENCE_S = 0.5


def _take_lock(fd: int) -> bool:
    """The exclusive lock on `fd`, tried again for LOCK_PATIENCE_S before giving up (False)."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while not _try_lock(fd, fcntl.LOCK_EX):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _try_lock(fd: int, kind: int) -> bool:
    """False when another process holds the lock. A filesystem without locks (some network and FUSE
    mounts) runs unlocked rather than not at all."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    return True


def started_at(entry: Any) -> float:
    """When a stage's record says it started; 0 for a record without a time (hand-edited, or malformed)."""
    value = entry.get("started") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def rekey_stage(run_dir: Path, name: str, **keys: Any) -> None:
    """Record a running stage's keys again once it has loaded its model. A Hub model the stage
    downloaded has a commit only from then on: keys recorded before it never match the next run's,
    which then throws away what this stage keeps for a resume (a filter's partial scores) if it is
    interrupted, and scores again from the start. (Also what a stage learnt only as it ran: the settings
    a restored checkpoint was trained with.)"""
    manifest = read_manifest(run_dir)
    manifest["stages"][name].update(keys)
    write_manifest(run_dir, manifest)


@contextmanager
def stage(run_dir: Path, name: str, key: str | Callable[[], str], **info: Any) -> Iterator[dict[str, Any]]:
    """Mark a stage running, then done (with timing), failed or interrupted (Ctrl-C: nothing is wrong
    with the run, `pa runs` must not call it failed); the yielded dict is saved as its results.

    A `key` function is called again when the stage is done, and that key recorded: what the stage
    loaded is only then known (a Hub model it downloaded keys by the commit it downloaded, which the
    cache could not name before), and the next run compares its key with that one."""
    current = key if callable(key) else lambda: key
    with run_held(run_dir):
        manifest = read_manifest(run_dir)
        started = time.time()
        manifest["stages"][name] = {"status": "running", "key": current(), "started": started, **info}
        results: dict[str, Any] = {}
        try:
            # Inside the try: a Ctrl-C or SIGTERM landing just after the "running" record is written
            # (as the file appears, when a watcher sends it) left the stage "running" for good.
            write_manifest(run_dir, manifest)
            yield results
            # Inside the try: a done record the disk had no room for (or a key function that raised)
            # is a failed stage, not one left "running", which `pa runs` reads as interrupted.
            manifest = read_manifest(run_dir)
            manifest["stages"][name].update({"status": "done", "key": current(), "seconds": round(time.time() - started, 2), "results": results})
            write_manifest(run_dir, manifest)
        except BaseException as exc:
            manifest = read_manifest(run_dir)
            record = manifest["stages"].get(name, {})
            if record.get("started") == started and record.get("status") == "running":  # this run's record, written
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                record.update({"status": status, "error": type(exc).__name__})
                write_manifest(run_dir, manifest)
            raise
