"""Public benchmarks: their specs, and clear errors without `datasets` or the Hub."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from policyalign.benchmarks import BENCHMARKS, load_benchmark
from policyalign.errors import InvalidInputError, PolicyAlignError


def test_benchmarks_name_their_licence() -> None:
    assert set(BENCHMARKS) == {"xstest", "strongreject"}
    assert all(spec.license for spec in BENCHMARKS.values())


def test_unknown_benchmark_suggests_a_name() -> None:
    with pytest.raises(InvalidInputError, match="xstest"):
        load_benchmark("xtest")


def test_benchmark_without_datasets_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # what Python does when it is not installed
    with pytest.raises(PolicyAlignError, match="datasets") as info:
        load_benchmark("xstest")
    assert "pip install" in str(info.value)


def test_benchmark_offline_is_a_clear_error(tmp_path: Path) -> None:
    """No network call: the Hub libraries' offline mode fails at once; we check the message."""
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = ("from policyalign.benchmarks import load_benchmark\n"
            "from policyalign.errors import HubError\n"
            "try:\n    load_benchmark('strongreject')\nexcept HubError as e:\n    print('HUBERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "HUBERROR" in out.stdout, out.stderr[-2000:]
    assert "walledai/StrongREJECT" in out.stdout
    # the setting that refused it is named, and the fix is not "set HF_DATASETS_OFFLINE=1", which it already was
    assert "HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 keeps it from the Hub, and the datasets cache holds no copy" \
        in out.stdout, out.stdout
    assert "set HF_DATASETS_OFFLINE=1" not in out.stdout and "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset" in out.stdout


def _hub_failing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outage: bool) -> None:
    """`datasets` failing to reach the Hub, so that its own code builds what it raises: in offline mode, or with the
    Hub unreachable. For the outage, the download fails as huggingface_hub's does against a closed port once its
    retries are spent (~24 s for real): a LocalEntryNotFoundError from httpx's real ConnectError."""
    import datasets
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # nothing cached to fall back on
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", not outage)
    try:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        httpx.get(f"http://127.0.0.1:{port}/")
    except httpx.ConnectError as refused:
        connect_error = refused

    def unreachable(*args: object, **kwargs: object) -> None:
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from connect_error

    monkeypatch.setattr(HfApi, "hf_hub_download", unreachable)


@pytest.mark.parametrize("outage", [True, False], ids=["outage", "offline"])
def test_a_benchmark_the_hub_cannot_be_reached_for_is_an_outage_and_offline_mode_is_not(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outage: bool) -> None:
    """`pa eval --benchmark` exited 1 in a network outage, as for a missing dataset: CI could not retry it. datasets
    raises the same builtin ConnectionError ("Couldn't reach ...") for an outage and for offline mode, whose cause
    it drops; an outage is exit 3 (worth retrying), offline mode stays exit 1 with its hint."""
    pytest.importorskip("datasets")
    from policyalign.errors import HubError

    _hub_failing(monkeypatch, tmp_path, outage)
    with pytest.raises(HubError) as info:
        load_benchmark("strongreject")
    assert "Couldn't reach 'walledai/StrongREJECT' on the Hub" in str(info.value), info.value
    if outage:
        assert info.value.exit_code == 3 and "worth retrying" in info.value.problem.hint, info.value
    else:
        assert info.value.exit_code == 1 and "HF_DATASETS_OFFLINE unset" in info.value.problem.hint, info.value
