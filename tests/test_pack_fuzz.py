"""Random manifests never crash the loader: it raises only the project's own error type."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyalign.errors import PackError
from policyalign.pack import load_pack
from policyalign.registry import Registry

FIXTURE = Path(__file__).parent / "fixtures" / "packs" / "root-pack"

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
KEYS = ["name", "version", "title", "summary", "license", "policy", "extends", "categories", "synthesis", "eval", "training"]


@st.composite
def manifests(draw: st.DrawFn) -> dict:
    base = yaml.safe_load((FIXTURE / "pack.yaml").read_text())
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(values)
    return base


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=manifests())
def test_random_manifests_raise_only_pack_errors(tmp_path_factory, manifest: dict) -> None:
    root = tmp_path_factory.mktemp("fuzz") / "root-pack"
    shutil.copytree(FIXTURE, root)
    (root / "pack.yaml").write_text(yaml.safe_dump(manifest))
    try:
        load_pack(root, registry=Registry([root.parent]))
    except PackError:
        pass


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300))
def test_random_yaml_text_raises_only_pack_errors(tmp_path_factory, text: str) -> None:
    root = tmp_path_factory.mktemp("fuzz") / "root-pack"
    shutil.copytree(FIXTURE, root)
    (root / "pack.yaml").write_text(text)
    try:
        load_pack(root, registry=Registry([root.parent]))
    except PackError:
        pass
