"""Shared fixtures: copies of the fixture packs, so tests can break them freely."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixture_packs(tmp_path: Path) -> Path:
    """A fresh, writable copy of tests/fixtures/packs (root-pack, child-pack)."""
    dest = tmp_path / "packs"
    shutil.copytree(FIXTURES / "packs", dest, symlinks=True)
    return dest
