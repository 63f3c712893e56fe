"""Untrusted YAML and JSON, read safely: the safe YAML loader and the checks on parsed data.

Pack manifests, eval items, `pa apply --config` files and registry headers come from people the
runner does not control. Kept apart from the pack loader because the registry, `pa apply` and
`pa bump` read YAML with the same rules without loading a pack: repeated keys, aliases, nesting
deep enough to overflow a parser, and values that are not plain text data are refused here once.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from .templates import text_problem

# Deeper YAML/JSON would overflow the stack in the parsers, the schema check or later stages.
MAX_NESTING = 100


def _mapping_duplicates(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """(first, repeat) key nodes of one mapping that repeat a scalar key (merge keys `<<` aside)."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    repeats: list[tuple[yaml.Node, yaml.Node]] = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        first = seen.setdefault((key.tag, key.value), key)
        if first is not key:
            repeats.append((first, key))
    return repeats


def duplicate_keys(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    """Every repeated key in a composed YAML document (no recursion), in document order."""
    repeats: list[tuple[yaml.Node, yaml.Node]] = []
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            repeats += _mapping_duplicates(current)
            stack.extend(child for pair in current.value for child in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(repeats, key=lambda pair: (pair[1].start_mark.line, pair[1].start_mark.column))


class ManifestLoader(yaml.SafeLoader):
    """Safe YAML for untrusted files (pack manifests, `pa apply --config`): no repeated keys (YAML
    keeps the last one silently: `action: refuse` then `action: comply` reads as comply), no
    anchors/aliases (they allow exponential 'billion laughs' blow-ups), flow collections ([...], {...}) nested at most
    MAX_NESTING deep (PyYAML's scanner slows down superlinearly with flow depth and its composer
    recurses once per level), and `1e-4` read as the number people mean. PyYAML follows YAML 1.1,
    where a float needs a dot and a signed exponent (`1.0e-4`), so an unquoted learning rate was a
    string, refused as "not of type 'number'". A quoted "1e-4" stays a string."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed here: write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        repeats = _mapping_duplicates(node) if isinstance(node, yaml.MappingNode) else []
        if repeats:
            first, repeat = repeats[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {repeat.value!r} (first on line {first.start_mark.line + 1}): YAML "
                "would keep only the last value", repeat.start_mark)
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        """A value its constructor cannot build (`2001-13-45`, an integer past Python's digit limit,
        `!!bool maybe`) raised ValueError/KeyError/..., which escaped every `except yaml.YAMLError`:
        one such manifest on the search path broke `pa list` and every pack lookup."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {kind!r}: {exc}; quote it to make it a string",
                node.start_mark) from None

    def fetch_flow_collection_start(self, TokenClass):  # type: ignore[no-untyped-def]
        if self.flow_level >= MAX_NESTING:
            raise yaml.scanner.ScannerError(None, None, f"[ or {{ nested more than {MAX_NESTING} levels deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                     re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                     list("-+0123456789."))


class DuplicateKey(Exception):
    """A JSON object repeating a key (`unique_keys`), which `json.loads` would keep the last of."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def yaml_syntax_hint(exc: yaml.YAMLError) -> str:
    """The fix for a YAML syntax error, in a contributor's terms: PyYAML's own words ("expected <block end>, but
    found '<block mapping start>'", "found character '\\t' that cannot start any token") name its parser's state,
    and the hint that went with them, "fix the YAML syntax", said nothing more. The usual causes of each are named."""
    problem = str(getattr(exc, "problem", None) or "")
    context = str(getattr(exc, "context", None) or "")
    opened = getattr(exc, "context_mark", None)
    if "'\\t'" in problem:
        return "indent with spaces, not tabs: YAML does not allow a tab there"
    if "quoted scalar" in context and opened is not None:
        return f"close the quote opened on line {opened.line + 1}, or escape the quote character inside it"
    if "flow" in context and opened is not None:
        return f"close the [ or {{ opened on line {opened.line + 1}"
    if problem == "mapping values are not allowed here":
        return "quote a value that holds ': ' (description: \"Grades: who may see them\"), or check the indentation"
    if problem.startswith("expected <block end>"):
        return ("check the indentation: keys of one mapping (`title:` under `- id:`) and items of one list start in the "
                "same column, and a quoted value ends at its closing quote")
    return "fix the YAML syntax"


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key is an error (`"expect": "refuse", "expect": "comply"` is a typo, not data),
    as ManifestLoader makes it in YAML."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def line_index(node: yaml.Node | None, pointer: str = "") -> dict[str, int]:
    """Map JSON pointers to 1-based YAML line numbers, so schema errors can name a line."""
    lines: dict[str, int] = {}
    if node is None:
        return lines
    lines[pointer] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{pointer}/{key.value}"
            lines[child] = key.start_mark.line + 1
            lines.update({k: v for k, v in line_index(value, child).items() if k != child})
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            lines.update(line_index(value, f"{pointer}/{index}"))
    return lines


def too_deep_node(node: yaml.Node | None) -> yaml.Node | None:
    """The first YAML collection nested more than MAX_NESTING levels deep, if any (no recursion)."""
    stack = [(node, 1)] if node is not None else []
    while stack:
        current, depth = stack.pop()
        if isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        elif isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        else:
            continue
        if depth > MAX_NESTING:
            return current
        stack.extend((child, depth + 1) for child in reversed(children))
    return None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether parsed JSON nests lists/dicts more than `limit` levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = list(current.values())
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


_PLAIN = (str, bool, int, float, type(None))


def text_problems(value: Any) -> list[tuple[str, str, str]]:
    """(JSON pointer, message, hint) for every place in parsed YAML/JSON that is not plain JSON text data.

    Escapes put characters there that pack text must not hold (`text_problem`): `"\\ud800"` or
    `"\\e[8m"` parse fine, and then the string breaks every UTF-8 write (prompts, JSONL, a
    tokenizer) or drives the terminal of whoever runs `pa show`. YAML also reads an unquoted
    `2024-01-01` as a date, `!!set`/`!!binary` as a set or bytes and `1: x` with a number key, which
    free-form parts (a seed's tools) accept and JSON then cannot write: a traceback in `pa render`."""
    found: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        current, pointer = stack.pop()
        if isinstance(current, dict):
            for key, child in current.items():
                problem = text_problem(key) if isinstance(key, str) else None
                child_pointer = f"{pointer}/{ascii(key)[1:-1] if problem else key}"
                if problem:
                    found.append((child_pointer, f"key {problem[1]}", problem[2]))
                elif not isinstance(key, str) and pointer:  # top-level keys: the schema names unknown fields
                    found.append((child_pointer, f"key {key!r} is read as {type(key).__name__}, not text",
                                  f'quote it: "{key}"'))
                stack.append((child, child_pointer))
        elif isinstance(current, list):
            stack.extend((child, f"{pointer}/{i}") for i, child in enumerate(current))
        elif isinstance(current, str) and (problem := text_problem(current)):
            found.append((pointer or "/", f"text {problem[1]}", problem[2]))
        elif isinstance(current, float) and not math.isfinite(current):
            # `.nan` (YAML) or `NaN` (Python's JSON) passes every schema bound, since no comparison with
            # it is true: `pa validate` accepted a sampling `top_p: .nan` that `pa apply` failed on.
            found.append((pointer or "/", f"{current} is not a finite number", "write a finite number"))
        elif not isinstance(current, _PLAIN):
            found.append((pointer or "/", f"{current!r:.60} is read as {type(current).__name__}, not plain data",
                          f'quote it to make it text ("{current}"), or use a list or mapping'))
    return sorted(found)
