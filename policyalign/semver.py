"""Semantic versions and the range syntax used by `extends` and `name@range`.

Supported ranges: exact `1.2.3`, caret `^1`, `^1.2`, `^1.2.3`, tilde `~1.2`,
comparators `>=1.0.0,<2` (comma = and; a comparator on a series takes all of it, as in npm:
`<=1` admits 1.5.0, `>1` starts at 2.0.0), and `*`. Kept in-house because the
caret/tilde forms are what pack authors write and packaging's specifiers lack them.

Ordering follows SemVer 2.0 precedence: a prerelease sorts below its release, and
prerelease identifiers are compared dot by dot, numeric ones as numbers and below
alphanumeric ones (`1.0.0-rc.2 < 1.0.0-rc.10 < 1.0.0`).

Prereleases and ranges follow npm: a prerelease version satisfies a range only if
the range itself names a prerelease of the same MAJOR.MINOR.PATCH (e.g.
`>=1.0.0-rc.1,<2` admits `1.0.0-rc.3` but not `1.1.0-rc.1`). So `^1` never picks
`2.0.0-rc.1` (or `1.1.0-rc.1`), and `*` (or an empty range) admits no prerelease
either; ask for one explicitly with its exact version or a comparator.
"""

from __future__ import annotations

import re
from functools import total_ordering

# \Z, not $: `$` also matches before a trailing newline, and "1.0.0\n" (or " 1.0.0", when the text was
# stripped first) passed as a pack's version, then named it `hh@ 1.0.0` and went into tags and the index.
# Prerelease and build identifiers as SemVer 2.0 has them: dot-separated, none empty, a numeric prerelease one
# without leading zeros. `[0-9A-Za-z.-]+` took "1.0.0-rc." (its tag v1.0.0-rc. then refused by `pa pack push`) and
# "1.0.0-01", equal in precedence to 1.0.0-1 though another string. ASCII: a Unicode `\d` took "1.0.1٣" (an
# Arabic-Indic three), which int() read as version 1.0.13.
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(rf"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
                     rf"(?:\+({_BUILD_ID}(?:\.{_BUILD_ID})*))?\Z", re.ASCII)
_PARTIAL = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?\Z", re.ASCII)


@total_ordering
class Version:
    """A parsed MAJOR.MINOR.PATCH[-prerelease][+build] version. Build metadata is kept for display
    (`str`) but, as SemVer 2.0 says, takes no part in precedence: `1.0.0+a == 1.0.0+b`, one version.
    (Dropping it from `str` made `pa bump --to 1.1.0+b5` write 1.1.0, and refuse `--to 1.0.0+b` from
    1.0.0+a as "1.0.0 is not above the current version 1.0.0".)"""

    def __init__(self, major: int, minor: int, patch: int, pre: str = "", build: str = "") -> None:
        self.major, self.minor, self.patch, self.pre, self.build = major, minor, patch, pre, build

    @classmethod
    def parse(cls, text: str) -> "Version":
        match = _SEMVER.match(text)
        if not match:
            raise ValueError(f"not a semantic version (MAJOR.MINOR.PATCH): {text!r}")
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), pre or "", build or "")

    def _key(self) -> tuple:
        # SemVer 2.0 precedence: a prerelease sorts before its release; its dot-separated
        # identifiers compare left to right, numeric ones as numbers and below alphanumeric
        # ones, and a shorter list of otherwise equal identifiers sorts first.
        pre = tuple((0, int(ident), "") if ident.isdigit() else (1, 0, ident)
                    for ident in self.pre.split(".")) if self.pre else ()
        return (self.major, self.minor, self.patch, self.pre == "", pre)

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: "Version") -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return (f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.pre}" if self.pre else "")
                + (f"+{self.build}" if self.build else ""))

    __repr__ = __str__


def is_semver(text: str) -> bool:
    """Whether `text` is exactly a version: no surrounding whitespace (it would become part of the pack's name@version)."""
    return bool(_SEMVER.match(text)) if isinstance(text, str) else False


def _partial(text: str) -> tuple[int, ...]:
    match = _PARTIAL.match(text)
    if not match:
        raise ValueError(f"bad version in range: {text!r}")
    return tuple(int(g) for g in match.groups() if g is not None)


def _pad(parts: tuple[int, ...]) -> Version:
    padded = list(parts) + [0] * (3 - len(parts))
    return Version(*padded)


def _caret(parts: tuple[int, ...]) -> tuple[Version, Version]:
    low = _pad(parts)
    if parts[0] > 0 or len(parts) == 1:
        return low, Version(parts[0] + 1, 0, 0)
    if len(parts) == 2 or parts[1] > 0:
        return low, Version(0, parts[1] + 1, 0)
    return low, Version(0, 0, parts[2] + 1)


def _tilde(parts: tuple[int, ...]) -> tuple[Version, Version]:
    low = _pad(parts)
    if len(parts) == 1:
        return low, Version(parts[0] + 1, 0, 0)
    return low, Version(parts[0], parts[1] + 1, 0)


def _comparator(op: str, text: str) -> list[tuple[str, Version]]:
    """`op` against a full version, or against a whole series (`1`, `1.2`) as npm reads it: `<=1` and
    `=1` take every 1.x, `>1` starts at 2.0.0 (padding to 1.0.0 made `<=1` refuse 1.5.0 while `1` took it)."""
    if is_semver(text):
        return [(op, Version.parse(text))]
    parts = _partial(text)
    low, high = _tilde(parts) if len(parts) > 1 else _caret(parts)
    return {">=": [(">=", low)], "<": [("<", low)], ">": [(">=", high)], "<=": [("<", high)],
            "==": [(">=", low), ("<", high)]}[op]


class VersionRange:
    """A set of versions, tested with `in`."""

    def __init__(self, text: str) -> None:
        self.text = text.strip() or "*"
        self._checks = self._parse(self.text)

    @staticmethod
    def _parse(text: str) -> list[tuple[str, Version]]:
        if text == "*":
            return []
        checks: list[tuple[str, Version]] = []
        for part in (p.strip() for p in text.split(",")):
            if part.startswith("^"):
                low, high = _caret(_partial(part[1:]))
                checks += [(">=", low), ("<", high)]
            elif part.startswith("~"):
                low, high = _tilde(_partial(part[1:]))
                checks += [(">=", low), ("<", high)]
            elif match := re.match(r"^(>=|<=|>|<|==|=)\s*(.+)$", part):
                op, ver = match.groups()
                checks += _comparator("==" if op == "=" else op, ver)
            elif is_semver(part):
                checks.append(("==", Version.parse(part)))
            else:
                checks += _comparator("==", part)  # `1` or `1.2` means that series, like npm
        return checks

    def __contains__(self, version: Version) -> bool:
        if version.pre and not any(bound.pre and bound.release == version.release for _, bound in self._checks):
            return False  # npm: prereleases only when the range names one of the same MAJOR.MINOR.PATCH
        ops = {
            ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
            "<": lambda a, b: a < b, "==": lambda a, b: a == b,
        }
        return all(ops[op](version, bound) for op, bound in self._checks)

    def __str__(self) -> str:
        return self.text


def parse_range(text: str) -> VersionRange:
    """Parse a range, raising ValueError with the offending text."""
    return VersionRange(text)
