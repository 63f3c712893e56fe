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


def test_only_semver_2_identifiers_are_a_version() -> None:
    """An empty or zero-padded prerelease identifier, or a non-ASCII digit, validated as a pack's version: v1.0.0-rc.
    was then refused as a tag by `pa pack push`, 1.0.0-01 equalled 1.0.0-1, and 1.0.1٣ was 1.0.13."""
    for bad in ("1.0.0-rc.", "1.0.0-a..b", "1.0.0-.a", "1.0.0-01", "1.0.0+", "1.0.0+a..b", "1.0.1\u0663", "1.0.0-rc.\u0661"):
        assert not is_semver(bad), bad
    for good in ("1.0.0-0", "1.0.0-0a", "1.0.0-x-y.7.z-92", "1.0.0+001.exp", "1.0.0-alpha.1+b.01"):
        assert is_semver(good), good
    with pytest.raises(ValueError):
        VersionRange("^1.0.1\u0663")


def test_bad_range_raises_value_error() -> None:
    with pytest.raises(ValueError):
        VersionRange("^one")


def test_prerelease_precedence_follows_semver() -> None:
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0-rc.2", "1.0.0-rc.10", "1.0.0"]
    versions = [Version.parse(v) for v in chain]
    assert all(a < b for a, b in zip(versions, versions[1:]))
    assert sorted(reversed(versions)) == versions
    assert Version.parse("1.0.0-rc.10") > Version.parse("1.0.0-rc.2")
    assert Version.parse("1.0.0-1") < Version.parse("1.0.0-a")  # numeric below alphanumeric
    assert Version.parse("1.0.0-rc.1+build.5") == Version.parse("1.0.0-rc.1")


def test_build_metadata_is_shown_but_takes_no_part_in_precedence() -> None:
    """str() dropped it: `pa bump --to 1.1.0+b5` wrote 1.1.0, and refused `--to 1.0.0+b` from 1.0.0+a
    as "1.0.0 is not above the current version 1.0.0"."""
    a, b = Version.parse("1.0.0+a"), Version.parse("1.0.0-rc.1+exp.sha.5114f85")
    assert (str(a), str(b)) == ("1.0.0+a", "1.0.0-rc.1+exp.sha.5114f85")
    assert a == Version.parse("1.0.0+b") == Version.parse("1.0.0") and hash(a) == hash(Version.parse("1.0.0"))
    assert b < a and not a < Version.parse("1.0.0+z")


@pytest.mark.parametrize("rng,version", [
    ("^1", "2.0.0-rc.1"), ("^1", "1.1.0-rc.1"), ("~1.2", "1.2.5-beta"), (">=1.0,<2", "1.5.0-rc.1"),
    ("<2", "2.0.0-rc.1"), ("*", "1.0.0-rc.1"), ("", "1.0.0-rc.1"),
    (">=1.0.0-rc.1,<2", "1.1.0-rc.1"),  # names a prerelease, but of another MAJOR.MINOR.PATCH
])
def test_prerelease_outside_ranges_that_do_not_name_it(rng: str, version: str) -> None:
    assert Version.parse(version) not in VersionRange(rng)


@pytest.mark.parametrize("rng,version", [
    ("1.0.0-rc.1", "1.0.0-rc.1"), (">=1.0.0-rc.1,<2", "1.0.0-rc.3"), (">=1.0.0-rc.1,<2", "1.0.0-rc.10"),
    (">=1.0.0-rc.1,<2", "1.4.0"), ("<2.0.0-rc.5", "2.0.0-rc.2"),
])
def test_prerelease_inside_ranges_that_name_it(rng: str, version: str) -> None:
    assert Version.parse(version) in VersionRange(rng)



def test_caret_parent_range_picks_newest_release_not_next_major_prerelease() -> None:
    candidates = [Version.parse(v) for v in ("1.2.0", "1.5.0", "1.6.0-rc.1", "2.0.0-rc.1")]
    assert max(v for v in candidates if v in VersionRange("^1")) == Version.parse("1.5.0")


@pytest.mark.parametrize("text", ["1.0.0\n", " 1.0.0", "1.0.0 ", "1.0.0-rc.1\n"])
def test_a_version_with_surrounding_whitespace_is_not_semver(text: str) -> None:
    # `$` matched before a trailing newline and the text was stripped: `version: " 0.1.0"` validated
    # and the pack became `name@ 0.1.0` in `pa validate`, INDEX.json and its Hub tag.
    assert not is_semver(text)
    with pytest.raises(ValueError):
        Version.parse(text)


@pytest.mark.parametrize("rng,inside,outside", [
    ("<=1", ["1.0.0", "1.5.0", "0.3.0"], ["2.0.0"]),
    (">1", ["2.0.0", "3.1.0"], ["1.0.0", "1.5.0"]),
    ("=1.2", ["1.2.0", "1.2.5"], ["1.3.0", "1.1.9"]),
    ("<=1.2", ["1.2.5"], ["1.3.0"]),
    (">1.2", ["1.3.0"], ["1.2.1"]),
    ("<1.2", ["1.1.9"], ["1.2.0"]),
])
def test_a_comparator_on_a_series_takes_the_whole_series(rng: str, inside: list[str], outside: list[str]) -> None:
    # `1.2` meant the 1.2 series but `=1.2` only 1.2.0, and `<=1` refused 1.5.0 (each was padded to .0), as npm does not.
    r = VersionRange(rng)
    assert [v for v in inside if Version.parse(v) not in r] == []
    assert [v for v in outside if Version.parse(v) in r] == []
