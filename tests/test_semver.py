"""Version ranges as pack authors write them in `extends` and `name@range`."""

import pytest

from policyalign.semver import Version, VersionRange, is_semver


@pytest.mark.parametrize("rng,inside,outside", [
    ("^1", ["1.0.0", "1.9.3"], ["0.9.9", "2.0.0"]),
    ("^1.2", ["1.2.0", "1.99.0"], ["1.1.9", "2.0.0"]),
    ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
    ("~1.2", ["1.2.0", "1.2.7"], ["1.3.0"]),
    (">=1.0,<2", ["1.0.0", "1.5.0"], ["2.0.0", "0.1.0"]),
    ("1.2.3", ["1.2.3"], ["1.2.4"]),
    ("*", ["0.0.1", "9.9.9"], []),
])
def test_ranges(rng: str, inside: list[str], outside: list[str]) -> None:
    r = VersionRange(rng)
    assert all(Version.parse(v) in r for v in inside)
    assert not any(Version.parse(v) in r for v in outside)


def test_ordering_and_prerelease() -> None:
    assert Version.parse("1.0.0-rc.1") < Version.parse("1.0.0") < Version.parse("1.0.1") < Version.parse("1.10.0")
    assert is_semver("1.2.3") and not is_semver("1.2") and not is_semver("01.2.3")


def test_bad_range_raises_value_error() -> None:
    with pytest.raises(ValueError):
        VersionRange("^one")
