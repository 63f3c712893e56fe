"""`pa` run as a user runs it, against the loopback Hub: shared by the Hub tests (test_hub.py,
test_adapter_push.py, test_adapter_pull.py, test_adapter_search.py, test_pack_hub.py).

The Hub is olah (read API, from git repositories) behind tests/hubserver.py (write and listing
API on the same repositories), started once per session by the `hub_server` fixture. CLI tests
run `python -m policyalign` in a subprocess with HF_ENDPOINT pointing there, exactly as a user
would; HF_HUB_DISABLE_XET=1 makes the client use the classic git-LFS upload protocol, which the
test server implements (it has no Xet storage). The `cli` fixture (tests/conftest.py) gives each
test a `Cli` with its own copy of the fixture packs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PACKS = Path(__file__).parent / "fixtures" / "packs"
DEFAULT = object()


@dataclass
class Cli:
    """Runs `pa` in a subprocess against the loopback Hub, recording every output for leak checks."""

    hub: object
    home: Path
    packs: Path
    cwd: Path
    outputs: list[str] = field(default_factory=list)

    def env(self, token: object = DEFAULT) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "PA_"))}
        env.update(HF_ENDPOINT=self.hub.endpoint, HF_HOME=str(self.home / "hf"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", PA_HOME=str(self.home / "pa"), PA_PACKS_PATH=str(self.packs),
                   PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        if os.environ.get("PA_CACHE_DIR"):
            env["PA_CACHE_DIR"] = os.environ["PA_CACHE_DIR"]
        token = self.hub.token if token is DEFAULT else token
        if token:
            env["HF_TOKEN"] = str(token)
        return env

    def run(self, *args: str, token: object = DEFAULT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "policyalign", *args], cwd=self.cwd, env=self.env(token),
                                capture_output=True, text=True, timeout=300, check=False)
        self.outputs += [result.stdout, result.stderr]
        return result

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, f"pa {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def fails(self, code: int, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == code, f"pa {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    @contextmanager
    def inside(self) -> Iterator[None]:
        """This process given the working directory and environment `run` gives its subprocess (HF_*, PA_*: a
        registry searches ./packs and PA_PACKS_PATH), and the switches huggingface_hub read from that environment
        at import (Xet and telemetry off, online); all as they were after."""
        from huggingface_hub import constants

        prefixes = ("HF_", "HUGGING_FACE", "PA_")
        env = {k: v for k, v in self.env().items() if k.startswith(prefixes)}
        saved = {k: os.environ.get(k) for k in {*env, *(k for k in os.environ if k.startswith(prefixes))}}
        switches = {"HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_OFFLINE": False}
        before, cwd = {k: getattr(constants, k) for k in switches}, os.getcwd()
        try:
            os.chdir(self.cwd)
            for name in saved:
                os.environ.pop(name, None)
            os.environ.update(env)
            for name, value in switches.items():
                setattr(constants, name, value)
            yield
        finally:
            os.chdir(cwd)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            for name, value in before.items():
                setattr(constants, name, value)

    # Setup for a test of something else (pulling, searching): what `pa push` / `pa pack push` run, called
    # `inside` this process. A subprocess per setup push cost a second of interpreter start and imports; the
    # commands as a user runs them are still what the push tests (test_adapter_push.py, test_hub.py, and
    # test_pack_hub.py's push tests) run through `ok` and `fails`.

    def published(self, run: Path, repo_id: str) -> str:
        """`run` published as `repo_id`, as `pa push RUN --repo-id REPO_ID` does (`push_adapter`); the URL."""
        from policyalign.adapter_push import push_adapter

        with self.inside():
            return push_adapter(run, repo_id).url

    def pack_published(self, pack: Path, repo_id: str) -> str:
        """`pack` published as `repo_id`, as `pa pack push PACK --repo-id REPO_ID` does (`push_pack` with the
        packs the command finds); the URL."""
        from policyalign.cli.common import registry
        from policyalign.pack_hub import push_pack

        with self.inside():
            return push_pack(pack, repo_id, registry=registry(None)).url


def make_pack(dest_root: Path, name: str, version: str = "1.0.0", policy_note: str = "") -> Path:
    """A copy of the root-pack fixture renamed to `name`@`version` (its own digest)."""
    dest = dest_root / name
    shutil.copytree(FIXTURE_PACKS / "root-pack", dest)
    manifest = yaml.safe_load((dest / "pack.yaml").read_text())
    manifest.update(name=name, version=version)
    (dest / "pack.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (dest / "CHANGELOG.md").write_text(f"# Changelog\n\n## {version}\n\n- test pack\n")
    if policy_note:
        with (dest / "policy.md").open("a") as handle:
            handle.write(f"\n{policy_note}\n")
    return dest

