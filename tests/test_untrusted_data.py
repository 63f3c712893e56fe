"""untrusted_data: the safe YAML loader's reading of manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyalign.errors import PackError
from policyalign.pack import load_pack
from policyalign.registry import Registry


def _load(packs: Path, name: str):
    return load_pack(packs / name, registry=Registry([packs]))


def test_exponent_numbers_read_as_numbers(fixture_packs: Path) -> None:
    """PyYAML (YAML 1.1) read an unquoted `1e-4` as a string: a pack's learning rate written the way
    people write it was refused as "'1e-4' is not of type 'number'"."""
    manifest = fixture_packs / "root-pack" / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("training:\n", "training:\n  learning_rate: 1e-4\n"))
    assert _load(fixture_packs, "root-pack").training["learning_rate"] == 1e-4
    manifest.write_text(manifest.read_text().replace("learning_rate: 1e-4", "learning_rate: '1e-4'"))
    with pytest.raises(PackError, match="learning_rate.*'1e-4' is not of type 'number'"):
        _load(fixture_packs, "root-pack")
