"""Public benchmarks: their specs, and clear errors without `datasets` or the Hub."""

from __future__ import annotations

import os
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
    assert "walledai/StrongREJECT" in out.stdout and "HF_DATASETS_OFFLINE" in out.stdout
