"""Shared fixtures: copies of the fixture packs, so tests can break them freely."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hubcli import FIXTURE_PACKS, Cli
from policyalign.run import LOCK_FILE

FIXTURES = Path(__file__).parent / "fixtures"

# Every `pa` or `python -c` a test starts imports this checkout, not whichever policyalign pip
# installed last (a second clone or worktree tested its subprocesses against the other's code).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FIXTURES.parents[1]), os.environ.get("PYTHONPATH")]))
# One OpenMP thread, in this process (torch is imported after this) and every one a test starts, as
# `models.cpu_threads` gives the CLI's stages on `tiny`: tests that drive the trainer or a model
# directly ran with one thread per core, whose spin-waiting workers made a trainer test 2-6x slower
# on a machine whose cores something else was using.
os.environ.setdefault("OMP_NUM_THREADS", "1")


_HOLD = ("import sys, time\nfrom policyalign.run import run_lock\nwith run_lock(sys.argv[1], name=sys.argv[2]):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def pa_on_hub(hub_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`pa_on_hub(repo_id, *args) -> commit`: the built-in tiny model published as `repo_id` on the
    loopback Hub (once), then `pa *args` in a subprocess on a Hugging Face cache that starts empty
    (tmp_path/hf/hub), which a stage fills by downloading; this process then reads that cache."""
    import os
    import subprocess
    import sys

    from huggingface_hub import constants

    from policyalign import tiny

    published: dict[str, str] = {}
    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))

    def run(repo_id: str, *args: str | Path) -> str:
        if repo_id not in published:
            hub_server.store.create("model", repo_id, False)
            files = {p.name: p.read_bytes() for p in tiny.tiny_model_path().iterdir() if p.is_file()}
            published[repo_id] = str(hub_server.put_files(repo_id, files, "weights"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub_server.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
        done = subprocess.run([sys.executable, "-m", "policyalign", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return published[repo_id]

    return run


@pytest.fixture
def hold_run():  # type: ignore[no-untyped-def]
    """`with hold_run(run_dir) as pid:` another process holds the run directory, as a running `pa apply` does
    (`hold_run(folder, name)`: the lock file `name` there, as `pa judge` holds its output)."""
    import subprocess
    import sys
    from contextlib import contextmanager

    @contextmanager
    def holding(run: Path, name: str = LOCK_FILE):  # type: ignore[no-untyped-def]
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run), name], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()

    return holding


Inode = tuple[int, int]  # (st_dev, st_ino): a file or directory, whatever its name when it is asked


def inode(path: Path) -> Inode | None:
    """The inode at `path` now, or None where nothing has that name."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class Fsyncs:
    """Each os.fsync this process makes while it records, as (the inode synced, the inode at `target` when
    it ran); the real fsync still runs. A power cut cannot be had in a test; the order that survives one
    can be checked (`problems`)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.calls: list[tuple[Inode, Inode | None]] = []

    def record(self, fd: int) -> None:
        synced = os.fstat(fd)
        self.calls.append(((synced.st_dev, synced.st_ino), inode(self.target)))

    def problems(self) -> list[str]:
        """What a power cut could lose: `target` (a file, or a directory and all below it) is durable when
        each of its files and directories was synced before the rename gave `target` its inode (the inode
        at `target` then was another, or none), and its parent directory after (`target` then was it)."""
        final = inode(self.target)
        parts = [self.target, *(sorted(self.target.rglob("*")) if self.target.is_dir() else [])]
        found = [f"{part} was not synced before the rename" for part in parts
                 if not any(synced == inode(part) and seen != final for synced, seen in self.calls)]
        if not any(synced == inode(self.target.parent) and seen == final for synced, seen in self.calls):
            found.append(f"{self.target.parent} was not synced after the rename")
        return found


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`synced = fsyncs(target)`: records every os.fsync from then on (`Fsyncs`); `synced.problems()` after
    writing `target` says what of it a power cut could lose."""
    def watch(target: Path) -> Fsyncs:
        recorder, real = Fsyncs(target), os.fsync

        def recording(fd: int) -> None:
            recorder.record(fd)
            real(fd)

        monkeypatch.setattr(os, "fsync", recording)
        return recorder

    return watch


@pytest.fixture
def fixture_packs(tmp_path: Path) -> Path:
    """A fresh, writable copy of tests/fixtures/packs (root-pack, child-pack)."""
    dest = tmp_path / "packs"
    shutil.copytree(FIXTURES / "packs", dest, symlinks=True)
    return dest


# --------------------------------------------------------------------------- distillation runs
# The distill, trainer, launch, checkpoint and adapter tests train on a filtered run of root-pack.


@pytest.fixture(scope="session")
def filtered_root_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root-pack's instructions scored and filtered on tiny once a session, by the real `filter_run`:
    filtering is seeded, so every test's run would be these same bytes, and the ~28 tests that train
    on one spent over a second each making it again. Tests copy it (`run_dir`), never change it."""
    from distill_runs import pack_instructions
    from policyalign.filtering import FilterConfig, filter_run
    from policyalign.io import write_jsonl
    from policyalign.models import load_model
    from policyalign.registry import Registry

    run = tmp_path_factory.mktemp("filtered-root-pack")
    pack = Registry([FIXTURES / "packs"]).load("root-pack")
    write_jsonl(run / "instructions.jsonl", pack_instructions(pack))
    filter_run(run, load_model("tiny"), pack.policy, FilterConfig(keep=1.0, max_new_tokens=16, heldout=0.2),
               progress=False)
    return run


@pytest.fixture
def run_dir(tmp_path: Path, fixture_packs: Path, filtered_root_pack: Path):
    """A filtered run of root-pack in tmp_path (with the test's own copy of the fixture packs in
    tmp_path/packs): a fresh copy of `filtered_root_pack`, its files written now (copyfile, not the
    session's mtimes)."""
    from policyalign.registry import Registry

    pack = Registry([fixture_packs]).load("root-pack")
    shutil.copytree(filtered_root_pack, tmp_path, dirs_exist_ok=True, copy_function=shutil.copyfile)
    return tmp_path, pack


@pytest.fixture
def recorded_run(run_dir):
    """`run_dir` with its pack and model recorded in run.json, as the `pa distill` stage expects."""
    from policyalign.run import record_inputs

    run, pack = run_dir
    record_inputs(run, pack, "tiny")
    return run, pack


# --------------------------------------------------------------------------- Hub tests (issue 7)
# A loopback Hub (olah + tests/hubserver.py) for the whole session, a real PEFT adapter built
# once, and a factory for run directories with a fabricated-but-consistent policyalign.json.

HUB_TOKEN = "hf_paLEAKCANARY7q3ZtW9xK2vR5mN8"


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """olah (read API) behind tests/hubserver.py (write + listing API), both on 127.0.0.1.

    Online while it runs even where HF_HUB_OFFLINE=1 is exported (as `pa` advises on a machine
    without internet): huggingface_hub refused every call to the loopback Hub, failing the Hub tests."""
    from huggingface_hub import constants

    from hubserver import start_hub

    hub = start_hub(tmp_path_factory.mktemp("hub"), HUB_TOKEN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.delenv("HF_HUB_OFFLINE", raising=False)
        try:
            yield hub
        finally:
            hub.stop()


@pytest.fixture
def cli(hub_server, tmp_path: Path) -> Cli:  # type: ignore[no-untyped-def]
    packs = tmp_path / "packs"
    shutil.copytree(FIXTURE_PACKS, packs)
    (tmp_path / "cwd").mkdir()
    return Cli(hub_server, tmp_path / "home", packs, tmp_path / "cwd")


@pytest.fixture(scope="session")
def peft_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) LoRA adapter saved by peft, on the built-in tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    try:
        from policyalign.tiny import tiny_model_path

        base = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    except ImportError:  # tiny not landed yet: a random tiny Qwen2 does the same job here
        from transformers import Qwen2Config, Qwen2ForCausalLM

        base = Qwen2ForCausalLM(Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(out)
    return out


def _png() -> bytes:
    """A valid 1x1 PNG (binary, so the Hub stores it with LFS like real plots)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _eval_json(pack, model: str, rates: dict[str, float]) -> dict:  # type: ignore[no-untyped-def]
    """eval.json in the run contract's layout, one rate per set and per category."""
    sets = {}
    for eval_set in pack.eval_sets:
        metric = "violation_rate" if eval_set.kind == "safety" else "over_refusal_rate"
        cats = sorted({item.category for item in eval_set.items})
        sets[eval_set.name] = {"kind": eval_set.kind, "n": len(eval_set.items), metric: rates[eval_set.kind],
                               "per_category": {c: {metric: rates[eval_set.kind]} for c in cats}}
    return {"model": model, "adapter": None, "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
            "judge": "refusal", "judge_rules": "0123456789abcdef", "sets": sets}


@pytest.fixture
def make_run(peft_adapter: Path):  # type: ignore[no-untyped-def]
    """make_run(dest, pack_dir, base_id=..., evals=True, **overrides) -> a run directory for `pa push`."""
    import json as _json

    def make(dest: Path, pack_dir: Path, *, base_id: str = "Qwen/Qwen2.5-0.5B-Instruct", base_name: str = "Qwen2.5-0.5B",
             evals: bool = True, pack_overrides: dict | None = None) -> Path:
        from policyalign.io import sha256_file
        from policyalign.pack import load_pack, parent_records

        pack = load_pack(pack_dir)
        adapter = dest / "adapter"
        shutil.copytree(peft_adapter, adapter)
        (adapter / "loss.png").write_bytes(_png())
        parents = {"parents": parent_records(pack)} if pack.parents else {}  # as provenance.write_provenance records them
        pack_block = {"name": pack.name, "version": pack.version, "digest": pack.digest, **parents, "title": pack.title,
                      "summary": pack.summary,
                      "categories": [{"id": c.id, "title": c.title, "action": c.action, "locked": c.locked}
                                     for c in pack.categories],
                      **(pack_overrides or {})}
        provenance = {
            "policyalign_version": "0.1.0",
            "pack": pack_block,
            "base_model": {"name": base_name, "id": base_id, "revision": "0123456789abcdef"},
            "config": {"lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-4, "top_k": 256, "teacher": "base",
                       "filter": {"keep": 0.5, "metric": "reverse_kl"}},
            "data": {"synthesized": 40, "selected": 20, "heldout": 8},
            "internalization": {"before": 0.91, "after": 0.12},
            "seeds": {"synthesis": 1, "training": 2},
        }
        (adapter / "policyalign.json").write_text(_json.dumps(provenance, indent=2))
        if evals:
            for stage, rates in (("before", {"safety": 0.5, "over-refusal": 0.1}),
                                 ("after", {"safety": 0.125, "over-refusal": 0.05})):
                (dest / "eval" / stage).mkdir(parents=True)
                summary = _eval_json(pack, base_id, rates)
                if stage == "after":  # ties the after-eval to these weights, as evaluate() records it
                    summary["adapter_sha256"] = sha256_file(adapter / "adapter_model.safetensors")
                (dest / "eval" / stage / "eval.json").write_text(_json.dumps(summary))
                (dest / "eval" / stage / "categories.png").write_bytes(_png())
            (dest / "eval" / "before_after.png").write_bytes(_png())
        return dest

    return make


@pytest.fixture
def offline_hub(hf_cache, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """This process (and any it starts) offline, with an empty Hugging Face cache; returns `hf_cache`.

    huggingface_hub reads HF_HUB_OFFLINE once, at import: setting the variable in a test left the
    process online, and each "model not in the cache" test spent ~45 s in retries to an unreachable Hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_cache


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`hf_cache(repo_id, commit, ref="main")`: the built-in tiny model as the snapshot `commit` of
    `repo_id` in an empty Hugging Face cache (this process's `HF_HUB_CACHE`), with `refs/<ref>`
    naming it, as `from_pretrained` leaves a download; returns the cache directory."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def snapshot(repo_id: str, commit: str, ref: str | None = "main") -> Path:
        from policyalign.tiny import tiny_model_path

        repo = cache / ("models--" + repo_id.replace("/", "--"))
        if not (repo / "snapshots" / commit).is_dir():
            shutil.copytree(tiny_model_path(), repo / "snapshots" / commit)
        if ref is not None:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        return cache

    return snapshot
